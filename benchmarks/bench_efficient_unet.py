"""Speed of Imagen's efficient U-Net options against the plain DDPM++ U-Net, on the 16 -> 32
Fashion-MNIST super-resolution network of configs/fashionmnist_vp_ddpmpp_sr.py: the median of
--repeats training steps (the toolkit's loss with the low resolution, backward, Adam; batch
--train-batch) and of forward passes (batch --batch), per option alone and all together, with the
ratio to the plain network timed in the same run. One JSON line per variant, then a summary.

    python benchmarks/bench_efficient_unet.py --repeats 7

With --train-seconds S, quality at equal training wall-clock too: each of --quality variants trains
S seconds on Fashion-MNIST (batch --train-batch, Adam 2e-4, the config's augmentation: level s ~ U[0, 0.5]),
from the same seed and the same batches, then reports its held-out denoising loss (the training loss on
--heldout test images, with t, noise and augmentation drawn once from a fixed seed; lower is better) and
the steps it made.

    python benchmarks/bench_efficient_unet.py --repeats 7 --train-seconds 300
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import ml_collections
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks._common import emit, machine, timings  # noqa: E402
from configs.fashionmnist_vp_ddpmpp_sr import get_config  # noqa: E402
from configs.image_defaults import EFFICIENT  # noqa: E402
from score_toolkit import factories, losses  # noqa: E402

VARIANTS = {
    "plain": {},
    "blocks_1_2_4": {"num_res_blocks": EFFICIENT["num_res_blocks"]},
    "resample_first": {"resample_first": True, "attn_resolutions": (8,)},
    "skip_scale": {"skip_scale": EFFICIENT["skip_scale"]},
    "efficient_all": {**EFFICIENT, "attn_resolutions": (8,)},
}


def network(variant: str):
    config = get_config("small")
    config.model = ml_collections.ConfigDict({**config.model.to_dict(), **VARIANTS[variant]})
    torch.manual_seed(0)
    return config, factories.build_model(config)


def bench(variant: str, args) -> dict:
    config, net = network(variant)
    sde = factories.build_sde(config)
    score_fn = factories.build_precond(config, sde, net)
    loss_fn = losses.get_loss_fn(sde, reduce="mean", eps=1e-5)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.train_batch, 1, 32, 32, generator=g)
    cond = {"low_res": torch.nn.functional.avg_pool2d(x, 2), "aug_level": torch.rand(args.train_batch, generator=g)}

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(score_fn, x, cond=cond).backward()
        opt.step()

    xb = torch.rand(args.batch, 1, 32, 32, generator=g)
    low, level, c = torch.nn.functional.avg_pool2d(xb, 2), torch.zeros(args.batch), torch.full((args.batch,), 500.0)

    def forward():
        with torch.no_grad():
            net(xb, c, low_res=low, aug_level=level)

    net.train()
    train = timings(step, args.repeats, 1)
    net.eval()
    fwd = timings(forward, args.repeats, 1)
    return {"variant": variant, "options": {k: list(v) if isinstance(v, tuple) else v for k, v in VARIANTS[variant].items()},
            "params": sum(p.numel() for p in net.parameters()),
            f"train_step_b{args.train_batch}_s": round(statistics.median(train), 4),
            f"forward_b{args.batch}_s": round(statistics.median(fwd), 4)}


def quality(variant: str, args, data_root: str) -> dict:
    """(steps made, held-out loss) of `variant` trained args.train_seconds seconds (docstring)."""
    import time
    from score_toolkit import data_lib, super_resolution
    config, net = network(variant)
    config.data.root, config.device = data_root, "cpu"
    sde = factories.build_sde(config)
    data = super_resolution.wrap(config, data_lib.load(config), sde)
    score_fn = factories.build_precond(config, sde, net)
    loss_fn = losses.get_loss_fn(sde, reduce="mean", eps=config.training.eps)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    g = torch.Generator().manual_seed(1)
    net.train()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.train_seconds:
        x, cond = data.train_batch(args.train_batch, g)
        cond = {k: cond[k] for k in ("low_res", "aug_level")}  # the labels are not conditioning here
        opt.zero_grad(set_to_none=True)
        loss_fn(score_fn, x, generator=g, cond=cond).backward()
        opt.step()
        steps += 1
    net.eval()
    held = torch.Generator().manual_seed(2)
    test = data.test[:args.heldout].float()
    total = 0.0
    with torch.no_grad():
        for lo in range(0, len(test), 64):
            x = test[lo:lo + 64]
            cond = data.condition(x, held)
            total += float(loss_fn(score_fn, x, generator=held, cond=cond)) * len(x)
    return {"variant": variant, "train_seconds": args.train_seconds, "steps": steps,
            "heldout_loss": round(total / len(test), 5), "heldout_images": len(test)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-seconds", type=float, default=0.0)
    p.add_argument("--quality", nargs="+", default=["plain", "resample_first", "efficient_all"], choices=list(VARIANTS))
    p.add_argument("--heldout", type=int, default=512)
    p.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", default="benchmarks/results/efficient_unet_cpu.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bench("plain", args)  # a first pass warms the allocator and the kernels; not reported
    rows = [bench(v, args) for v in VARIANTS]
    base = rows[0]
    for row in rows:
        for key in (f"train_step_b{args.train_batch}_s", f"forward_b{args.batch}_s"):
            row[key[:-2] + "_speedup"] = round(base[key] / row[key], 3)
        emit(row, args.out)
    if args.train_seconds > 0:
        for variant in args.quality:
            emit(quality(variant, args, args.data_root), args.out)
    emit({"summary": True, "args": vars(args), "machine": machine()}, args.out)


if __name__ == "__main__":
    main()
