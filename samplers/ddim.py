"""DDIM (Song, Meng & Ermon 2021) on any linear SDE, and DDPM's strided time grid.

On a grid T = t_0 > ... > t_n = eps, each step goes from t to s < t through the model's estimates
of the clean data and of the noise in x_t = alpha_t x_0 + sigma_t z,

    x0_hat = E[x_0 | x_t] (Tweedie),   eps_hat = -sigma_t s(x_t, t),

and re-noises x0_hat to the level of s with a mix of the same noise and fresh noise:

    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,   c = eta b sigma_s / sigma_t,

where x_t = a x_s + b z' is the exact forward transition (`SDE.transition_coeffs(t, s)`), so
b sigma_s / sigma_t is the std of the ancestral posterior q(x_s | x_t, x_0). eta = 0 is deterministic,
the first-order exponential integrator of the probability-flow ODE (DPM-Solver-1); eta = 1 is the
ancestral sampler (DDPM's on VP, SMLD's on VE); every eta in [0, 1] samples the same marginals
(larger eta too, while c <= sigma_s).
Only alpha(t), sigma(t) and the transition are used, so VP, sub-VP and VE need no special case.
"""
from __future__ import annotations

from typing import Optional

import torch
from tqdm.auto import trange

from sde_lib import SDE
from sde_lib.checks import check_nonnegative, check_positive_int
from samplers.base import at, coeff, ignore, noise_estimate, noise_like, sampler
from samplers.grids import register_grid
from samplers.guards import check_eps

Tensor = torch.Tensor
__all__ = ["ddim_loop", "ddim_sample", "ddpm_strided_grid"]


@register_grid("ddpm_strided")
def ddpm_strided_grid(sde: SDE, steps: int, eps: Optional[float] = None) -> Tensor:
    """Times [steps + 1] of an evenly strided subsequence of the SDE's N-step discrete chain.

    The chain's index i sits at t_i = i / (N - 1) T (as in `SDE.discrete_index` and the discrete
    losses). The grid takes the indices round((N - 1) (1 - k / steps)), k = 0..steps, from N - 1 (t = T)
    down to 0. Index 0 is the chain's first noise level (DDPM's beta_1, SMLD's sigma_min), at t = 0,
    where the continuous VP SDE has no noise at all; it is placed at `eps` (default sde.sampling_eps,
    where the default VP and VE SDEs reach that first noise level). DDIM with eta = 1 on this grid is
    DDPM's strided ancestral sampling; with eta = 0, DDIM's "uniform" skip.
    """
    steps = check_positive_int(steps, "steps")
    eps = check_eps(sde, eps)
    if steps > sde.N - 1:
        raise ValueError(f"steps must be at most N - 1 = {sde.N - 1} for a strided subsequence of the "
                         f"{sde.N}-step chain, got {steps}")
    k = torch.arange(steps + 1, dtype=torch.float64)
    index = torch.round((sde.N - 1) * (1 - k / steps))
    t = index / (sde.N - 1) * sde.T
    if steps > 1 and not eps < float(t[-2]):
        raise ValueError(f"eps must lie below the grid's last chain time {float(t[-2]):.6g} "
                         f"(index {int(index[-2])}), got {eps!r}")
    t[-1] = eps
    return t


def ddim_loop(sde: SDE, score, x: Tensor, grid: Tensor, *,
              eta: float = 0.0,                         # 0: deterministic ODE step; 1: ancestral
              generator: Optional[torch.Generator] = None, callback=ignore, progress: bool = False) -> Tensor:
    """DDIM from grid[0] down to grid[n], one score call per step (module docstring):

        x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,   c = eta b sigma_s / sigma_t.

    With eta > 0 every step draws one fresh N(0, I), the last one included, in the order of
    `pc_sample(predictor="ancestral_sampling", corrector="none")`, so eta = 1 gives its samples for the
    same seed and grid. `callback` receives {i, t (the new time), x, x_mean, denoised} after every step.
    """
    check_nonnegative(eta, "eta", " (0: deterministic DDIM, 1: ancestral)")
    _check_eta_fits(sde, grid, eta)
    for i in trange(len(grid) - 1, disable=not progress, desc="ddim_sample"):
        t, s = at(grid, i, x), at(grid, i + 1, x)
        # The model's clean-data and noise estimates at (x_t, t), from one score call.
        sc = score(x, t.to(x.dtype))
        x0, e = sde.tweedie(x, t, sc), noise_estimate(sde, t, sc)
        # eta times the std of the ancestral posterior q(x_s | x_t, x_0); the rest of sigma_s^2
        # goes to the model's own noise, so x_s keeps the marginal std sigma_s.
        alpha_s, sigma_s = sde.marginal_coeffs(s)
        c = eta * sde.transition_coeffs(t, s)[1] * sigma_s / sde.marginal_coeffs(t)[1]
        x_mean = torch.addcmul(coeff(alpha_s, x) * x0, coeff((sigma_s ** 2 - c ** 2).clamp_min(0).sqrt(), x), e)
        x = torch.addcmul(x_mean, coeff(c, x), noise_like(x, generator)) if eta > 0 else x_mean
        callback({"i": i, "t": s, "x": x, "x_mean": x_mean, "denoised": x0})
    return x


ddim_sample = sampler("ddim", ddim_loop, default_grid="uniform_t")


def _check_eta_fits(sde: SDE, grid: Tensor, eta: float) -> None:
    """eta > 1 is allowed while the fresh noise c = eta b sigma_s / sigma_t fits within sigma_s, i.e.
    eta <= sigma_t / b at every step (b <= sigma_t, so eta <= 1 always fits)."""
    limit = float((sde.marginal_coeffs(grid[:-1])[1] / sde.transition_coeffs(grid[:-1], grid[1:])[1]).min())
    if eta > limit * (1 + 1e-12):  # rounding slack: the limit is 1 to ~1e-16 where alpha_t ~ 0
        raise ValueError(f"eta must be at most {limit:.6g} on this grid (the largest eta whose fresh noise "
                         f"fits within sigma_s at every step), got {eta!r}")
