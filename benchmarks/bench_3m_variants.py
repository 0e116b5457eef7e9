"""DPM-Solver++(3M)'s two updates per score call: endpoint error against the converged flow on the
problems of `bench_quality.py` (2-D and 16-D mixtures under VE and VP; exact score, float64), for
variant="reference" (the second difference halved, as diffusers and k-diffusion do) and
variant="third_order" (in full), on the default uniform log-SNR grid and on Karras rho = 7. Prints JSON.

    python benchmarks/bench_3m_variants.py [--n 2000] [--steps 5 10 15 20 40 80 160 320]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import samplers  # noqa: E402
from benchmarks._common import machine  # noqa: E402
from benchmarks.bench_quality import PROBLEMS, Problem  # noqa: E402

VARIANTS = ("reference", "third_order")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="prior draws per problem")
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 10, 15, 20, 40, 80, 160, 320])
    args = ap.parse_args()
    rows = []
    for name in PROBLEMS:
        p = Problem(name, args.n, 1000)
        for grid in ("uniform_log_snr", "karras"):
            for variant in VARIANTS:
                errors = {}
                for steps in args.steps:
                    x, nfe = samplers.dpmpp_3m_sample(p.sde, p.score, p.x_T.shape, x_T=p.x_T, steps=steps, grid=grid,
                                                      dtype=torch.float64, variant=variant)
                    errors[steps] = p.error(x)
                rows.append({"problem": name, "grid": grid, "variant": variant,
                             "error": {k: float(f"{v:.4g}") for k, v in errors.items()}})
                print(json.dumps(rows[-1]), file=sys.stderr)
    summary = {}
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        summary[variant] = {s: float(f"{sorted(r['error'][s] for r in mine)[len(mine) // 2]:.4g}") for s in args.steps}
        lo, hi = args.steps[-2], args.steps[-1]
        summary[variant]["slope_last"] = round(math.log(summary[variant][lo] / summary[variant][hi]) / math.log(hi / lo), 3)
    wins = {s: sum(a["error"][s] < b["error"][s] for a, b in zip(rows[0::2], rows[1::2])) for s in args.steps}
    print(json.dumps({"config": vars(args), "machine": machine(), "median_error": summary,
                      "reference_wins_of": {"cases": len(rows) // 2, **wins}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
