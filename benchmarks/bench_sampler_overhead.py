"""Time a sampler spends outside the score function, per step, with a score that costs nothing
(-x, the exact score of N(0, I) data under VE up to scale): what the set-up and each loop add. Medians
over repeats; prints JSON. With --against PATH it also runs the same measurement on another checkout
of the project (e.g. a previous version) in subprocesses, alternating with this one for --rounds rounds
on the same machine in the same run, and reports the ratio of the medians.

    python benchmarks/bench_sampler_overhead.py [--steps 1000] [--batch 64] [--repeats 5] [--against PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

SAMPLERS = {"ddim": {}, "dpmpp_2m": {}, "dpmpp_3m": {}, "unipc": {}, "heun": {}, "pc": {"corrector": "none"},
            "dpm_solver": {"order": 2}}


def measure(steps: int, batch: int, repeats: int) -> dict:
    import samplers
    import sde_lib
    sde = sde_lib.VPSDE()

    def score(x, t):
        return -x

    out = {}
    for name, kw in SAMPLERS.items():
        fn = samplers.get_sampler(name)
        times = []
        for _ in range(repeats + 1):  # the first run warms up
            t0 = time.perf_counter()
            _, nfe = fn(sde, score, (batch, 2), steps=steps, seed=0, **kw)
            times.append(time.perf_counter() - t0)
        out[name] = {"us_per_call": round(statistics.median(times[1:]) / nfe * 1e6, 2), "nfe": nfe}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--against", default="", help="another checkout to measure in the same run")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of this and --against")
    p.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)  # the subprocess's mode
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.raw:  # the checkout to measure is the first entry of PYTHONPATH
        import samplers
        print(json.dumps({"samplers_at": os.path.dirname(os.path.dirname(samplers.__file__)),
                          **measure(args.steps, args.batch, args.repeats)}))
        return
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    def run(tree: str) -> dict:
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
        cmd = [sys.executable, os.path.abspath(__file__), "--raw", f"--steps={args.steps}", f"--batch={args.batch}",
               f"--repeats={args.repeats}", f"--threads={args.threads}"]
        out = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True,
                                        cwd=os.path.abspath(tree)).stdout)
        assert out.pop("samplers_at") == os.path.abspath(tree), "measured the wrong checkout"
        return out

    trees = {"this": os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")}
    if args.against:
        trees["against"] = args.against
    rounds = {name: [] for name in trees}
    for _ in range(args.rounds if args.against else 1):
        for name, tree in trees.items():
            rounds[name].append(run(tree))
    result = {"config": {k: v for k, v in vars(args).items() if k != "raw"}}
    for name, runs in rounds.items():
        result[name] = {k: {"us_per_call": statistics.median(r[k]["us_per_call"] for r in runs), "nfe": runs[0][k]["nfe"]}
                        for k in runs[0]}
    if args.against:
        result["ratio_this_over_against"] = {k: round(result["this"][k]["us_per_call"] /
                                                      result["against"][k]["us_per_call"], 3) for k in result["this"]
                                             if k in result["against"]}
    from benchmarks._common import machine
    result["machine"] = machine()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
