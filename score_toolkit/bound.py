"""What evaluation and sampling need of the discrete chain: its variational bound on test images
(`heldout_bound`), and Analytic-DPM's Gamma of a checkpoint on a grid (`gamma_for`), estimated once and
kept beside the results it serves, written atomically with the settings it depends on."""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Dict, Optional

import torch

from score_toolkit import checkpoints
from score_toolkit import distributed
from score_toolkit import factories
import likelihood
import samplers

Tensor = torch.Tensor


def uses_gamma(config) -> bool:
    """Whether sampling or the bound needs Gamma (and so the training data it is estimated on)."""
    s, e = config.sampling, config.eval
    return (s.method == "ancestral" and s.variance == "analytic") or (e.enable_bound and e.bound_variance == "analytic")


def sampler_times(config, sde, grid: Optional[Tensor] = None) -> Tensor:
    """The start of every step of the configured ancestral run's grid (`grid`, or the one its settings give)."""
    if grid is None:
        kwargs = factories.sampler_kwargs(config)
        grid, _ = samplers.sampler_info("ancestral").times(sde, kwargs["steps"], kwargs["grid"], config.sampling.eps, {})
    return grid[:-1]


def snapshot_gamma(config, sde, model, data, device) -> Optional[Tensor]:
    """Gamma for a training snapshot's ancestral run with analytic variances (estimated, not kept: the
    weights change between snapshots), else None."""
    s = config.sampling
    if s.method != "ancestral" or s.variance != "analytic":
        return None
    return torch.tensor(estimate_on_data(config, sde, model, data, sampler_times(config, sde), device),
                        dtype=torch.float64)


def sampler_gamma(config, sde, model, data, grid: Optional[Tensor], folder: str, device) -> Tensor:
    """Gamma for the configured ancestral run (`sampler_times`), kept in <folder>/gamma.json (`gamma_for`)."""
    return gamma_for(config, sde, model, data, sampler_times(config, sde, grid), os.path.join(folder, "gamma.json"),
                     device)


def gamma_for(config, sde, model, data, times: Tensor, path: str, device) -> Tensor:
    """Gamma(t) = E||eps_hat(x_t, t)||^2 / d at `times` [m] (float64) for the unguided network `model`,
    on the first sampling.gamma_images training items (noise from seed config.seed + 11 on the CPU,
    `samplers.estimate_gamma`). Rank 0 estimates it once and keeps it in `path` (JSON: the values and
    the settings they depend on), read back while the settings match; every rank gets rank 0's values.
    The folder of `path` names the checkpoint step."""
    settings = {"times": [float(t) for t in times], "items": config.sampling.gamma_images, "seed": config.seed,
                "sde": config.sde.to_dict(), "batch_size": config.eval.batch_size}
    values = None
    if distributed.is_main():
        values = _read(path, settings)
        if values is None:
            values = estimate_on_data(config, sde, model, data, times, device)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            checkpoints.atomic_write_text(path, json.dumps({"settings": settings, "gamma": values}, indent=1))
    return torch.tensor(distributed.gather_dict({"gamma": values} if distributed.is_main() else {})["gamma"],
                        dtype=torch.float64)


def estimate_on_data(config, sde, model, data, times: Tensor, device) -> list:
    """Gamma at `times` on the first sampling.gamma_images training items (`gamma_for`, which keeps it)."""
    t0 = time.perf_counter()
    score = factories.build_precond(config, sde, model)
    x0 = training_data(data, config.sampling.gamma_images).to(device)
    n = len(x0)
    labels = data.train_labels
    cond = score.select({} if labels is None else {"y": labels[:n].to(device)})
    gamma = samplers.estimate_gamma(sde, score, x0, times, batch_size=config.eval.batch_size,
                                    generator=torch.Generator().manual_seed(config.seed + 11), cond=cond)
    logging.info("estimated Analytic-DPM's Gamma at %d times on %d training items in %.0f s",
                 len(times), n, time.perf_counter() - t0)
    return gamma.tolist()


