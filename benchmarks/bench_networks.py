"""Time the image score networks on this machine and print the figures as JSON.

For the small NCSN++ (VE) and DDPM++ (VP) configurations (batch of 1x32x32 images, nf=32,
ch_mult (1, 2, 2), 2 res blocks, attention at 16, dropout 0.1) it reports the median over
`--repeats` of one training step at batch 64 (denoising score matching loss, backward, Adam)
and of one forward pass at batch 256 (and at batch 64, the size the reference was timed at).

    python benchmarks/bench_networks.py --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from score_toolkit import runtime  # noqa: E402

from score_toolkit import losses  # noqa: E402
import models  # noqa: E402
import sde_lib  # noqa: E402
from benchmarks._common import timings  # noqa: E402
from models.registry import get_model  # noqa: E402

SMALL = dict(nf=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
             num_channels=1, image_size=32)
CONFIGS = {
    # VE: Fourier features of log sigma, FIR resampling, BigGAN blocks, residual input pyramid.
    "ncsnpp_ve": ("ncsnpp", SMALL),
    # VP: sinusoidal embedding of 999 t, no FIR, BigGAN blocks, no pyramids.
    "ddpmpp_vp": ("ddpmpp", SMALL),
}
# score_sde_pytorch on this CPU (2 threads, quiet machine), same configurations.
REFERENCE_S = {"ncsnpp_ve": {"train_step_b64": 3.54, "forward_b64": (0.73, 0.93)},
               "ddpmpp_vp": {"train_step_b64": 1.49, "forward_b64": (0.55, 0.60)}}


SDES = {"ncsnpp_ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0), "ddpmpp_vp": sde_lib.VPSDE(beta_min=0.1, beta_max=20.0)}


def median_and_all(fn, repeats: int, warmup: int) -> tuple:
    times = timings(fn, repeats, warmup)
    return statistics.median(times), times


def bench_config(name: str, repeats: int, warmup: int, channels_last: bool = False) -> dict:
    model_name, kwargs = CONFIGS[name]
    torch.manual_seed(0)
    net = get_model(model_name)(**kwargs)
    if channels_last:  # conv weights in NHWC: the convolutions then run in NHWC, faster on CPU
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    shape = (kwargs["num_channels"], kwargs["image_size"], kwargs["image_size"])
    x_train = torch.rand(64, *shape)

    sde = SDES[name]
    # The continuous DSM loss, summed over pixels: VE scores from sigma, VP noise from 999 t.
    loss_fn = losses.get_loss_fn(sde, reduce="sum", eps=1e-5 if name.endswith("_ve") else 1e-3)
    score_fn = models.get_score_fn(sde, net)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss_fn(score_fn, x_train).backward()
        opt.step()

    def forward(batch: int):
        x = torch.rand(batch, *shape)
        cond = torch.full((batch,), 1.0) if name.endswith("_ve") else torch.full((batch,), 500.0)
        with torch.no_grad():
            net(x, cond)

    net.train()
    train_med, train_all = median_and_all(train_step, repeats, warmup)
    net.eval()
    fwd64, _ = median_and_all(lambda: forward(64), repeats, warmup)
    fwd256, fwd256_all = median_and_all(lambda: forward(256), repeats, warmup)
    return {"model": model_name, "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
            "params": sum(p.numel() for p in net.parameters()),
            "train_step_b64_s": round(train_med, 4), "train_step_b64_all_s": [round(t, 4) for t in train_all],
            "forward_b64_s": round(fwd64, 4),
            "forward_b256_s": round(fwd256, 4), "forward_b256_all_s": [round(t, 4) for t in fwd256_all],
            "reference_s": REFERENCE_S[name]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--channels-last", action="store_true", help="convert the conv weights to channels_last")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's allocator as it is (main.py tunes it: runtime.keep_freed_memory)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc_tuned = False if args.default_malloc else runtime.keep_freed_memory()
    report = {"malloc_tuned": malloc_tuned, "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
              "machine": platform.machine(), "platform": platform.platform(), "processor": platform.processor(),
              "cpu_count": os.cpu_count(), "repeats": args.repeats, "channels_last": args.channels_last,
              "results": {name: bench_config(name, args.repeats, args.warmup, args.channels_last)
                          for name in args.configs}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
