"""A 16 -> 32 Fashion-MNIST cascade: the super-resolution stage's classifier-FID (and PSNR to the truth
where the low resolution is a test image's) per sampling augmentation level, fed the true test images'
low resolution or the base model's samples, for super-resolution models trained with and without
noise-conditioning augmentation. One JSON line per (model, source, level) to --out and stdout, then a
summary with the configuration and the machine.

    python benchmarks/bench_cascade_fashionmnist.py --base W16 --sr aug=W_AUG --sr plain=W_PLAIN \
        [--direct direct=W32] [--chain c8=W8,W8_16,W_AUG]

--direct NAME=WORKDIR (repeatable) measures a 32x32 model sampled directly; --chain NAME=W1,W2,... a whole
cascade from its base (e.g. 8 -> 16 -> 32), each stage at its config's sampling.aug_level. Together
with `benchmarks/train_cascade_fashionmnist.sh`, which trains every model for a wall-clock budget, this
compares cascades with a direct model at equal total training time.

Every stage samples with DPM-Solver++(2M) and --steps steps, non-truncated (the base run to its end,
then noised to the level); the same seeds for every model and level. The classifier and the test
statistics come from --features (trained there when absent, as bench_variances.py does).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import ml_collections
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import samplers  # noqa: E402
from benchmarks._common import emit, machine  # noqa: E402
from benchmarks.bench_variances import prepare  # noqa: E402
from score_toolkit import evaluation, factories, sample_quality  # noqa: E402


def stage(workdir: str, steps: int, level: float = 0.0):
    """A samplers.Stage of a trained workdir (its config.json and newest checkpoint), on the CPU."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    config.device = "cpu"
    sde = factories.build_sde(config)
    model, step = evaluation.load_ema_model(config, workdir)
    shape = (config.data.num_channels, config.data.image_size, config.data.image_size)
    return samplers.Stage(sde, factories.build_precond(config, sde, model), shape, sampler="dpmpp_2m", steps=steps,
                          aug_level=level), step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the 16x16 base model's workdir")
    p.add_argument("--sr", action="append", required=True, help="NAME=WORKDIR of a 16 -> 32 model (repeatable)")
    p.add_argument("--direct", action="append", default=[], help="NAME=WORKDIR of a 32x32 model (repeatable)")
    p.add_argument("--chain", action="append", default=[], help="NAME=W_BASE,W_SR,... a cascade (repeatable)")
    p.add_argument("--config", default="configs/fashionmnist_vp_ddpmpp_sr.py")
    p.add_argument("--workdir", default="")
    p.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--features", default="workdirs/fmnist_features")
    p.add_argument("--classifier-steps", type=int, default=3000)
    p.add_argument("--fid-steps", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.35, 0.5])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/cascade_fashionmnist_cpu.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config, data = prepare(args)
    classifier = sample_quality.load_classifier(config.eval.feature_path)
    reference = sample_quality.FeatureStats.load(config.eval.stats_path)
    truth = data.test[:args.n].float()
    base, base_step = stage(args.base, args.steps)
    lows = {"true": torch.nn.functional.avg_pool2d(truth, 2)}
    parts = []
    for lo in range(0, args.n, args.batch):
        (x,), _ = samplers.cascade_sample([base], min(args.batch, args.n - lo), seed=lo)
        parts.append(x)
    lows["base"] = torch.cat(parts)
    emit({"measure": "base", "fid_16_upsampled": fid(classifier, reference, data, up(lows["base"])),
          "fid_true_16_upsampled": fid(classifier, reference, data, up(lows["true"])), "checkpoint": base_step}, args.out)
    for spec in args.sr:
        name, workdir = spec.split("=", 1)
        for source, low in lows.items():
            for level in args.levels:
                t0 = time.perf_counter()
                sr, step = stage(workdir, args.steps, level)
                x = super_resolve(sr, low, args.batch)
                row = {"model": name, "source": source, "aug_level": level, "fid": fid(classifier, reference, data, x),
                       "n": args.n, "steps": args.steps, "checkpoint": step,
                       "seconds": round(time.perf_counter() - t0, 1)}
                if source == "true":
                    row["psnr"] = psnr(data.to_uint8(x), data.to_uint8(truth))
                emit(row, args.out)
    for spec in args.direct + args.chain:
        name, workdirs = spec.split("=", 1)
        t0 = time.perf_counter()
        stages, steps = zip(*(stage(w, args.steps, _aug_level(w)) for w in workdirs.split(",")))
        parts = []
        for lo in range(0, args.n, args.batch):
            xs, _ = samplers.cascade_sample(list(stages), min(args.batch, args.n - lo), seed=lo)
            parts.append(xs[-1])
        emit({"model": name, "source": "direct" if spec in args.direct else "cascade", "stages": len(stages),
              "fid": fid(classifier, reference, data, torch.cat(parts)), "n": args.n, "steps": args.steps,
              "checkpoints": list(steps), "seconds": round(time.perf_counter() - t0, 1)}, args.out)
    emit({"summary": True, "args": vars(args), "machine": machine()}, args.out)


def _aug_level(workdir: str) -> float:
    with open(os.path.join(workdir, "config.json")) as f:
        return float(json.load(f)["sampling"].get("aug_level", 0.0))


def super_resolve(sr, low, batch):
    """The SR stage's samples given each low-resolution image, noised to the stage's level first."""
    parts = []
    for lo in range(0, len(low), batch):
        z = samplers.noise_to_level(sr.sde, low[lo:lo + batch], sr.aug_level, torch.Generator().manual_seed(10_000 + lo))
        x, _ = samplers.get_sampler("dpmpp_2m")(sr.sde, sr.score_fn, (len(z), *sr.shape), steps=sr.steps,
                                                seed=lo, cond={"low_res": z, "aug_level": torch.full((len(z),), sr.aug_level)})
        parts.append(x)
    return torch.cat(parts)


def up(low):
    return torch.nn.functional.interpolate(low, scale_factor=2, mode="nearest")


def fid(classifier, reference, data, x) -> float:
    with torch.no_grad():
        feats = classifier(data.to_uint8(x))
    stats = sample_quality.FeatureStats.from_features(feats, classifier.name)
    return round(sample_quality.fid_from_stats(stats, reference), 2)


def psnr(a, b) -> float:
    mse = ((a.double() - b.double()) / 255).pow(2).flatten(1).mean(1)
    return round(float((-10 * torch.log10(mse.clamp_min(1e-12))).mean()), 2)


if __name__ == "__main__":
    main()
