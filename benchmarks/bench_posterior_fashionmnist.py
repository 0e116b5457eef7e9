"""The posterior samplers on real images: the shipped Fashion-MNIST model completes test images from a
noiseless observation, per task (the right half hidden, the centre square hidden, 3/4 of the pixels
hidden at random, 4x super-resolution by block means) and per method at its budget. One JSON line per
(task, method) to --out and stdout, then a summary with the configuration and the machine:

  network_evaluations_per_sample, backward_passes_per_sample   the cost
  psnr        to the true image, in dB on [0, 1], the mean over images
  accuracy    of the toolkit's Fashion-MNIST classifier on the completions, against the truth's label
  fid         classifier-FID of the completions against the test set's statistics (few images: biased high)
  diversity   the per-pixel standard deviation over --n-diverse completions of the first observation, in the
              hidden part (pixel levels / 255); 0 for a method that always returns one answer

    python benchmarks/bench_posterior_fashionmnist.py [--n-images 64] [--methods ddrm20,dps100,...]

The classifier (and the test statistics) are trained into --features when absent, as --mode classifier does;
the true images' own accuracy and FID at the same number of images come first, as the yardstick.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import samplers  # noqa: E402
from benchmarks._common import emit, machine  # noqa: E402
from benchmarks.bench_variances import load_score, prepare  # noqa: E402
from score_toolkit import data_lib, image_data, sample_quality  # noqa: E402

# label -> (method, steps, options)
METHODS = {
    "replacement100": ("replacement", 100, {}),
    "ddrm20": ("ddrm", 20, {}),
    "ddrm100": ("ddrm", 100, {}),
    "pigdm50": ("pigdm", 50, {"x0_range": (-1.0, 1.0)}),
    "dps100": ("dps", 100, {"zeta": 1.0}),
    "particle4x50": ("particle", 50, {"particles": 4}),
}
TASKS = ("right", "center", "random75", "superres4")


def observation_of(task: str, shape):
    if task == "superres4":
        return samplers.AveragePooling(shape, 4)
    return samplers.Inpainting(data_lib.inpainting_mask(task, shape) > 0)


def hidden_part(op, shape) -> torch.Tensor:
    """Where the observation leaves x free [C, H, W]: the hidden pixels, or every pixel for pooling."""
    return ~op.mask if isinstance(op, samplers.Inpainting) else torch.ones(shape, dtype=torch.bool)


def run(sde, score, op, y, method, steps, options, seed, batch):
    parts, info = [], None
    for lo in range(0, len(y), batch):
        yb = y[lo:lo + batch]
        x, info = samplers.posterior_sample(method, sde, score, (len(yb), *op.shape), op, yb, steps=steps,
                                            seed=seed + lo, **options)
        parts.append(x.detach())
    return torch.cat(parts), info


def fid_of(features, classifier, reference) -> float:
    return sample_quality.fid_from_stats(sample_quality.FeatureStats.from_features(features, classifier.name),
                                         reference)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.double() - b.double()) / 255).pow(2).flatten(1).mean(1)
    return float((-10 * torch.log10(mse.clamp_min(1e-12))).mean())



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/fashionmnist_vp_ddpmpp_pretrained.py")
    p.add_argument("--workdir", default="")
    p.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--features", default="workdirs/fmnist_features")
    p.add_argument("--classifier-steps", type=int, default=3000)
    p.add_argument("--fid-steps", type=int, default=1, help=argparse.SUPPRESS)  # prepare(): train the classifier
    p.add_argument("--n-images", type=int, default=64)
    p.add_argument("--n-diverse", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/posterior_fashionmnist_cpu.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config, data = prepare(args)
    sde, score, step = load_score(config, args.workdir)
    classifier = sample_quality.load_classifier(config.eval.feature_path)
    reference = sample_quality.FeatureStats.load(config.eval.stats_path)
    truth_u8, labels = data.test_uint8[:args.n_images], data.test_labels[:args.n_images]
    truth = data.scaler(image_data.to_unit_interval(truth_u8)).float()
    shape = tuple(truth.shape[1:])
    with torch.no_grad():
        feats, probs = classifier.features_and_probabilities(truth_u8)
    emit({"task": "none", "method": "the true images", "n_images": len(truth_u8),
          "accuracy": round(float((probs.argmax(1).cpu() == labels).double().mean()), 4),
          "fid": round(fid_of(feats, classifier, reference), 2)}, args.out)
    for task in args.tasks.split(","):
        op = observation_of(task, shape)
        y, hidden = op(truth.double()), hidden_part(op, shape)
        for label in args.methods.split(","):
            method, steps, options = METHODS[label]
            if method == "replacement" and not isinstance(op, samplers.Inpainting):
                continue
            t0 = time.perf_counter()
            x, info = run(sde, score, op, y, method, steps, options, 1000, args.batch)
            x_u8 = data.to_uint8(x)
            with torch.no_grad():
                feats, probs = classifier.features_and_probabilities(x_u8)
            fid = fid_of(feats, classifier, reference)
            same = y[:1].expand(args.n_diverse, -1)
            xd, _ = run(sde, score, op, same, method, steps, options, 5000, args.batch)
            spread = data.to_uint8(xd).double().std(0)[hidden].mean() / 255
            row = {"task": task, "method": label, "solver": method, "steps": steps, **options,
                   "network_evaluations_per_sample": info["network_evaluations_per_sample"],
                   "backward_passes_per_sample": info["backward_passes"], "n_images": len(x),
                   "psnr": round(psnr(x_u8, truth_u8), 2),
                   "accuracy": round(float((probs.argmax(1).cpu() == labels).double().mean()), 4),
                   "fid": round(fid, 2), "diversity": round(float(spread), 4),
                   "seconds": round(time.perf_counter() - t0, 1), "checkpoint_step": step}
            emit(row, args.out)
    emit({"summary": True, "args": vars(args), "machine": machine()}, args.out)


if __name__ == "__main__":
    main()
