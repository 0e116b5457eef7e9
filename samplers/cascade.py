"""Cascaded sampling (Ho et al. 2021): a base model draws low-resolution samples, and each super-
resolution stage draws a higher resolution conditioned on the stage before, with noise-conditioning
augmentation of that low-resolution input at a level s in [0, 1] (the time s T of the stage's SDE).

A super-resolution model is a score_fn(x, t, low_res=z, aug_level=s) trained on z = alpha(s T) y +
sigma(s T) e, the SDE's own forward marginal of the true low-resolution y. At sampling the stage before
provides z in one of two ways:

  non-truncated   the stage before runs to its end (eps, its final denoising), and its sample x is
                  corrupted by the forward marginal: z = alpha(s T) x + sigma(s T) e, fresh e;
  truncated       the stage before stops at time s T and passes its own x_{sT} on, which is already a
                  draw of that marginal when the stage before is exact (Ho et al.'s truncated
                  conditioning augmentation; the two stages must then share one SDE).

With exact models both give the joint distribution of the data; with an inexact base model a larger s
forgets more of the base's errors, at the price of what the low-resolution image tells the next stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import torch

from sde_lib import SDE
from sde_lib.checks import check_cond
from samplers.base import get_sampler, probe
from samplers.guards import check_device, make_generator

Tensor = torch.Tensor
__all__ = ["Stage", "cascade_sample", "noise_to_level"]


@dataclass
class Stage:
    """One stage of a cascade: a model, its sampler and budget, and (past the first stage) how its
    low-resolution input is augmented.

    sde, score_fn    the stage's SDE and score (a super-resolution score takes low_res= and aug_level=)
    shape            one sample's shape, [C, H, W] for images (or [d] for points)
    sampler, steps   a name in samplers.list_samplers() and its steps; `options` its own (eta=, grid=, eps=, ...)
    aug_level        s in [0, 1]: the augmentation level of this stage's low-resolution input
    truncated        take the stage before stopped at s T (True) or run to its end and corrupted (False)
    cond             further conditioning of this stage ({name: tensor [n, ...]}, e.g. class labels)
    """
    sde: SDE
    score_fn: Callable[..., Tensor]
    shape: Sequence[int]
    sampler: str = "ddim"
    steps: Optional[int] = None
    options: dict = field(default_factory=dict)
    aug_level: float = 0.0
    truncated: bool = False
    cond: Optional[Mapping[str, Tensor]] = None


def cascade_sample(stages: Sequence[Stage], n: int, *, seed: Optional[int] = None,
                   generator: Optional[torch.Generator] = None, device=None, dtype=torch.float32,
                   progress: bool = False) -> Tuple[List[Tensor], List[dict]]:
    """n samples of every stage of the cascade (module docstring), each stage's checks made before the
    first network call of any. Returns (samples, info): samples[i] [n, *stages[i].shape] is stage i's
    output (the stage before a truncated one ends at time s T, its x_{sT}); info[i] holds the stage's
    network calls ("nfe"), and past the first stage its "aug_level", "truncated" and the low-resolution
    input it was given ("low_res")."""
    stages = _check(stages, n)
    device = check_device(device)
    g = make_generator(generator, seed, device)
    samples, info = [], []
    for i, stage in enumerate(stages):
        cond = dict(stage.cond or {})
        record = {}
        if i:
            z = _low_res(stage, samples[-1], g)
            cond.update(low_res=z, aug_level=torch.full((n,), float(stage.aug_level), dtype=z.dtype, device=z.device))
            record = {"aug_level": stage.aug_level, "truncated": stage.truncated, "low_res": z}
        x, nfe = get_sampler(stage.sampler)(stage.sde, stage.score_fn, (n, *stage.shape), **_run_args(stages, i),
                                            generator=g, device=device, dtype=dtype, cond=cond, progress=progress)
        samples.append(x)
        info.append({"nfe": nfe, **record})
    return samples, info


def _run_args(stages: Sequence[Stage], i: int) -> dict:
    """The sampler arguments of stage i: its steps and options, and, when the next stage is truncated at
    s > 0, a grid that ends at s T with no final denoising."""
    stage, args = stages[i], {"steps": stages[i].steps, **stages[i].options}
    after = stages[i + 1] if i + 1 < len(stages) else None
    if after is not None and after.truncated and after.aug_level > 0:
        args.update(eps=after.aug_level * stage.sde.T, denoise=False)
    return args


def noise_to_level(sde: SDE, y: Tensor, level, generator=None) -> Tensor:
    """The forward marginal at level s: z = alpha(s T) y + sigma(s T) e for y [B, ...], levels s [B] (or
    one number), fresh e from `generator`. The noise-conditioning augmentation of a low-resolution input,
    in training and at sampling."""
    s = torch.as_tensor(level, dtype=torch.float64, device=y.device).reshape(-1).expand(y.shape[0])
    alpha, sigma = (v.to(y.dtype).reshape(-1, *[1] * (y.ndim - 1)) for v in sde.marginal_coeffs(s * sde.T))
    e = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
    return alpha * y + sigma * e


def _low_res(stage: Stage, x: Tensor, g) -> Tensor:
    """The low-resolution input of `stage` from the stage before's output x: x itself when truncated
    (already at s T), else the forward marginal at s T applied to x."""
    if stage.truncated or stage.aug_level == 0 and _noiseless_at_zero(stage.sde):
        return x
    return noise_to_level(stage.sde, x, stage.aug_level, g)


def _noiseless_at_zero(sde: SDE) -> bool:
    alpha, sigma = sde.marginal_coeffs(torch.zeros(1, dtype=torch.float64))
    return float(alpha) == 1.0 and float(sigma) == 0.0


def _check(stages: Sequence[Stage], n: int) -> List[Stage]:
    """Every stage's arguments, the chaining of their shapes, truncation's shared SDE, and each sampler's
    own checks (`samplers.probe`, no network call)."""
    stages = list(stages)
    if not stages or not all(isinstance(s, Stage) for s in stages):
        raise TypeError("stages must be a non-empty sequence of samplers.cascade.Stage")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    for i, stage in enumerate(stages):
        level = stage.aug_level
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 <= level <= 1:
            raise ValueError(f"stage {i}: aug_level must be a number in [0, 1] (a fraction of the SDE's T), got {level!r}")
        if i and stage.truncated and not _same_sde(stage.sde, stages[i - 1].sde):
            raise ValueError(f"stage {i} is truncated, which passes stage {i - 1}'s x at time s T on as a draw of "
                             f"stage {i}'s forward marginal: the two stages need the same SDE, got "
                             f"{type(stages[i - 1].sde).__name__} and {type(stage.sde).__name__} with other coefficients")
        if i:
            _check_chain(i, stages[i - 1].shape, stage.shape)
    for i, stage in enumerate(stages):
        cond = dict(stage.cond or {})
        if i:
            low = torch.zeros(n, *stages[i - 1].shape)
            cond.update(low_res=low, aug_level=torch.zeros(n))
        try:
            check_cond(stage.score_fn, cond, n)
            probe(get_sampler(stage.sampler), stage.sde, (n, *stage.shape), **_run_args(stages, i), cond=cond)
        except (ValueError, TypeError) as e:
            raise type(e)(f"stage {i} ({stage.sampler}): {e}") from e
    return stages


def _check_chain(i: int, low: Sequence[int], high: Sequence[int]) -> None:
    """Stage i's images [C, H, W] must have the channels of stage i - 1's and a size its size divides."""
    low, high = tuple(low), tuple(high)
    if len(low) != len(high):
        raise ValueError(f"stage {i}'s shape {high} and stage {i - 1}'s {low} do not chain: not the same kind of data")
    if len(high) == 3 and (low[0] != high[0] or high[1] % low[1] or high[2] % low[2] or high[1] < low[1]):
        raise ValueError(f"stage {i}'s images {high} do not chain onto stage {i - 1}'s {low}: they need the same "
                         "channels and a size that the lower one divides")


def _same_sde(a: SDE, b: SDE) -> bool:
    if type(a) is not type(b) or a.T != b.T:
        return False
    t = torch.linspace(0, a.T, 17, dtype=torch.float64)
    return all(torch.allclose(u, v, rtol=1e-12, atol=0) for u, v in zip(a.marginal_coeffs(t), b.marginal_coeffs(t)))
