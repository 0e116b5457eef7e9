"""The probability-flow ODE: sampling, and the flow map that `likelihood` encodes/decodes with.

    dx/dt = f(t) x - 1/2 g(t)^2 s(x, t)

shares its marginals p_t with the SDE, so integrating it from T to eps maps prior samples to
data, and from eps to T maps data to latents, deterministically. Solved with torchdiffeq.
"""
from __future__ import annotations

import importlib
from typing import Callable, Mapping, Optional, Tuple

import torch
from torchdiffeq import odeint

from sde_lib import SDE
from sde_lib.checks import check_cond, check_positive_int
from samplers.base import ignore, sampler
from samplers.guards import GuardedScore, check_finite, check_float_dtype

Tensor = torch.Tensor
__all__ = ["ode_loop", "ode_sample", "solve_flow", "ode_methods", "chooses_own_steps"]
ADAPTIVE = ("dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun")


def chooses_own_steps(method: str) -> bool:
    """Whether an ODE method picks its own steps (adaptive ones and scipy's), so takes no grid."""
    return method in ADAPTIVE or method == "scipy_solver"


def ode_methods() -> list:
    """The solver names torchdiffeq accepts (`method=`)."""
    return sorted(importlib.import_module("torchdiffeq._impl.odeint").SOLVERS)


def check_method(method: str) -> str:
    """`method` if torchdiffeq has it, else a ValueError listing its methods."""
    if method not in ode_methods():
        raise ValueError(f"unknown ODE method {method!r}; torchdiffeq methods: {', '.join(ode_methods())}")
    return method


def solver_options(method: str, steps: Optional[int], t0: float, t1: float) -> dict:
    """torchdiffeq options: fixed-step methods take `steps` equal steps between t0 and t1."""
    if check_method(method) == "scipy_solver":
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
               grid: Optional[Tensor] = None, cond: Optional[Mapping[str, Tensor]] = None) -> Tuple[Tensor, int]:
    """Integrate the probability-flow ODE from time t0 to t1 starting at x [B, ...]. Returns (x(t1), nfe).

    A fixed-step method takes `steps` equal steps, or the times of `grid` (from t0 to t1) when given;
    `cond` goes to every score call. score_fn may be a `GuardedScore` (its conditioning bound).
    """
    check_float_dtype(x.dtype, "the probability-flow ODE")
    if isinstance(score_fn, GuardedScore):  # a run's guarded score, its conditioning bound and its calls counted
        if cond is not None and (not isinstance(cond, Mapping) or len(cond)):
            raise TypeError("solve_flow got cond and a GuardedScore, whose conditioning is bound already; pass "
                            "the score function itself with cond")
        score = score_fn
    else:
        score = GuardedScore(score_fn, check_cond(score_fn, cond, len(x)))
    if len(x) == 0:
        return x, 0
    if grid is not None and not chooses_own_steps(method):
        options, ts = {}, grid.to(device=x.device, dtype=x.dtype)
    else:
        options = solver_options(method, steps, t0, t1)
        ts = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
    with torch.no_grad():
        drift = flow_drift(sde, score, min(t0, t1), max(t0, t1))
        out = odeint(drift, x, ts, rtol=rtol, atol=atol, method=method, options=options)[-1]
    check_finite(out, f"ODE solver {method!r}", f"the end, after {score.nfe} score calls", ts[-1])
    return out, score.nfe


def ode_loop(sde: SDE, score, x: Tensor, grid: Tensor, *,
             method: str = "dopri5",                   # any torchdiffeq method (ode_methods())
             rtol: float = 1e-5, atol: float = 1e-5,   # tolerances of adaptive methods
             callback=ignore) -> Tensor:
    """The probability-flow ODE from grid[0] to grid[n]: adaptive methods (dopri5, ...) choose their own
    steps between the ends (`ode_sample` then takes no steps or grid); fixed-step ones (euler, rk4, ...)
    step along the grid (`ode_sample`: `steps` steps, default grid uniform in t). Deterministic given
    x_T. `callback` receives {i: 0, t, x} once, at the end.
    """
    t0, t1 = float(grid[0]), float(grid[-1])
    x, _ = solve_flow(sde, score, x, t0, t1, rtol=rtol, atol=atol, method=method, grid=grid)
    callback({"i": 0, "t": grid[-1].expand(x.shape[0]), "x": x})
    return x


def _chooses_own_steps(options: dict) -> bool:
    return chooses_own_steps(check_method(options.get("method", "dopri5")))


ode_sample = sampler("ode", ode_loop, own_steps=_chooses_own_steps)
