"""The cascade benchmark's rows (bench_cascade_fashionmnist.py) as a plot and a Markdown table: FID of the
16 -> 32 stage per sampling augmentation level, for each model fed true or generated low resolutions, and
the direct model and the cascades at equal training time.

    python benchmarks/plot_cascade.py benchmarks/results/cascade_fashionmnist_cpu.jsonl --png fid_cascade.png
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def sweep(rows: list) -> dict:
    """{(model, source): [(level, fid), ...]} of the super-resolution rows."""
    out = {}
    for r in rows:
        if "aug_level" in r:
            out.setdefault((r["model"], r["source"]), []).append((r["aug_level"], r["fid"]))
    return {k: sorted(v) for k, v in out.items()}


def table(rows: list) -> str:
    lines = []
    curves = sweep(rows)
    levels = sorted({lvl for v in curves.values() for lvl, _ in v})
    lines.append("| SR stage (16 -> 32) | low resolution | " + " | ".join(f"s = {lvl:g}" for lvl in levels) + " |")
    lines.append("|---|---|" + "---|" * len(levels))
    for (model, source), points in curves.items():
        fids = dict(points)
        lines.append(f"| {model} | {source} | " + " | ".join(f"{fids.get(lvl, float('nan')):.1f}" for lvl in levels) + " |")
    lines.append("")
    lines.append("| model | stages | FID |")
    lines.append("|---|---|---|")
    for r in rows:
        if r.get("source") in ("direct", "cascade"):
            lines.append(f"| {r['model']} | {r['stages']} | {r['fid']:.1f} |")
    return "\n".join(lines)


def plot(rows: list, path: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for (model, source), points in sweep(rows).items():
        ax.plot(*zip(*points), marker="o", linestyle="-" if source == "base" else "--",
                label=f"{model}, fed {'generated' if source == 'base' else 'true'} 16x16")
    for r in rows:
        if r.get("source") in ("direct", "cascade"):
            ax.axhline(r["fid"], color="gray", linewidth=0.8, linestyle=":")
            ax.annotate(r["model"], (0, r["fid"]), fontsize=7, color="gray")
    ax.set_xlabel("sampling augmentation level s")
    ax.set_ylabel("classifier-FID (lower is better)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results")
    p.add_argument("--png", default="")
    args = p.parse_args()
    rows = read(args.results)
    if args.png:
        plot(rows, args.png)
    print(table(rows))


if __name__ == "__main__":
    sys.exit(main())
