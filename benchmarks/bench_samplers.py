"""Sampler overhead and likelihood cost; prints JSON.

Overhead = wall time of a sampler / (NFE x median time of one score_fn call): 1.0 means the
sampler adds nothing to the network's own cost. Measured with a small conv net on a batch of
64 3x32x32 images. Likelihood: NFE and wall time for a batch of the 16-D Gaussian mixture,
one ODE solve for the whole batch, exact divergence, rtol = atol = 1e-5.

    python benchmarks/bench_samplers.py [--threads 2] [--repeats 3] [--steps 50]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import builders  # noqa: E402
import likelihood  # noqa: E402
import samplers  # noqa: E402
import sde_lib  # noqa: E402
from analytic import GaussianMixture  # noqa: E402
from benchmarks._common import machine, median_time  # noqa: E402


class SmallConvNet(nn.Module):
    """Three 3x3 convolutions, 32 channels, conditioned by adding a per-sample bias."""

    def __init__(self, channels: int = 3, width: int = 32):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(channels, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)
        self.c3 = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, cond):
        h = torch.nn.functional.silu(self.c1(x) + cond.to(x.dtype)[:, None, None, None] * 1e-3)
        return self.c3(torch.nn.functional.silu(self.c2(h)))


def overhead(args) -> dict:
    sde = sde_lib.VPSDE(N=args.steps)
    net = SmallConvNet().eval()
    shape = (64, 3, 32, 32)

    def score_fn(x, t):
        return -net(x, t * 999) / sde.marginal_coeffs(t.double())[1].float()[:, None, None, None]

    x = torch.randn(shape)
    t = torch.full((64,), 0.5)
    results = {}
    with torch.no_grad():
        call = median_time(lambda: score_fn(x, t), repeats=max(20, args.repeats * 10), warmup=3)
        runs = {
            "pc_sample(reverse_diffusion, langevin)": lambda: samplers.pc_sample(sde, score_fn, shape, seed=0),
            "pc_sample(euler_maruyama, none)": lambda: samplers.pc_sample(
                sde, score_fn, shape, predictor="euler_maruyama", corrector="none", seed=0),
            "ode_sample(rk4, fixed steps)": lambda: samplers.ode_sample(
                sde, score_fn, shape, method="rk4", steps=args.steps // 4, seed=0),
            "ode_sample(euler, fixed steps)": lambda: samplers.ode_sample(
                sde, score_fn, shape, method="euler", steps=args.steps, seed=0),
        }
        for name, run in runs.items():
            nfe = run()[1]
            wall = median_time(run, repeats=args.repeats, warmup=0)
            results[name] = {"nfe": nfe, "wall_s": round(wall, 4), "overhead": round(wall / (nfe * call), 4)}
    return {"score_fn_call_s": round(call, 5), "batch_shape": list(shape), "samplers": results}


def likelihood_cost(args) -> dict:
    g = torch.Generator().manual_seed(1)
    means = torch.randn(3, 16, generator=g) * 1.5
    A = torch.randn(3, 16, 16, generator=g) * 0.3
    gm = GaussianMixture([1, 1.5, 2], means, A @ A.transpose(1, 2) + 0.1 * torch.eye(16))
    x = gm.sample(args.ll_batch, g)
    out = {}
    for name, sde in (("vp", sde_lib.VPSDE()), ("ve", sde_lib.VESDE())):
        for div in ("exact", "rademacher"):
            t0 = time.perf_counter()
            _, _, nfe = likelihood.log_likelihood(sde, gm.score_fn(sde), x, divergence=div, rtol=1e-5, atol=1e-5)
            out[f"{name}/{div}"] = {"nfe": nfe, "wall_s": round(time.perf_counter() - t0, 3)}
    return {"batch": args.ll_batch, "dim": 16, "rtol": 1e-5, "atol": 1e-5, "runs": out}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--ll_batch", type=int, default=256)
    p.add_argument("--default_malloc", action="store_true",
                   help="leave glibc's allocator as it is (main.py tunes it: builders.keep_freed_memory)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.malloc_tuned = False if args.default_malloc else builders.keep_freed_memory()
    print(json.dumps({"benchmark": "samplers", "machine": machine(), "config": vars(args),
                      "overhead": overhead(args), "likelihood": likelihood_cost(args)}, indent=2))


if __name__ == "__main__":
    main()
