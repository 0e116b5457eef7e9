"""Shared helpers for the benchmark scripts: timing medians and a description of the machine."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time

import torch


def timings(fn, repeats: int, warmup: int = 1) -> list:
    """Wall times of fn() in seconds over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median of `timings`."""
    return statistics.median(timings(fn, repeats, warmup))


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def emit(row: dict, out: str) -> None:
    """One JSON line: appended to the file `out` and printed."""
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
