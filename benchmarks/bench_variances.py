"""Reverse variances of one Fashion-MNIST model, no retraining: the discrete chain's variational bound
(bits/dim) and the classifier-FID of ancestral sampling, on DDPM-strided grids, for each variance the
model allows (fixed_small, fixed_large, analytic; learned_range with a variance head). The fixed and
analytic bounds share their network calls (the same draws, the same means). One JSON line per
measurement goes to --out and stdout, then a summary with the configuration and the machine.

    python benchmarks/bench_variances.py                                   # the shipped model
    python benchmarks/bench_variances.py --config configs/fashionmnist_vp_ddpmpp_hybrid.py --workdir W

Gamma (Analytic-DPM's E||eps_hat||^2 / d at every time of a grid) is estimated on --n-gamma training
images (noise seed 0); the bound is averaged over the first --n-bound test images (one fresh draw per
term, `likelihood.vlb_terms`), with its standard error; FID / KID / IS use the toolkit's Fashion-MNIST
classifier features (trained into --features when absent, as --mode classifier does) on --n-samples
samples drawn with seeds 1000 + b per batch b, the same prior draws for every variance.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import likelihood  # noqa: E402
import samplers  # noqa: E402
from benchmarks._common import emit, machine  # noqa: E402
from score_toolkit import data_lib, evaluation, factories, features  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(spec: str):
    """A config file's get_config(), `path.py` or `path.py:argument`."""
    path, _, arg = spec.partition(":")
    module = importlib.util.spec_from_file_location("bench_config", os.path.join(ROOT, path) if not os.path.isabs(path) else path)
    mod = importlib.util.module_from_spec(module)
    module.loader.exec_module(mod)
    return mod.get_config(arg) if arg else mod.get_config()


def prepare(args):
    config = load_config(args.config)
    config.device = "cpu"
    config.data.root = args.data_root
    if args.workdir:
        config.eval.weights_path = ""
    e = config.eval
    e.feature_extractor, e.classifier_steps = "classifier", args.classifier_steps
    e.feature_path, e.stats_path = os.path.join(args.features, "classifier.pt"), os.path.join(args.features, "stats.npz")
    data = data_lib.load(config)
    if args.fid_steps and not os.path.exists(e.feature_path):
        os.makedirs(args.features, exist_ok=True)
        features.train_feature_classifier(config, data)
    if args.fid_steps and not os.path.exists(e.stats_path):
        features.compute_data_stats(config, data)
    return config, data


def load_score(config, workdir: str):
    """(sde, the EMA network's score_fn, its checkpoint step) of a workdir, or of config.eval.weights_path."""
    sde = factories.build_sde(config)
    model, step = evaluation.load_ema_model(config, workdir)
    return sde, factories.build_precond(config, sde, model), step


class SharedCalls:
    """A score_fn that remembers its outputs in call order, so that passes over the same draws (the bound of
    each fixed variance, seeded alike: their means are the same network calls) make each call once. An input
    that differs from the remembered one is computed again; `rewind()` starts a pass."""

    def __init__(self, score):
        self.score, self.cond_keys, self.memo, self.i, self.calls = score, score.cond_keys, [], 0, 0

    def rewind(self):
        self.i = 0

    def __call__(self, x, t, **cond):
        i, self.i = self.i, self.i + 1
        if i < len(self.memo) and torch.equal(self.memo[i][0], x) and torch.equal(self.memo[i][1], t):
            return self.memo[i][2]
        out = self.score(x, t, **cond)
        self.calls += 1
        entry = (x.clone(), t.clone(), out)
        self.memo[i:i + 1] = [entry]
        return out


def bound(sde, score, k, grid, variance, gamma, batch):
    if isinstance(score, SharedCalls):
        score.rewind()
    parts = []
    for lo in range(0, len(k), batch):
        bpd, _ = likelihood.vlb_bits_per_dim(sde, score, k[lo:lo + batch], grid, variance=variance, gamma=gamma,
                                             seed=lo + 1)
        parts.append(bpd)
    bpd = torch.cat(parts)
    return {"bpd": round(float(bpd.mean()), 4), "stderr": round(float(bpd.std() / math.sqrt(len(bpd))), 4)}


def fid(sde, score, data, quality, grid, variance, gamma, n, batch):
    parts = []
    for b in range(math.ceil(n / batch)):
        x, nfe = samplers.ancestral_sample(sde, score, data.sample_shape(min(batch, n - b * batch)), grid=grid,
                                           variance=variance, gamma=None if gamma is None else gamma[:-1].tolist(),
                                           seed=1000 + b)
        parts.append(data.to_uint8(x))
    return {**quality(torch.cat(parts)), "nfe": nfe, "n_samples": n}



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/fashionmnist_vp_ddpmpp_pretrained.py")
    p.add_argument("--workdir", default="", help="a training workdir (its newest checkpoint's EMA weights); "
                                                 "none: the config's eval.weights_path")
    p.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--bound-steps", type=int, nargs="*", default=[25, 50, 100])
    p.add_argument("--fid-steps", type=int, nargs="*", default=[25, 50, 100])
    p.add_argument("--variances", nargs="+", default=None, help="default: every one the model allows")
    p.add_argument("--fid-variances", nargs="+", default=None, help="default: fixed_small, analytic (+ learned_range)")
    p.add_argument("--n-bound", type=int, default=128)
    p.add_argument("--n-gamma", type=int, default=128)
    p.add_argument("--n-samples", type=int, default=1000)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--features", default="workdirs/fmnist_features")
    p.add_argument("--classifier-steps", type=int, default=3000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="variances.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config, data = prepare(args)
    sde, score, step = load_score(config, args.workdir)
    head, shared = score.learns_variance, SharedCalls(score)
    variances = args.variances or ["fixed_small", "fixed_large", "analytic"] + (["learned_range"] if head else [])
    fid_variances = args.fid_variances or ["fixed_small", "analytic"] + (["learned_range"] if head else [])
    quality = features.quality_fn(config) if args.fid_steps else None
    k_test, x_train = data.test_uint8[:args.n_bound], likelihood.levels_to_model_space(data.train_uint8[:args.n_gamma]).float()
    common = {"config": args.config, "workdir": args.workdir, "checkpoint_step": step}
    for steps in sorted(set(args.bound_steps) | set(args.fid_steps)):
        grid = samplers.ddpm_strided_grid(sde, steps)
        shared.memo = []
        t0 = time.perf_counter()
        gamma = samplers.estimate_gamma(sde, score, x_train, grid, batch_size=args.batch,
                                        generator=torch.Generator().manual_seed(0))
        gamma_s = round(time.perf_counter() - t0, 1)
        for variance in variances if steps in args.bound_steps else []:
            t0 = time.perf_counter()
            row = bound(sde, score if variance == "learned_range" else shared, k_test, grid, variance, gamma, args.batch)
            emit({**common, "measure": "vlb_bpd", "steps": steps, "variance": variance, **row, "n": len(k_test),
                  "seconds": round(time.perf_counter() - t0, 1), "gamma_s": gamma_s}, args.out)
        for variance in fid_variances if steps in args.fid_steps else []:
            t0 = time.perf_counter()
            row = fid(sde, score, data, quality, grid, variance, gamma, args.n_samples, args.batch)
            emit({**common, "measure": "fid", "steps": steps, "variance": variance, **row,
                  "seconds": round(time.perf_counter() - t0, 1)}, args.out)
    print(json.dumps({"summary": True, "args": vars(args), "machine": machine(), **common}), flush=True)


if __name__ == "__main__":
    main()
