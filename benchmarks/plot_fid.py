"""Plot classifier-FID against network calls from the JSON lines of fid_few_step.py.

    python benchmarks/plot_fid.py benchmarks/results/fid_few_step_fashionmnist_h200.jsonl --out fid_per_nfe.png
"""
import argparse
import collections
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("jsonl")
    p.add_argument("--out", default="fid_per_nfe.png")
    args = p.parse_args()
    series = collections.defaultdict(list)
    with open(args.jsonl) as f:
        for row in map(json.loads, f):
            fid = next(v for k, v in row.items() if k.startswith("FID"))
            series[row["sampler"]].append((row["nfe"], fid))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in sorted(series.items()):
        nfe, fid = zip(*sorted(points))
        ax.plot(nfe, fid, "o-" if len(points) > 1 else "s", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(top=200)
    ax.set_xlabel("network calls per sample")
    ax.set_ylabel("classifier-FID (10,000 samples)")
    ax.set_title("Fashion-MNIST, shipped VP DDPM++ small")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(args.out, dpi=100, bbox_inches="tight")


if __name__ == "__main__":
    main()
