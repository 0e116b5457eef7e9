"""Classifier-FID of distilled Fashion-MNIST students beside the shipped teacher's best few-step samplers,
all drawn in one run from the same prior draws (seed 1000 + batch).

    python benchmarks/bench_distill_fashionmnist.py --data-root /usr/share/datasets/fashion-mnist \
        --student pd=workdirs/distill_pd --student cd=workdirs/distill_cd --n-samples 2000

Each --student NAME=WORKDIR is a --mode distill workdir: a progressive one is measured at every
distilled/steps_<n>.pt it holds (DDIM with n steps on its grid), a consistency one at --cm-steps with its
newest checkpoint's EMA weights (one-step and multistep consistency sampling on the Karras grid). The
teacher (the shipped EMA weights) is measured with --baselines (sampler:calls). One JSON line per
measurement to --out and stdout, then a summary with the configuration and the machine.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys
import time

import ml_collections
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks._common import emit, machine  # noqa: E402
from benchmarks.fid_few_step import draw, prepare  # noqa: E402
from score_toolkit import evaluation, factories, features  # noqa: E402


def student_config(workdir: str) -> ml_collections.ConfigDict:
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    config.device = "cpu"
    return config


def students(spec: str, cm_steps, pd_max_steps: int, cm_mid: float):
    """(label, config, weights file or '' for the newest checkpoint, sampler kwargs) of one --student."""
    name, workdir = spec.split("=", 1)
    config = student_config(workdir)
    if config.distill.method == "progressive":
        found = sorted(glob.glob(os.path.join(workdir, "distilled", "steps_*.pt")),
                       key=lambda p: -int(re.findall(r"steps_(\d+)", p)[0]))
        for path in found:
            n = int(re.findall(r"steps_(\d+)", path)[0])
            if n > pd_max_steps:
                continue
            yield f"{name}_{n}", config, path, {"steps": n, "grid": config.distill.grid}, workdir
    else:
        for k in cm_steps:
            yield f"{name}_{k}", config, "", {"steps": k, "grid": "karras"}, workdir
        if cm_mid:  # two steps through Song et al.'s intermediate noise level instead of the Karras grid's
            yield f"{name}_2_mid{cm_mid:g}", config, "", {"mid": cm_mid}, workdir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--features", default="workdirs/fmnist_features")
    p.add_argument("--classifier-steps", type=int, default=3000)
    p.add_argument("--student", action="append", default=[], help="NAME=WORKDIR of a --mode distill run (repeatable)")
    p.add_argument("--cm-steps", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--cm-mid", type=float, default=0.821, help="noise level sigma / alpha of a 2-step run's middle "
                   "time (0: none)")
    p.add_argument("--pd-max-steps", type=int, default=8, help="progressive students with at most this many steps")
    p.add_argument("--baselines", default="unipc:4,unipc:5,unipc:10,dpmpp_2m:4,dpmpp_2m:10,ddim:4,ddim:8")
    p.add_argument("--n-samples", type=int, default=2000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results/distill_fashionmnist_cpu.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config, data = prepare(args)
    quality = features.quality_fn(config)
    sde = factories.build_sde(config)
    teacher, step = evaluation.load_ema_model(config, "unused: weights_path is set")
    teacher_fn = factories.build_precond(config, sde, teacher)

    def measure(label, score_fn, method, kwargs, **extra):
        t0 = time.perf_counter()  # the same prior draws for every row: seed 1000 + b for batch b
        x, nfe = draw(sde, score_fn, method, kwargs, None, args.n_samples, args.batch, args.device)
        seconds = round(time.perf_counter() - t0, 1)
        q = quality(data.to_uint8(x))
        fid = next(v for k, v in q.items() if k.startswith("FID"))
        shown = {k: [round(t, 6) for t in val.tolist()] if torch.is_tensor(val) else val for k, val in kwargs.items()}
        emit({"model": label, "sampler": method, **shown, "nfe": nfe, "fid": round(fid, 2), "n": args.n_samples,
              "seconds": seconds, **extra}, args.out)

    with torch.no_grad():
        for spec in args.baselines.split(","):
            method, calls = spec.split(":")
            measure(f"teacher_{method}", teacher_fn, method, {"steps": int(calls)}, checkpoint=step)
        for spec in args.student:
            for label, cfg, weights, kwargs, workdir in students(spec, args.cm_steps, args.pd_max_steps, args.cm_mid):
                cfg.eval.weights_path = weights
                net, s = evaluation.load_ema_model(cfg, workdir)
                fn = factories.build_precond(cfg, sde, net)
                method = "ddim" if cfg.distill.method == "progressive" else "consistency"
                if "mid" in kwargs:  # times [T, t(nu = mid), t_min]
                    t_mid = float(sde.t_from_log_snr(torch.tensor(-math.log(kwargs.pop("mid")), dtype=torch.float64)))
                    kwargs["grid"] = torch.tensor([sde.T, t_mid, fn.t_min], dtype=torch.float64)
                elif method == "consistency":
                    kwargs = {**kwargs, "eps": fn.t_min}
                measure(label, fn, method, kwargs, checkpoint=s, method_distilled=cfg.distill.method)
    emit({"summary": True, "args": vars(args), "machine": machine()}, args.out)


if __name__ == "__main__":
    main()
