"""Data-parallel training throughput on the CPU: 1 process against 2 (gloo) at the same global batch; prints JSON.

Each case starts this script's worker with `python -m torch.distributed.run --standalone
--nproc_per_node=N`. The worker times the toolkit's training step as `train` runs it
(training.train_step on training.training_model: under 2 ranks each rank runs the network on its half
of the global batch and DDP sums the gradients) on a fixed random global batch: `--steps` steps per
repeat, between barriers, one untimed repeat first. Reported per workload and case: samples/s
(images/s for the image network, points/s for the MLP) of every repeat and their median. Cases:
1 process with 1 thread, 1 process with 2 threads (the cores 2 processes use), 2 processes with 1
thread each; `ratio_2proc_vs_1proc_1thread` is the data-parallel scaling over cores.

    python benchmarks/bench_ddp_scaling.py --out benchmarks/results/ddp_scaling_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks._common import machine, timings  # noqa: E402
from configs.default import get_default_config  # noqa: E402
from configs.image_defaults import get_image_config  # noqa: E402
from score_toolkit import data_lib  # noqa: E402
from score_toolkit import distributed  # noqa: E402
from score_toolkit import factories  # noqa: E402
from score_toolkit import training  # noqa: E402
from score_toolkit import validation  # noqa: E402

# name: (global batch, steps per repeat); the image network is bench_training_step's --quick width.
WORKLOADS = {"mlp": (512, 200), "ddpmpp_tiny": (32, 8)}
CASES = {"1proc_1thread": (1, 1), "1proc_2threads": (1, 2), "2proc_1thread": (2, 1)}  # (processes, threads each)


def workload_config(name: str):
    """The swiss-roll MLP of configs/default.py, or DDPM++ (VP) at nf=16, ch_mult (1, 2), 1 block, on 3x32x32."""
    if name == "mlp":
        config = get_default_config()
    else:
        config = get_image_config("cifar10", "vpsde", "ddpmpp", "paper")
        config.model.update(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,))
    config.device, config.training.batch_size = "cpu", WORKLOADS[name][0]
    return config


def describe(config) -> dict:
    m = config.model
    keys = ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "hidden")
    return {"network": m.name, "sde": config.sde.name, "data": config.data.name,
            "global_batch": config.training.batch_size, **{k: m[k] for k in keys if k in m}}


def step_fn(config):
    """One training step on a fixed random global batch, as `train` takes it."""
    state = training.TrainState(config, validation.validate_config(config))
    sde = factories.build_sde(config)
    loss_fn, model = factories.build_loss(config, sde), training.training_model(config, sde, state)
    shape = data_lib.load(config).sample_shape(config.training.batch_size)
    batch = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    state.model.train()
    return lambda: training.train_step(state, loss_fn, model, batch, config)


def worker(args) -> None:
    """Under torchrun: time --steps steps --repeats times; rank 0 writes samples/s per repeat to --out."""
    torch.set_num_threads(args.threads)
    config = workload_config(args.workload)
    with distributed.session(torch.device("cpu")):
        step = step_fn(config)

        def steps():
            for _ in range(args.steps):
                step()
            distributed.barrier()  # a repeat ends when the slowest rank is done

        distributed.barrier()
        times = timings(steps, args.repeats, warmup=1)
        if distributed.is_main():
            rates = [args.steps * config.training.batch_size / t for t in times]
            with open(args.out, "w") as f:
                json.dump({"samples_per_s": [round(r, 1) for r in rates],
                           "median_samples_per_s": round(statistics.median(rates), 1)}, f)


def run_case(workload: str, nproc: int, threads: int, repeats: int) -> dict:
    """The worker's report for one case, launched by torch.distributed.run."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "case.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               os.path.abspath(__file__), "--worker", f"--workload={workload}", f"--threads={threads}",
               f"--steps={WORKLOADS[workload][1]}", f"--repeats={repeats}", f"--out={out}"]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per case, after one untimed")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {list(WORKLOADS)}")
    p.add_argument("--out", default=None, help="also write the JSON to this file (the worker: its result file)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workload", default="mlp", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    report = {"machine": {**machine(), "cpu_model": cpu_model(), "load_average_at_start": os.getloadavg()},
              "method": "median samples/s over repeats of training.train_step on a fixed global batch, "
                        "gloo, torch.distributed.run --standalone", "repeats": args.repeats, "workloads": {}}
    for name in args.workloads.split(","):
        results = {case: run_case(name, n, threads, args.repeats) for case, (n, threads) in CASES.items()}
        rate = {case: r["median_samples_per_s"] for case, r in results.items()}
        report["workloads"][name] = {
            "config": {**describe(workload_config(name)), "steps_per_repeat": WORKLOADS[name][1]},
            "cases": results,
            "ratio_2proc_vs_1proc_1thread": round(rate["2proc_1thread"] / rate["1proc_1thread"], 3),
            "ratio_2proc_vs_1proc_2threads": round(rate["2proc_1thread"] / rate["1proc_2threads"], 3)}
    report["machine"]["load_average_at_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
