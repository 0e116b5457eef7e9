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
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import builders  # noqa: E402

from models import ncsnpp  # noqa: E402  (registers "ncsnpp" and "ddpmpp")
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


def dsm_loss(net: torch.nn.Module, x: torch.Tensor, ve: bool) -> torch.Tensor:
    """VE: ||sigma s(x + sigma z, sigma) + z||^2, log sigma ~ U(log 0.01, log 50).
    VP (beta 0.1..20): ||eps(a x + s z, 999 t) - z||^2, t ~ U(1e-3, 1). Summed over pixels, batch mean."""
    z = torch.randn_like(x)
    u = torch.rand(x.shape[0])
    if ve:
        sigma = 0.01 * (50 / 0.01) ** u
        out = net(x + sigma[:, None, None, None] * z, sigma)
        return ((sigma[:, None, None, None] * out + z) ** 2).flatten(1).sum(1).mean()
    t = 1e-3 + (1 - 1e-3) * u
    a = torch.exp(-0.25 * t ** 2 * (20 - 0.1) - 0.5 * t * 0.1)[:, None, None, None]
    out = net(a * x + torch.sqrt(1 - a ** 2) * z, 999 * t)
    return ((out - z) ** 2).flatten(1).sum(1).mean()


def median_time(fn, repeats: int, warmup: int) -> tuple:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
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

    def train_step():
        opt.zero_grad(set_to_none=True)
        dsm_loss(net, x_train, ve=name.endswith("_ve")).backward()
        opt.step()

    def forward(batch: int):
        x = torch.rand(batch, *shape)
        cond = torch.full((batch,), 1.0) if name.endswith("_ve") else torch.full((batch,), 500.0)
        with torch.no_grad():
            net(x, cond)

    net.train()
    train_med, train_all = median_time(train_step, repeats, warmup)
    net.eval()
    fwd64, _ = median_time(lambda: forward(64), repeats, warmup)
    fwd256, fwd256_all = median_time(lambda: forward(256), repeats, warmup)
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
                        help="leave glibc's allocator as it is (main.py tunes it: builders.keep_freed_memory)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc_tuned = False if args.default_malloc else builders.keep_freed_memory()
    report = {"malloc_tuned": malloc_tuned, "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
              "machine": platform.machine(), "platform": platform.platform(), "processor": platform.processor(),
              "cpu_count": os.cpu_count(), "repeats": args.repeats, "channels_last": args.channels_last,
              "results": {name: bench_config(name, args.repeats, args.warmup, args.channels_last)
                          for name in args.configs}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
