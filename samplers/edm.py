"""EDM's Heun sampler (Karras et al. 2022, Algorithm 2), deterministic or stochastic, on any linear SDE.

For x_t = alpha(t) x_0 + sigma(t) z, the scaled variable y = x / alpha(t) is x_0 plus noise of
standard deviation nu(t) = sigma(t) / alpha(t) = e^-lambda(t), the noise level EDM calls sigma (the
VE sigma itself for VE). In (nu, y) the probability-flow ODE of every linear SDE is EDM's

    dy / dnu = (y - D(y; nu)) / nu,   D = E[x_0 | x_t] (Tweedie) at x_t = alpha y, t = t(nu),

with t(nu) = sde.t_from_log_snr(-log nu). Heun's method (Euler, then the trapezoid rule) is
second order in the step size of nu. EDM skips the correction only on a step to nu = 0, where
(y - D) / nu is undefined; grids here end at eps > 0, so every step is corrected and
nfe = 2 * steps. The stochastic variant ("churn") first raises the level from nu_i to
nu_hat = (1 + gamma) nu_i by adding N(0, (nu_hat^2 - nu_i^2) s_noise^2 I) noise to y, which keeps
the marginal p(y; nu) up to the score's error, then takes the Heun step from nu_hat.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from tqdm.auto import trange

from sde_lib import SDE
from sde_lib.checks import check_nonnegative
from samplers.base import at, ignore, noise_like, sampler

Tensor = torch.Tensor
__all__ = ["heun_loop", "heun_sample"]


def heun_loop(sde: SDE, score, x: Tensor, grid: Tensor, *,
              s_churn: float = 0.0,                     # total churn; 0: deterministic (the ODE)
              s_tmin: float = 0.0,                      # churn only where s_tmin <= nu_i <= s_tmax
              s_tmax: float = math.inf,                 #   (noise levels nu = sigma / alpha)
              s_noise: float = 1.0,                     # scale of the churn's noise (EDM's S_noise)
              generator: Optional[torch.Generator] = None, callback=ignore, progress: bool = False) -> Tensor:
    """EDM's Algorithm 2 on the grid's noise levels nu_0 > ... > nu_n = nu(grid[n]); nfe = 2 n.

    Step i: gamma_i = min(s_churn / n, sqrt(2) - 1) if s_tmin <= nu_i <= s_tmax else 0;
    nu_hat = min((1 + gamma_i) nu_i, nu(T)) (capped so the score is only asked inside (0, T]);
    y_hat = y_i + sqrt(nu_hat^2 - nu_i^2) s_noise z;
    d = (y_hat - D(y_hat; nu_hat)) / nu_hat,  y' = y_hat + (nu_{i+1} - nu_hat) d          (Euler)
    d' = (y' - D(y'; nu_{i+1})) / nu_{i+1},   y_{i+1} = y_hat + (nu_{i+1} - nu_hat) (d + d') / 2.
    Returns x = alpha(grid[n]) y_n. `callback` receives {i, t (the new time), x, denoised (D at the
    step's first call)} after every step. Set up by `heun_sample` with the Karras grid (rho 7).
    """
    _check_churn(s_churn, s_tmin, s_tmax, s_noise)
    n = len(grid) - 1
    alpha = sde.marginal_coeffs(grid)[0].tolist()
    nu = (-sde.log_snr(grid)).exp().tolist()
    nu_max = float((-sde.log_snr(torch.tensor(sde.T, dtype=torch.float64))).exp())  # nu(T)
    y = x / alpha[0]

    def denoise(y: Tensor, t: Tensor, a: float) -> Tensor:
        # D(y; nu) is the model's x0 estimate at x_t = alpha(t) y.
        return sde.tweedie(a * y, t, score(a * y, t.to(y.dtype)))

    for i in trange(n, disable=not progress, desc="heun_sample"):
        t, t_next = at(grid, i, x), at(grid, i + 1, x)
        # Raise the noise level nu_i -> nu_hat with fresh noise (churn), capped at the prior's level.
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= nu[i] <= s_tmax else 0.0
        nu_hat, t_hat, a_hat = nu[i], t, alpha[i]
        if gamma > 0 and nu[i] < nu_max:
            nu_hat = min(nu[i] * (1 + gamma), nu_max)
            t_hat = sde.t_from_log_snr(torch.full_like(t, -math.log(nu_hat))).clamp(max=sde.T)
            a_hat = float(sde.marginal_coeffs(t_hat[:1])[0])
            y = y + math.sqrt(nu_hat ** 2 - nu[i] ** 2) * s_noise * noise_like(y, generator)
        # Euler step in nu.
        x0 = denoise(y, t_hat, a_hat)
        d = (y - x0) / nu_hat
        y_next = y + (nu[i + 1] - nu_hat) * d
        # Second-order correction: the trapezoid rule with the slope at the new level.
        d_next = (y_next - denoise(y_next, t_next, alpha[i + 1])) / nu[i + 1]
        y = y + (nu[i + 1] - nu_hat) * 0.5 * (d + d_next)
        callback({"i": i, "t": t_next, "x": alpha[i + 1] * y, "denoised": x0})
    return alpha[n] * y


def _check_steps(steps: Optional[int], n: Optional[int], options: dict):
    """Heun's steps: at least 2 on a named grid (one step from T to eps jumps from pure noise to the
    data in one trapezoid: its samples are the data's blurred mean)."""
    if n is None and steps == 1:
        raise ValueError("steps=1 makes heun take one step from T to the last time, which lands near the data's "
                         "mean; use steps >= 2 (each step costs 2 calls)")
    return steps or n, options


heun_sample = sampler("heun", heun_loop, default_grid="karras", plan=_check_steps)


def _check_churn(s_churn, s_tmin, s_tmax, s_noise) -> None:
    """EDM's churn settings: s_churn >= 0 (finite), 0 <= s_tmin <= s_tmax, s_noise >= 0 (finite)."""
    check_nonnegative(s_churn, "s_churn", " (0: deterministic Heun)")
    check_nonnegative(s_noise, "s_noise")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == v for v in (s_tmin, s_tmax)) \
            or not 0 <= s_tmin <= s_tmax:
        raise ValueError(f"s_tmin and s_tmax must be noise levels with 0 <= s_tmin <= s_tmax, "
                         f"got s_tmin={s_tmin!r}, s_tmax={s_tmax!r}")
