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
from typing import Callable, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from sde_lib import SDE
from samplers.base import denoised, register_sampler, start
from samplers.guards import check_finite

Tensor = torch.Tensor
__all__ = ["heun_sample"]


@register_sampler("heun")
def heun_sample(sde: SDE, score_fn: Callable[..., Tensor], shape: Sequence[int], *,
                steps: int,                               # Heun steps; nfe = 2 * steps
                s_churn: float = 0.0,                     # total churn; 0: deterministic (the ODE)
                s_tmin: float = 0.0,                      # churn only where s_tmin <= nu_i <= s_tmax
                s_tmax: float = math.inf,                 #   (noise levels nu = sigma / alpha)
                s_noise: float = 1.0,                     # scale of the churn's noise (EDM's S_noise)
                grid=None,                                # a grid name or times; default karras (rho 7)
                eps: Optional[float] = None,              # last time; default sde.sampling_eps
                x_T: Optional[Tensor] = None,             # start here instead of a prior sample
                seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                device=None, dtype=torch.float32,
                callback: Optional[Callable[[dict], None]] = None,
                progress: bool = False, **cond) -> Tuple[Tensor, int]:
    """Samples [shape] by EDM's Algorithm 2 on the grid's noise levels nu_0 > ... > nu_n = nu(eps).

    Step i: gamma_i = min(s_churn / n, sqrt(2) - 1) if s_tmin <= nu_i <= s_tmax else 0;
    nu_hat = min((1 + gamma_i) nu_i, nu(T)) (capped so the score is only asked inside (0, T]);
    y_hat = y_i + sqrt(nu_hat^2 - nu_i^2) s_noise z;
    d = (y_hat - D(y_hat; nu_hat)) / nu_hat,  y' = y_hat + (nu_{i+1} - nu_hat) d          (Euler)
    d' = (y' - D(y'; nu_{i+1})) / nu_{i+1},   y_{i+1} = y_hat + (nu_{i+1} - nu_hat) (d + d') / 2.
    Returns (x = alpha(eps) y_n, nfe = 2 n). `callback` receives {i, t (the new time, a float), x, x_mean (= x),
    denoised (D at the step's first call)} after every step.
    """
    _check_churn(s_churn, s_tmin, s_tmax, s_noise)
    run = start(sde, score_fn, shape, steps=steps, grid=grid, eps=eps, x_T=x_T, seed=seed, generator=generator,
                device=device, dtype=dtype, cond=cond, default_grid="karras")
    score, n = run.score, len(run.grid) - 1
    alpha = sde.marginal_coeffs(run.grid)[0].tolist()
    nu = (-sde.log_snr(run.grid)).exp().tolist()
    nu_max = float((-sde.log_snr(torch.tensor(sde.T, dtype=torch.float64))).exp())  # nu(T)
    y = run.x / alpha[0]

    def denoise(y: Tensor, t: Tensor, a: float) -> Tensor:
        # D(y; nu) is the model's x0 estimate at x_t = alpha(t) y.
        return denoised(sde, a * y, t, score(a * y, t.to(y.dtype)))

    for i in tqdm(range(n), disable=not progress, desc="heun_sample"):
        score.step = i
        t, t_next = run.times(i), run.times(i + 1)
        # Raise the noise level nu_i -> nu_hat with fresh noise (churn), capped at the prior's level.
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= nu[i] <= s_tmax else 0.0
        nu_hat, t_hat, a_hat = nu[i], t, alpha[i]
        if gamma > 0 and nu[i] < nu_max:
            nu_hat = min(nu[i] * (1 + gamma), nu_max)
            t_hat = sde.t_from_log_snr(torch.full_like(t, -math.log(nu_hat))).clamp(max=sde.T)
            a_hat = float(sde.marginal_coeffs(t_hat[:1])[0])
            y = y + math.sqrt(nu_hat ** 2 - nu[i] ** 2) * s_noise * run.noise()
        # Euler step in nu.
        x0 = denoise(y, t_hat, a_hat)
        d = (y - x0) / nu_hat
        y_next = y + (nu[i + 1] - nu_hat) * d
        # Second-order correction: the trapezoid rule with the slope at the new level.
        d_next = (y_next - denoise(y_next, t_next, alpha[i + 1])) / nu[i + 1]
        y = y + (nu[i + 1] - nu_hat) * 0.5 * (d + d_next)
        check_finite(y, "heun", i, t_next)
        if callback is not None:
            x = alpha[i + 1] * y
            callback({"i": i, "t": t_next, "x": x, "x_mean": x, "denoised": x0})
    return alpha[n] * y, score.nfe


def _check_churn(s_churn, s_tmin, s_tmax, s_noise) -> None:
    """EDM's churn settings: s_churn >= 0 (finite), 0 <= s_tmin <= s_tmax, s_noise >= 0 (finite)."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)

    if not (number(s_churn) and math.isfinite(s_churn) and s_churn >= 0):
        raise ValueError(f"s_churn must be a finite number >= 0 (0: deterministic Heun), got {s_churn!r}")
    if not (number(s_tmin) and number(s_tmax) and 0 <= s_tmin <= s_tmax):
        raise ValueError(f"s_tmin and s_tmax must be noise levels with 0 <= s_tmin <= s_tmax, "
                         f"got s_tmin={s_tmin!r}, s_tmax={s_tmax!r}")
    if not (number(s_noise) and math.isfinite(s_noise) and s_noise >= 0):
        raise ValueError(f"s_noise must be a finite number >= 0, got {s_noise!r}")