def training_data(data, n: int) -> Tensor:
    """The first n items of the training split (all, if it has fewer) in model space: images scaled from
    their uint8 levels, or the points."""
    if data.kind == "images":
        return data.scaler(data.train_uint8[:n].float() / 255.0)
    return data.train[:n]


def _read(path: str, settings: dict) -> Optional[list]:
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            kept = json.load(f)
    except (OSError, ValueError) as e:  # this toolkit's own file, cut short: estimate it again
        logging.warning("%s is unreadable (%s); estimating Gamma again", path, e)
        return None
    if kept.get("settings") == settings:
        return kept["gamma"]
    logging.info("%s was estimated with other settings; estimating Gamma again", path)
    return None


def bound_grid(config, sde) -> Tensor:
    """The bound's grid: eval.bound_steps steps of the SDE's chain (0: all of them)."""
    return factories.chain_grid(sde, config.eval.bound_steps)


def heldout_bound(config, sde, model, data, out_dir: str, ckpt_step: int, batch_log) -> Dict[str, float]:
    """The variational bound of the discrete chain (`likelihood.vlb_bits_per_dim`) on the first eval.n_bound
    test images, with eval.bound_variance on `bound_grid`: an upper bound on the discrete model's NLL, named
    so (`vlb_bits_per_dim_upper_bound`), with its prior, step and decoder parts. Batch b (noise seed
    config.seed + 1000 + b) is computed by rank b % world and logged, so a killed evaluation resumes;
    `batch_log(path, step, settings)` is evaluation's BatchLog."""
    e, device = config.eval, _device(model)
    score = factories.build_precond(config, sde, model)
    grid = bound_grid(config, sde)
    gamma = None
    if e.bound_variance == "analytic":
        gamma = gamma_for(config, sde, model, data, grid, os.path.join(out_dir, f"gamma_bound_ckpt{ckpt_step}.json"),
                          device)
    n_total = min(e.n_bound, len(data.test_uint8))
    settings = json.dumps({"seed": config.seed, "n_bound": e.n_bound, "batch_size": e.batch_size,
                           "steps": e.bound_steps, "variance": e.bound_variance}, sort_keys=True)
    log = batch_log(os.path.join(out_dir, "bound_batches.jsonl"), ckpt_step, settings)
    starts = range(0, n_total, e.batch_size)
    mine = distributed.my_batches(len(starts))
    labels = data.test_labels
    for b in mine:
        if b in log.done:
            continue
        i, stop = starts[b], min(starts[b] + e.batch_size, n_total)
        k = data.test_uint8[i:stop].to(device)
        cond = score.select({} if labels is None else {"y": labels[i:stop].to(device)})
        with torch.no_grad():
            bpd, terms = likelihood.vlb_bits_per_dim(sde, score, k, grid, variance=e.bound_variance, gamma=gamma,
                                                     data_range=factories.data_range(config), n_bins=256,
                                                     centered=config.data.centered, seed=config.seed + 1000 + b,
                                                     cond=cond)
        log.add({"batch": b, "n": stop - i, "bpd_sum": float(bpd.sum()),
                 **{f"{part}_sum": float(terms[part].sum()) for part in ("prior", "steps", "decoder")}})
    done = distributed.gather_dict({b: log.done[b] for b in mine})
    recs = [done[b] for b in range(len(starts))]
    n, bits = sum(r["n"] for r in recs), math.log(2) * math.prod(data.sample_shape(1)[1:])
    name = f"vlb_bits_per_dim_upper_bound ({e.bound_variance}, {len(grid) - 1} steps)"
    return {name: sum(r["bpd_sum"] for r in recs) / n,
            **{f"vlb_{part}_bits_per_dim": sum(r[f"{part}_sum"] for r in recs) / n / bits
               for part in ("prior", "steps", "decoder")}}


def _device(model) -> torch.device:
    return next(model.parameters()).device
