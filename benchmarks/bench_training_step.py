"""Time one training step (loss, backward, Adam, EMA) of the toolkit for each speed setting and print JSON.

The step is `training.train_step` on a `training.TrainState` built from the config, as `train` runs it,
on random images: by default DDPM++ (VP) at the paper's CIFAR-10 width (nf=128, ch_mult (1, 2, 2, 2),
4 residual blocks, attention at 16), batch 128 of 3x32x32. Each setting changes one option of the
baseline (fp32, contiguous, default Adam, not compiled), and "all" combines the fast ones. Reported:
the median and every time over `--repeats` (after warm-up steps), the device, torch's version, and
on CUDA the peak memory allocated. With `--reference PATH` (a score_sde_pytorch checkout) it also
times that repository's step (its losses.get_step_fn on its NCSN++ network with the DDPM++ settings).

    python benchmarks/bench_training_step.py                 # paper width, every setting
    python benchmarks/bench_training_step.py --quick         # tiny width, 2 repeats: a smoke test on the CPU
    python benchmarks/bench_training_step.py --reference ../score_sde_pytorch --out results/step.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks._common import machine, timings  # noqa: E402
from configs.image_defaults import get_image_config  # noqa: E402
from score_toolkit import config_keys  # noqa: E402
from score_toolkit import errors  # noqa: E402
from score_toolkit import factories  # noqa: E402
from score_toolkit import runtime  # noqa: E402
from score_toolkit import training  # noqa: E402
from score_toolkit import validation  # noqa: E402

BASELINE = {"training.precision": "fp32", "training.channels_last": False, "optim.impl": "default", "compile": False}
SETTINGS = {  # name: the keys that differ from BASELINE
    "fp32": {},
    "tf32": {"training.precision": "tf32"},
    "bf16": {"training.precision": "bf16"},
    "fp16": {"training.precision": "fp16"},
    "channels_last": {"training.channels_last": True},
    "adam_foreach": {"optim.impl": "foreach"},
    "adam_fused": {"optim.impl": "fused"},
    "compile": {"compile": True},
    "all": {"training.precision": "bf16", "training.channels_last": True, "optim.impl": "fused", "compile": True},
}
TINY = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,))


def bench_config(args):
    config = get_image_config("cifar10", "vpsde", "ddpmpp", "paper")
    config.device = args.device
    config.training.batch_size = args.batch_size
    if args.quick:
        config.model.update(TINY)
    return config


def with_keys(config, keys: dict):
    """A copy of config with the dotted keys set."""
    return config_keys.set_keys(config.copy_and_resolve_references(), **keys)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device: torch.device, repeats: int, warmup: int) -> dict:
    """Median and all wall times of step() (synchronized on CUDA), with CUDA's peak memory."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    def timed():
        step()
        synchronize(device)

    times = timings(timed, repeats, warmup)
    out = {"median_s": statistics.median(times), "times_s": [round(t, 5) for t in times]}
    if device.type == "cuda":
        out["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return out


def bench_toolkit(config, repeats: int, warmup: int) -> dict:
    """One training step of the toolkit at `config`: training.train_step, as `train` calls it."""
    net = validation.validate_config(config)
    state = training.TrainState(config, net)
    sde = factories.build_sde(config)
    loss_fn, model = factories.build_loss(config, sde), training.training_model(config, sde, state)
    d = config.data
    x = torch.randn(config.training.batch_size, d.num_channels, d.image_size, d.image_size,
                    generator=torch.Generator().manual_seed(0)).to(state.device)
    if config.training.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    state.model.train()
    result = time_steps(lambda: training.train_step(state, loss_fn, model, x, config), state.device, repeats,
                        warmup + (2 if config.compile else 0))  # compilation happens in the first calls
    return result


@contextlib.contextmanager
def reference_modules(path: str):
    """Import score_sde_pytorch's top-level modules (models, losses, sde_lib, configs, op) from `path`,
    whose names clash with this project's; this project's modules are put back afterwards."""
    names = ("models", "losses", "sde_lib", "configs", "op", "utils")
    clash = lambda name: name.split(".")[0] in names  # noqa: E731
    ours = {k: v for k, v in sys.modules.items() if clash(k)}
    for k in ours:
        del sys.modules[k]
    sys.path.insert(0, os.path.abspath(path))
    try:
        yield
    finally:
        sys.path.remove(os.path.abspath(path))
        for k in [k for k in sys.modules if clash(k)]:
            del sys.modules[k]
        sys.modules.update(ours)


def bench_reference(path: str, config, repeats: int, warmup: int) -> dict:
    """score_sde_pytorch's training step (losses.get_step_fn: loss, backward, its optimize_fn with
    warm-up and clipping, EMA) for its cifar10_ddpmpp_continuous config at our width and batch."""
    device = runtime.get_device(config)
    with reference_modules(path):
        import importlib
        ref_config = importlib.import_module("configs.vp.cifar10_ddpmpp_continuous").get_config()
        mutils, losses = importlib.import_module("models.utils"), importlib.import_module("losses")
        importlib.import_module("models.ncsnpp")  # registers the network
        ema_lib, sde_lib = importlib.import_module("models.ema"), importlib.import_module("sde_lib")
        m = config.model
        ref_config.model.nf, ref_config.model.ch_mult = m.nf, tuple(m.ch_mult)
        ref_config.model.num_res_blocks, ref_config.model.attn_resolutions = m.num_res_blocks, tuple(m.attn_resolutions)
        ref_config.training.batch_size, ref_config.device = config.training.batch_size, device
        torch.manual_seed(0)
        net = mutils.create_model(ref_config)
        optimizer = losses.get_optimizer(ref_config, net.parameters())
        state = dict(optimizer=optimizer, model=net, step=0,
                     ema=ema_lib.ExponentialMovingAverage(net.parameters(), decay=ref_config.model.ema_rate))
        sde = sde_lib.VPSDE(beta_min=ref_config.model.beta_min, beta_max=ref_config.model.beta_max,
                            N=ref_config.model.num_scales)
        step_fn = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(ref_config),
                                     reduce_mean=ref_config.training.reduce_mean, continuous=True,
                                     likelihood_weighting=ref_config.training.likelihood_weighting)
        d = config.data
        x = torch.randn(config.training.batch_size, d.num_channels, d.image_size, d.image_size,
                        generator=torch.Generator().manual_seed(0)).to(device)
        return time_steps(lambda: step_fn(state, x), device, repeats, warmup)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny width (nf=16, ch_mult (1, 2), 1 block), batch 8, 2 repeats")
    p.add_argument("--device", default="auto", help='"auto", "cpu" or "cuda[:i]"')
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (8 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per setting (default 10; 2 with --quick)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile adds 2)")
    p.add_argument("--settings", default=None,
                   help=f"comma-separated subset of {list(SETTINGS)} (default: all; on the CPU all but the "
                        "compiled ones, which take minutes to compile there)")
    p.add_argument("--reference", default=None, help="a score_sde_pytorch checkout: time its step too")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    args = p.parse_args(argv)
    args.batch_size = args.batch_size or (8 if args.quick else 128)
    args.repeats = args.repeats or (2 if args.quick else 10)
    config = bench_config(args)
    device = runtime.get_device(config)
    names = args.settings.split(",") if args.settings else [
        n for n in SETTINGS if device.type == "cuda" or not SETTINGS[n].get("compile")]
    m = config.model
    report = {"machine": machine(), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "config": {"network": m.name, "sde": config.sde.name, "nf": m.nf, "ch_mult": list(m.ch_mult),
                         "num_res_blocks": m.num_res_blocks, "attn_resolutions": list(m.attn_resolutions),
                         "batch_size": args.batch_size, "image": [m.num_channels, m.image_size, m.image_size],
                         "repeats": args.repeats, "warmup": args.warmup, "baseline": BASELINE},
              "settings": {}}
    if device.type != "cuda":
        report["note"] = "tf32 is fp32 on the CPU (it only changes CUDA matmuls and convolutions)"
    for name in names:
        keys = SETTINGS[name]
        try:
            result = bench_toolkit(with_keys(config, {**BASELINE, **keys}), args.repeats, args.warmup)
        except errors.ConfigError as e:  # the device cannot run this setting
            result = {"refused": str(e)}
        report["settings"][name] = {"keys": keys, **result}
    base = report["settings"].get("fp32", {}).get("median_s")
    for r in report["settings"].values():
        if base and "median_s" in r:
            r["speedup_vs_fp32"] = round(base / r["median_s"], 3)
    if args.reference:
        try:
            report["reference"] = bench_reference(args.reference, config, args.repeats, args.warmup)
        except Exception as e:  # e.g. its `op` package compiles CUDA kernels when imported
            report["reference"] = {"error": f"{type(e).__name__}: {e}"}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
