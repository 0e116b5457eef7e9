"""The probability-flow ODE: sampling, and the flow map that `likelihood` encodes/decodes with.

    dx/dt = f(t) x - 1/2 g(t)^2 s(x, t)

shares its marginals p_t with the SDE, so integrating it from T to eps maps prior samples to
data, and from eps to T maps data to latents, deterministically. Solved with torchdiffeq.
"""
from __future__ import annotations

import importlib
from typing import Callable, Optional, Sequence, Tuple

import torch
from torchdiffeq import odeint

from sde_lib import SDE
from samplers.guards import GuardedScore, check_eps, check_finite, check_positive_int, make_generator
from samplers.base import register_sampler
from samplers.grids import get_grid
from samplers.pc import tweedie_denoise

Tensor = torch.Tensor
ADAPTIVE = ("dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun")


def chooses_own_steps(method: str) -> bool:
    """Whether an ODE method picks its own steps (adaptive ones and scipy's), so takes no grid."""
    return method in ADAPTIVE or method == "scipy_solver"


def ode_methods() -> list:
    """The solver names torchdiffeq accepts (`method=`)."""
    return sorted(importlib.import_module("torchdiffeq._impl.odeint").SOLVERS)


def solver_options(method: str, steps: Optional[int], t0: float, t1: float) -> dict:
    """torchdiffeq options: fixed-step methods take `steps` equal steps between t0 and t1."""
    if method not in ode_methods():
        raise ValueError(f"unknown ODE method {method!r}; torchdiffeq methods: {', '.join(ode_methods())}")
    if method == "scipy_solver":
        return {}
    if method in ADAPTIVE:
        # Adaptive steps may otherwise overshoot t1 and interpolate back, evaluating the score
        # outside (0, T] (negative variances for VP); a jump at t1 makes the last step land on it.
        return {"jump_t": torch.tensor([t1], dtype=torch.float64)}
    steps = check_positive_int(steps, "steps (required by fixed-step ODE methods)")
    return {"step_size": abs(t1 - t0) / steps}


def flow_drift(sde: SDE, score_fn, t_lo: float, t_hi: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The probability-flow drift as torchdiffeq's func(t, x), with scalar t broadcast to [B].

    t is clamped to [t_lo, t_hi]: torchdiffeq's initial step-size probe may look past the end
    of the interval, where the SDE need not be defined (VP has negative variances at t < 0).
    """
    rsde = sde.reverse(score_fn, probability_flow=True)

    def func(t: Tensor, x: Tensor) -> Tensor:
        return rsde.sde(x, t.clamp(t_lo, t_hi).expand(x.shape[0]))[0]

    return func


def solve_flow(sde: SDE, score_fn, x: Tensor, t0: float, t1: float, *, rtol: float = 1e-5,
               atol: float = 1e-5, method: str = "dopri5", steps: Optional[int] = None,
               grid: Optional[Tensor] = None, **cond) -> Tuple[Tensor, int]:
    """Integrate the probability-flow ODE from time t0 to t1 starting at x. Returns (x(t1), nfe).

    A fixed-step method takes `steps` equal steps, or the times of `grid` (from t0 to t1) when given.
    """
    score = score_fn if isinstance(score_fn, GuardedScore) and not cond else GuardedScore(score_fn, cond)
    if grid is not None and not chooses_own_steps(method):
        options, ts = {}, grid.to(device=x.device, dtype=x.dtype)
    else:
        options = solver_options(method, steps, t0, t1)
        ts = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
    with torch.no_grad():
        out = odeint(flow_drift(sde, score, min(t0, t1), max(t0, t1)), x, ts, rtol=rtol, atol=atol, method=method, options=options)[-1]
    check_finite(out, f"ODE solver {method!r}", f"the end, after {score.nfe} score calls", ts[-1])
    return out, score.nfe


@register_sampler("ode")
def ode_sample(sde: SDE, score_fn: Callable[..., Tensor], shape: Sequence[int], *,
               rtol: float = 1e-5, atol: float = 1e-5,  # tolerances of adaptive methods
               eps: Optional[float] = None,              # last time; default sde.sampling_eps
               method: str = "dopri5",                   # any torchdiffeq method (ode_methods())
               steps: Optional[int] = None,              # number of steps of a fixed-step method
               grid=None,                                # a fixed-step method's grid: a name or times
               denoise: bool = False,                    # final Tweedie step at eps (1 NFE)
               x_T: Optional[Tensor] = None,
               generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
               device=None, dtype=torch.float32, callback=None, progress: bool = False,
               **cond) -> Tuple[Tensor, int]:
    """Samples [shape] by integrating the probability-flow ODE from a prior draw at T to eps.

    Adaptive methods (dopri5, ...) choose their own steps; fixed-step ones (euler, rk4, ...) take
    `steps` steps on `grid` (default uniform in t). Returns (samples, nfe). Deterministic given the
    prior draw, so `seed` fixes the samples. `callback` receives {t, x} once, at the end.
    """
    eps = check_eps(sde, eps)
    times = None
    if grid is not None:
        if chooses_own_steps(method):
            raise ValueError(f"grid applies to fixed-step ODE methods; method={method!r} chooses its own steps")
        times = get_grid(grid, sde, check_positive_int(steps, "steps") if isinstance(grid, str) else 1, eps)
        eps = float(times[-1])
    elif method not in ADAPTIVE:
        solver_options(method, steps, sde.T, eps)  # checks steps before any score call
    score = GuardedScore(score_fn, cond)
    generator = make_generator(generator, seed, device)
    x = sde.prior_sampling(shape, generator, device, dtype) if x_T is None else x_T
    x, _ = solve_flow(sde, score, x, float(times[0]) if times is not None else sde.T, eps, rtol=rtol, atol=atol,
                      method=method, steps=steps, grid=times)
    if denoise:
        x = tweedie_denoise(sde, score, x, torch.full((x.shape[0],), eps, dtype=torch.float64, device=x.device))
    if callback is not None:
        callback({"i": 0, "t": torch.full((x.shape[0],), eps, dtype=torch.float64), "x": x, "x_mean": x})
    return x, score.nfe
