"""The posterior samplers against exact posteriors (float64, the prior's exact score as the model): each
method's error per network call on four problems whose posterior is a Gaussian mixture in closed form
(`GaussianMixture.condition`), at the time its samples are at (eps, or 0 for DDRM).

  gaussian_noisy_A_vp    isotropic Gaussian in 3-D, a random 2 x 3 A, sigma_y = 0.2, VP
  mixture_inpaint_vp     two elongated 2-D components overlapping where x_0 = 0.3 is observed, noiseless, VP
  mixture_superres_ve    a 2-component mixture on 2 x 2 images, 2x average pooling, sigma_y = 0.05, VE
  mixture_noisy_A_ve     a 2-component mixture in 3-D, a random 2 x 3 A, sigma_y = 0.3, VE

Per method and budget: network evaluations per sample, the mass the samples put on component 0 (the
mean posterior responsibility; standard error beside it) against the exact posterior's, and the errors of
the sample mean and covariance (Frobenius). One JSON line each to --out and stdout, then a summary.

    python benchmarks/bench_posterior.py [--samples 2000] [--out benchmarks/results/posterior_toy.jsonl]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import samplers  # noqa: E402
import sde_lib  # noqa: E402
from benchmarks._common import machine  # noqa: E402
from samplers.observations import AveragePooling, Inpainting, MatrixObservation  # noqa: E402
from sde_lib import GaussianMixture  # noqa: E402

F64 = torch.float64


def problems():
    """name -> (sde, prior, observation, y [m], sigma_y)."""
    rand = lambda m, d, seed: torch.randn(m, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    two = GaussianMixture([0.5, 0.5], [[-1.0, -1.0], [1.0, 1.0]],
                          [[[1.0, 0.9], [0.9, 1.0]], [[1.0, -0.9], [-0.9, 1.0]]])
    images = GaussianMixture([0.3, 0.7], [[0.8, -0.4, 0.2, 0.6], [-0.5, 0.3, -0.6, 0.1]], [0.2, 0.35])
    three = GaussianMixture([0.4, 0.6], [[-1.0, 0.5, 0.0], [1.0, -0.5, 0.5]], [0.3, 0.2])
    return {
        "gaussian_noisy_A_vp": (sde_lib.VPSDE(), GaussianMixture([1.0], [[0.3, -0.2, 0.5]], [0.49]),
                                MatrixObservation(rand(2, 3, 0)), torch.tensor([0.4, -0.9], dtype=F64), 0.2),
        "mixture_inpaint_vp": (sde_lib.VPSDE(), two, Inpainting(torch.tensor([True, False])),
                               torch.tensor([0.3], dtype=F64), 0.0),
        "mixture_superres_ve": (sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0), images, AveragePooling((1, 2, 2), 2),
                                torch.tensor([0.05], dtype=F64), 0.05),
        "mixture_noisy_A_ve": (sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0), three, MatrixObservation(rand(2, 3, 1)),
                               torch.tensor([0.5, -0.3], dtype=F64), 0.3),
    }


def methods(noiseless_inpainting: bool):
    """(label, method, options, steps, samples share) per run; particles cost their count per step."""
    runs = [("particle N=16", "particle", {"particles": 16}, 100, 0.5),
            ("particle N=64", "particle", {"particles": 64}, 100, 0.25),
            ("particle N=256", "particle", {"particles": 256}, 100, 0.25),
            ("ddrm 20", "ddrm", {}, 20, 1), ("ddrm 100", "ddrm", {}, 100, 1),
            ("ddrm markov 100", "ddrm", {"eta": "markov"}, 100, 1),
            ("pigdm 20", "pigdm", {}, 20, 1), ("pigdm 100", "pigdm", {}, 100, 1),
            ("dps zeta=0.3 100", "dps", {"zeta": 0.3}, 100, 1), ("dps zeta=1 100", "dps", {"zeta": 1.0}, 100, 1),
            ("dps zeta=0.3 1000", "dps", {"zeta": 0.3}, 1000, 1)]
    if noiseless_inpainting:
        runs += [("replacement 100", "replacement", {}, 100, 1),
                 ("repaint r=10 100", "replacement", {"resample": 10}, 100, 1)]
    return runs


def measure(name, sde, prior, op, y, sigma_y, label, method, options, steps, n):
    shape = (n, *op.shape)
    flat = lambda x: x.reshape(len(x), -1)
    score = prior.score_fn(sde)
    score_fn = score if len(op.shape) == 1 else lambda x, t: score(flat(x), t).reshape(x.shape)
    t0 = time.perf_counter()
    x, info = samplers.posterior_sample(method, sde, score_fn, shape, op, y.expand(n, -1), sigma_y=sigma_y,
                                        steps=steps, seed=1, dtype=F64, **options)
    seconds = time.perf_counter() - t0
    at = prior if info["t"] == 0 else prior.at(sde, info["t"])
    exact = at.condition(op.matrix(), y, sigma_y)
    x = flat(x)
    resp = at.posterior(x)[:, 0]
    return {"problem": name, "method": label, "steps": steps, "samples": n,
            "network_evaluations_per_sample": info["network_evaluations_per_sample"],
            "backward_passes_per_sample": info["backward_passes"],
            "mass_0": float(resp.mean()), "mass_0_se": float(resp.std() / math.sqrt(n)),
            "mass_0_exact": float(exact.weights[0]),
            "mean_error": float((x.mean(0) - exact.mean()).norm()),
            "cov_error": float((torch.cov(x.T) - exact.covariance()).norm()),
            "mean_error_se": float(math.sqrt(torch.diagonal(exact.covariance()).sum() / n)), "seconds": seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--problems", default="all", help="comma-separated names, or all")
    ap.add_argument("--out", default="benchmarks/results/posterior_toy.jsonl")
    args = ap.parse_args()
    rows, chosen = [], problems()
    if args.problems != "all":
        chosen = {k: chosen[k] for k in args.problems.split(",")}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        for name, (sde, prior, op, y, sigma_y) in chosen.items():
            for label, method, options, steps, share in methods(isinstance(op, Inpainting) and sigma_y == 0):
                row = measure(name, sde, prior, op, y, sigma_y, label, method, options, steps,
                              int(args.samples * share))
                rows.append(row)
                print(json.dumps(row), flush=True)
                f.write(json.dumps(row) + "\n")
        summary = {"summary": True, "samples": args.samples, "machine": machine()}
        f.write(json.dumps(summary) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
