"""Sampler overhead and likelihood cost; prints JSON.

Overhead = wall time of a sampler / (NFE x mean time of one isolated score_fn call, timed
between the sampler's own calls): 1.0 means the sampler adds nothing to the network's own cost. Measured with a small conv net (three 3x3
convolutions, 32 channels) inside the score of N(0, I) data, on a batch of 64 1x32x32 images
(`--channels 3` for colour). Likelihood: NFE and wall time for a batch of the 16-D Gaussian
mixture, one ODE solve for the whole batch, exact and Rademacher divergence, rtol = atol = 1e-5.

    python benchmarks/bench_samplers.py [--threads 2] [--repeats 3] [--steps 100] [--channels 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from score_toolkit import runtime  # noqa: E402
import likelihood  # noqa: E402
import samplers  # noqa: E402
import sde_lib  # noqa: E402
from sde_lib.analytic import GaussianMixture  # noqa: E402
from benchmarks._common import machine  # noqa: E402


class SmallConvNet(nn.Module):
    """Three 3x3 convolutions, 32 channels, conditioned by adding a per-sample bias."""

    def __init__(self, channels: int = 3, width: int = 32):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(channels, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)
        self.c3 = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, cond):
        h = torch.nn.functional.silu(self.c1(x) + cond.to(x.dtype)[:, None, None, None] * 1e-3)
        return self.c3(torch.nn.functional.silu(self.c2(h)))


def time_sampler(sde, score_fn, probe, shape, kw, repeats: int) -> dict:
    """Overhead = sampler wall time / (NFE x one isolated score_fn call); time outside score_fn.

    After every score call the sampler makes, `probe()` times one isolated call on a fixed input;
    its time is left out of the sampler's wall time, and the overhead is that wall time over the
    probes' total (NFE x their mean). Sampler and isolated calls are thus timed over the same
    seconds (on a shared VM the machine's speed swings by up to 40% within seconds, which would
    swamp a 10% figure timed at different moments), and both include the same share of slow
    outlier calls, which a median call time would leave out of the denominator only.
    """
    inside, probes = [0.0], []

    def timed(x, t):
        t0 = time.perf_counter()
        out = score_fn(x, t)
        inside[0] += time.perf_counter() - t0
        probes.append(probe())
        return out

    sample = samplers.ode_sample if "method" in kw else samplers.pc_sample
    nfe = sample(sde, timed, shape, seed=0, **kw)[1]
    calls, walls, ratios, outside = [], [], [], []
    for _ in range(repeats):
        inside[0], probes[:] = 0.0, []
        t0 = time.perf_counter()
        sample(sde, timed, shape, seed=0, **kw)
        wall = time.perf_counter() - t0 - sum(probes)
        calls.append(statistics.mean(probes))
        walls.append(wall)
        ratios.append(wall / sum(probes))
        outside.append(wall - inside[0])
    return {"nfe": nfe, "wall_s": round(statistics.median(walls), 4),
            "score_fn_call_s": round(statistics.median(calls), 5),
            "overhead": round(statistics.median(ratios), 4),
            "overhead_per_repeat": [round(r, 3) for r in ratios],
            "outside_score_fn_ms_per_nfe": round(statistics.median(outside) / nfe * 1e3, 3)}


def overhead(args) -> dict:
    sde = sde_lib.VPSDE(N=args.steps)
    net = SmallConvNet(channels=args.channels).eval()
    shape = (64, args.channels, 32, 32)

    def score_fn(x, t):
        # The exact score of N(0, I) data under VP (-x) plus the network's output, scaled down:
        # samples stay on the data's scale, as with a trained model, and each call costs one
        # forward pass. A bare untrained net drives samples to |x| ~ 1e3, where its SiLUs run up
        # to 40% slower than on the N(0, 1) inputs the call is timed on, which is no sampler cost.
        return torch.add(-x, net(x, t * 999), alpha=0.1)

    x_probe, t_probe = torch.randn(shape), torch.full((64,), 0.5)

    def probe() -> float:
        t0 = time.perf_counter()
        score_fn(x_probe, t_probe)
        return time.perf_counter() - t0

    results = {}
    with torch.no_grad():
        for _ in range(10):  # warm-up: the allocator's heap grows over the first calls
            probe()
        runs = {
            "pc_sample(reverse_diffusion, langevin)": dict(predictor="reverse_diffusion", corrector="langevin"),
            "pc_sample(euler_maruyama, none)": dict(predictor="euler_maruyama", corrector="none"),
            "ode_sample(rk4, fixed steps)": dict(method="rk4", steps=args.steps // 4),
            "ode_sample(euler, fixed steps)": dict(method="euler", steps=args.steps),
        }
        for name, kw in runs.items():
            results[name] = time_sampler(sde, score_fn, probe, shape, kw, args.repeats)
    return {"batch_shape": list(shape), "samplers": results}


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
    p.add_argument("--channels", type=int, default=1, help="image channels (1: Fashion-MNIST-like, as in DESIGN.md)")
    p.add_argument("--ll_batch", type=int, default=256)
    p.add_argument("--default_malloc", action="store_true",
                   help="leave glibc's allocator as it is (main.py tunes it: runtime.keep_freed_memory)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.malloc_tuned = False if args.default_malloc else runtime.keep_freed_memory()
    print(json.dumps({"benchmark": "samplers", "machine": machine(), "config": vars(args),
                      "overhead": overhead(args), "likelihood": likelihood_cost(args)}, indent=2))


if __name__ == "__main__":
    main()
