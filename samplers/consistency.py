"""Consistency sampling (Song et al. 2023, Algorithm 1) and the one-step probability-flow solvers that
consistency distillation takes its teacher's step from.

A consistency model f(x_t, t) maps x_t to x at the grid's last time t_n = t_min (`models.ConsistencyFunction`,
whose score s gives f back as f = alpha_min E[x_0 | x_t], E[x_0 | x_t] = Tweedie's estimate from s).
On a grid T = t_0 > t_1 > ... > t_n, with one network call per time t_0 .. t_{n-1}:

    x <- f(x_T, T);   for i = 1 .. n-1:   x <- f(a_i x + b_i z, t_i),

where x_{t_i} = a_i x_{t_n} + b_i z is the SDE's exact forward transition from t_n to t_i (fresh z each
time). One step (n = 1, the grid [T, t_min]) is the one-step sampler. It needs a consistency model:
given an ordinary score it still runs, but each call returns the posterior mean E[x_0 | x_t] (times
alpha_min), not a draw, so its samples are too narrow.
"""
from __future__ import annotations

from typing import Optional

import torch
from tqdm.auto import trange

from sde_lib import SDE
from sde_lib.checks import check_one_of
from samplers.base import at, coeff, ignore, noise_like, sampler

Tensor = torch.Tensor
__all__ = ["consistency_loop", "consistency_sample", "ode_step", "ODE_STEPS"]
ODE_STEPS = ("euler", "heun", "ddim")


def consistency_loop(sde: SDE, score, x: Tensor, grid: Tensor, *,
                     generator: Optional[torch.Generator] = None, callback=ignore, progress: bool = False) -> Tensor:
    """Multistep consistency sampling from grid[0] to t_min = grid[n] (module docstring); nfe = n.
    `callback` receives {i, t (the time x was re-noised to, t_min after the last call), x, denoised (f)}."""
    n = len(grid) - 1
    t_min = at(grid, n, x)
    alpha_min = sde.marginal_coeffs(t_min)[0]
    for i in trange(n, disable=not progress, desc="consistency_sample"):
        t = at(grid, i, x)
        # f(x_t, t) = alpha_min E[x_0 | x_t], read back from the score.
        f = coeff(alpha_min, x) * sde.tweedie(x, t, score(x, t.to(x.dtype)))
        if i == n - 1:
            x = f
        else:  # the exact forward transition t_min -> t_{i+1} with fresh noise
            a, b = sde.transition_coeffs(at(grid, i + 1, x), t_min)
            x = torch.addcmul(coeff(a, x) * f, coeff(b, x), noise_like(x, generator))
        callback({"i": i, "t": grid[min(i + 1, n)], "x": x, "denoised": f})
    return x


consistency_sample = sampler("consistency", consistency_loop, default_grid="karras")


def ode_step(method: str, sde: SDE, score, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """One step of the probability-flow ODE from times t to s < t, per sample (t, s float64 [B]).

    In EDM's scale y = x / alpha at noise level nu = sigma / alpha the flow is dy/dnu = (y - D(y)) / nu:
      "euler": y_s = y_t + (nu_s - nu_t) d_t, d = (y - D) / nu (one score call);
      "heun":  Euler, then the trapezoid rule with the slope at s (two calls; EDM's Algorithm 1 step);
      "ddim":  the exponential integrator x_s = alpha_s D + sigma_s (x_t - alpha_t D) / sigma_t (one call),
               exact for a point mass and DPM-Solver-1.
    """
    check_one_of("method", method, ODE_STEPS)
    (alpha_t, sigma_t), (alpha_s, sigma_s) = sde.marginal_coeffs(t), sde.marginal_coeffs(s)
    d_t = sde.tweedie(x, t, score(x, t.to(x.dtype)))
    if method == "ddim":
        ratio = sigma_s / sigma_t
        return torch.addcmul(coeff(ratio, x) * x, coeff(alpha_s - ratio * alpha_t, x), d_t)
    nu_t, nu_s = sigma_t / alpha_t, sigma_s / alpha_s
    y = x / coeff(alpha_t, x)
    slope = (y - d_t) / coeff(nu_t, x)
    y_s = torch.addcmul(y, coeff(nu_s - nu_t, x), slope)
    if method == "heun":
        x_s = coeff(alpha_s, x) * y_s
        slope_s = (y_s - sde.tweedie(x_s, s, score(x_s, s.to(x.dtype)))) / coeff(nu_s, x)
        y_s = torch.addcmul(y, coeff(0.5 * (nu_s - nu_t), x), slope + slope_s)
    return coeff(alpha_s, x) * y_s
