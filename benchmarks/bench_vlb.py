"""The variational bound of the shipped Fashion-MNIST model (bits/dim) on strided grids with the fixed
small, fixed large and Analytic-DPM variances, no retraining; prints JSON.

Gamma (E||eps_hat||^2 / d at each grid time) is estimated on --n_gamma training images; the bound is
averaged over the first --n test images, one fresh x_t draw per term (`likelihood.vlb_terms`). The ODE's
exact bits/dim of the same model is the figure to compare with (README).

    python benchmarks/bench_vlb.py [--steps 25 50 100] [--n 128] [--n_gamma 128] [--batch 128]
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
import likelihood  # noqa: E402
import samplers  # noqa: E402
from benchmarks._common import machine  # noqa: E402
from configs.fashionmnist_vp_ddpmpp_pretrained import get_config  # noqa: E402
from score_toolkit import data_lib, evaluation, factories  # noqa: E402

VARIANCES = ("fixed_small", "fixed_large", "analytic")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100])
    p.add_argument("--n", type=int, default=128, help="test images the bound is averaged over")
    p.add_argument("--n_gamma", type=int, default=128, help="training images Gamma is estimated on")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = get_config()
    config.device = "cpu"
    sde = factories.build_sde(config)
    model, step = evaluation.load_ema_model(config, "")
    score = factories.build_precond(config, sde, model)
    data = data_lib.load(config)
    k_test, k_train = data.test_uint8[:args.n], data.train_uint8[:args.n_gamma]
    rows = []
    for steps in args.steps:
        grid = samplers.ddpm_strided_grid(sde, steps)
        t0 = time.perf_counter()
        gamma = samplers.estimate_gamma(sde, score, likelihood.levels_to_model_space(k_train).float(), grid,
                                        batch_size=args.batch, generator=torch.Generator().manual_seed(0))
        gamma_s = time.perf_counter() - t0
        row = {"steps": steps, "grid": "ddpm_strided", "gamma_s": round(gamma_s, 1)}
        for variance in VARIANCES:
            t0, parts = time.perf_counter(), []
            for lo in range(0, args.n, args.batch):
                bpd, _ = likelihood.vlb_bits_per_dim(sde, score, k_test[lo:lo + args.batch], grid, variance=variance,
                                                     gamma=gamma, seed=lo + 1)
                parts.append(bpd)
            bpd = torch.cat(parts)
            row[variance] = {"bpd": round(float(bpd.mean()), 4),
                             "stderr": round(float(bpd.std() / math.sqrt(len(bpd))), 4),
                             "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps({"config": vars(args), "checkpoint_step": step, "machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
