"""What every sampler shares: the registry behind `list_samplers()`, the set-up of a run (prior
draw, time grid, guarded score with its conditioning bound), and the model's x0 / eps estimates.

Every sampler has one signature,

    x, nfe = samplers.<name>_sample(sde, score_fn, shape, *, steps, grid=None, eps=None, x_T=None,
                                    seed=None, generator=None, device=None, dtype=torch.float32,
                                    callback=None, progress=False, **cond)

and starts with `start(...)`, which checks every argument before the first score call.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch

from sde_lib import SDE, append_dims
from samplers.grids import get_grid
from samplers.guards import GuardedScore, check_eps, check_finite, check_positive_int, make_generator
from score_toolkit.registry import Registry

Tensor = torch.Tensor
_SAMPLERS = Registry("sampler")


def register_sampler(name: str):
    """Function decorator: `@register_sampler("name")` lists a `<name>_sample` function in `list_samplers()`
    and runs it without autograd: a sampler called outside `torch.no_grad()` with a network would
    otherwise keep every step's graph alive (a score that needs gradients, such as classifier
    guidance, turns them on inside itself with `torch.enable_grad()`)."""
    def wrap(fn):
        @functools.wraps(fn)
        @torch.no_grad()
        def sampler(*args, callback: Optional[Callable[[dict], None]] = None, **kwargs):
            return fn(*args, callback=_with_scalar_time(callback), **kwargs)

        _SAMPLERS.register(name)(sampler)
        return sampler
    return wrap


def _with_scalar_time(callback):
    """A callback that sees the step's time as a python float: every sample of a run shares it.
    (Samples that run at their own times, as the adaptive solver's with norm="sample", keep [B].)"""
    if callback is None:
        return None

    def call(info: dict):
        t = info.get("t")
        if torch.is_tensor(t) and t.numel() and bool((t == t.reshape(-1)[0]).all()):
            info = {**info, "t": float(t.reshape(-1)[0])}
        return callback(info)

    return call


def list_samplers() -> list:
    return _SAMPLERS.names()


def get_sampler(name: str) -> Callable:
    """The sampling function registered under `name`; a ValueError lists the registered names otherwise."""
    return _SAMPLERS.get(name)


@dataclass
class Run:
    """The state a sampler starts from: x at grid[0] = T, the grid [n + 1] (float64, on x's device),
    the guarded score (call it as score(x, t) with t [B]), and the generator for fresh noise."""
    x: Tensor
    grid: Tensor
    score: GuardedScore
    generator: Optional[torch.Generator]

    def times(self, i: int) -> Tensor:
        """grid[i] as a float64 tensor [B], the shape every SDE method and score call takes."""
        return self.grid[i].expand(self.x.shape[0])

    def noise(self) -> Tensor:
        return torch.randn(self.x.shape, generator=self.generator, device=self.x.device, dtype=self.x.dtype)


def start(sde: SDE, score_fn, shape: Sequence[int], *, steps, grid, eps, x_T, seed, generator, device,
          dtype, cond: dict, default_grid: str = "uniform_t") -> Run:
    """Check the arguments and set up a run: prior draw (or x_T), grid, guarded score."""
    steps = check_positive_int(steps, "steps")
    eps = check_eps(sde, eps)
    score = GuardedScore(score_fn, cond)
    t = get_grid(grid, sde, steps, eps, default_grid)
    generator = make_generator(generator, seed, device)
    x = sde.prior_sampling(shape, generator, device, dtype) if x_T is None else x_T
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x.shape)}, but shape is {tuple(shape)}")
    return Run(x, t.to(x.device), score, generator)


def denoised(sde: SDE, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """E[x_0 | x_t] from the score s at (x, t) by Tweedie's formula (`SDE.tweedie`); t [B]."""
    return sde.tweedie(x, t, s)


def coeff(v: Tensor, x: Tensor) -> Tensor:
    """A per-sample float64 coefficient [B] in x's dtype, broadcastable against x."""
    return append_dims(v.to(x.dtype), x.ndim)


def check_order(order, allowed: Sequence[int], sampler: str) -> int:
    """`order` if it is one of `allowed` (a solver's orders), else a ValueError naming the sampler."""
    if isinstance(order, bool) or order not in allowed:
        raise ValueError(f"order must be one of {tuple(allowed)} for {sampler}, got {order!r}")
    return int(order)


def after_step(x: Tensor, where: str, i: int, t: Tensor, x0: Tensor, callback) -> None:
    """What every step ends with: a finiteness check naming the sampler and step, then the callback."""
    check_finite(x, where, i, t)
    if callback is not None:
        callback({"i": i, "t": t, "x": x, "x_mean": x, "denoised": x0})


def finish(run: "Run", sde: SDE, x: Tensor, denoise: bool) -> Tuple[Tensor, int]:
    """With denoise, Tweedie's E[x_0 | x] at the last time (one more call). Returns (x, nfe)."""
    if denoise:
        t = run.times(len(run.grid) - 1)
        run.score.step = len(run.grid) - 1
        x = denoised(sde, x, t, run.score(x, t.to(x.dtype)))
    return x, run.score.nfe


def noise_estimate(sde: SDE, t: Tensor, s: Tensor) -> Tensor:
    """E[z | x_t] = -sigma(t) s(x_t, t) for x_t = alpha x_0 + sigma z; t [B], s shaped like x."""
    return append_dims(-sde.marginal_coeffs(t)[1].to(s.dtype), s.ndim) * s
