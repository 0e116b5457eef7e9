"""Posterior sampling for linear inverse problems by sequential Monte Carlo: particles that converge to
the model's p(x | y) as their number grows, for y = A x + sigma_y n (sigma_y >= 0), any linear SDE and
any score model, with no network gradients.

Which method. Of the asymptotically exact samplers (the Twisted Diffusion Sampler, Wu et al. 2023;
MCGdiff, Cardoso et al. 2024; filtering posterior sampling, Dou & Song 2024), this is a twisted SMC over
the model's own reverse chain whose twists are linear-Gaussian in x_t, written in the SVD basis of A
(`samplers.observations`): as in MCGdiff and FPS, every proposal and weight is then closed form, and it
needs one batched network call per step for all particles and no backpropagation (TDS's twists go
through the network and need its gradient at every step). The target is the model's chain conditioned on
y, p(x_{t_0:t_n} | y) proportional to p(x_{t_0}) prod_k p(x_{t_k} | x_{t_{k-1}}) p(y | x_{t_n}); its last
state is the sample, whose law tends to p(x_eps | y) as particles grow (and to p(x_0 | y) as the chain
does). Noiseless observations (sigma_y = 0) are conditioned on exactly: the observed directions of
every particle equal y at the end.

In the SVD basis (x_bar = V^T x, y_bar = U^T y, singular values s_i, i < r) the twist at time t is

    h_t(x_t) = prod_{i<r} N(y_bar_i; b_t s_i x_bar_{t,i}, tau_{t,i}^2),   b_t = 1 / alpha_t,
               tau_{t,i}^2 = sigma_y^2 + s_i^2 sigma_t^2 / alpha_t^2   (x_0 ~ x_t / alpha_t, spread sigma_t / alpha_t),

and after the last step it is the likelihood itself (b = 1, tau^2 = sigma_y^2). With the model's reverse
kernel N(mu(x_t), sigma^2 I) (isotropic, so still isotropic in the SVD basis) each step from t to s:

    weight   w <- w Z(x_t) / h_t(x_t),   Z = prod_{i<r} N(y_bar_i; b_s s_i mu_bar_i, tau_{s,i}^2 + b_s^2 s_i^2 sigma^2)
    resample by w when the effective sample size falls below ess_threshold * N (systematic)
    propose  x_bar_{s,i} ~ N((tau^2 mu_bar_i + b s_i sigma^2 y_bar_i) / (tau^2 + b^2 s_i^2 sigma^2),
                             sigma^2 tau^2 / (tau^2 + b^2 s_i^2 sigma^2))   for i < r,
             x_bar_{s,i} ~ N(mu_bar_i, sigma^2)                             for the unobserved i >= r,

the locally optimal proposal p(x_s | x_t) h_s(x_s) / Z(x_t), so the weight depends on x_t alone and the
resampling comes before the move (a fully adapted particle filter).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from tqdm.auto import trange

from sde_lib import SDE
from sde_lib.checks import check_one_of
from sde_lib.reverse_step import posterior, reverse_variance
from samplers.base import coeff
from samplers.observations import LinearObservation
from samplers.posterior_base import setup

Tensor = torch.Tensor
__all__ = ["particle_posterior_sample"]
_VARIANCES = ("fixed_small", "fixed_large", "analytic")  # isotropic: they stay isotropic in the SVD basis


@torch.no_grad()  # no gradient is taken, so no graph is built
def particle_posterior_sample(sde: SDE, score_fn, shape: Sequence[int], observation: LinearObservation, y: Tensor, *,
                              sigma_y: float = 0.0, particles: int = 64, steps: Optional[int] = None, grid=None,
                              eps: Optional[float] = None, variance: str = "fixed_small",
                              gamma: Optional[Sequence[float]] = None, data_range: float = 2.0,
                              ess_threshold: float = 0.5, seed: Optional[int] = None,
                              generator: Optional[torch.Generator] = None, device=None, dtype=torch.float32,
                              cond: Optional[dict] = None, progress: bool = False, return_particles: bool = False):
    """B = shape[0] posterior samples given y [B, m], each from its own `particles` particles (module
    docstring). The grid is the ancestral sampler's (`steps`, `grid`, `eps`: uniform in t by default);
    `variance` the reverse kernel's (`gamma`: Analytic-DPM's per-step Gamma for "analytic").

    Returns (x [B, *shape], info): info["network_calls"] batched calls (one a step, all B * particles
    rows at once), info["network_evaluations_per_sample"] = steps * particles, info["ess"] [steps] the
    effective sample size before each step's resampling (mean over the B samples), info["resampled"]
    the steps that resampled; with return_particles, info["particles"] [B, particles, *shape] and
    info["weights"] [B, particles] (normalised) as well.
    """
    B, N = int(shape[0]), _check_particles(particles, ess_threshold)
    check_one_of("variance", variance, _VARIANCES)
    run = setup(sde, score_fn, shape, observation, y, sigma_y, solver="particle", steps=steps, grid=grid, eps=eps,
                seed=seed, generator=generator, device=device, dtype=dtype, cond=cond, repeat=N)
    n = len(run.grid) - 1
    if variance == "analytic" and (gamma is None or len(gamma) != n):  # still before the first network call
        raise ValueError(f"variance 'analytic' needs gamma, one E||eps_hat||^2 / d per step ({n} here), got "
                         f"{None if gamma is None else len(gamma)}")
    grid, g, score, x = run.grid, run.generator, run.score, run.x
    s_i = observation.singulars.to(x.device)
    y_rep = run.y_bar.repeat_interleave(N, 0)  # y_bar of every particle
    x_bar = observation.vt(x).double()  # the particles in the SVD basis, kept beside x
    log_w = _log_twist(sde, x_bar, y_rep, s_i, grid[0], sigma_y)
    ess, resampled = [], []
    for i in trange(n, disable=not progress, desc="particle_posterior_sample"):
        t, s = grid[i].expand(B * N), grid[i + 1].expand(B * N)
        x0 = sde.tweedie(x, t, score(x, t.to(x.dtype)))
        q = posterior(sde, t, s)
        var = reverse_variance(sde, t[:1], s[:1], variance, gamma=None if gamma is None else gamma[i],
                               data_range=data_range)[0]
        mu_bar = observation.vt(torch.addcmul(coeff(q.c_t, x) * x, coeff(q.c_0, x), x0)).double()
        final = i == n - 1
        b, tau2 = _twist_coeffs(sde, grid[i + 1], sigma_y, s_i, final)
        log_Z = _log_normal(y_rep, b * s_i * mu_bar[:, :observation.r], tau2 + (b * s_i) ** 2 * var).sum(1)
        log_w = log_w + log_Z - _log_twist(sde, x_bar, y_rep, s_i, grid[i], sigma_y)
        e = _ess(log_w.reshape(B, N))
        ess.append(float(e.mean()))
        if bool((e < ess_threshold * N).any()):
            idx = _systematic(log_w.reshape(B, N), g)
            mu_bar, log_w = mu_bar[idx], torch.zeros_like(log_w)
            resampled.append(i)
        x_bar = _propose(mu_bar, y_rep, s_i, b, tau2, var, g)
        x = observation.v(x_bar.to(x.dtype))
    w = torch.softmax(log_w.reshape(B, N), 1)
    pick = torch.multinomial(w.to(x.device), 1, generator=g).squeeze(1) + torch.arange(B, device=x.device) * N
    info = {"network_calls": score.nfe, "network_evaluations_per_sample": score.nfe * N, "backward_passes": 0,
            "ess": ess, "resampled": resampled, "particles_per_sample": N, "t": float(grid[-1])}
    if return_particles:
        info["particles"], info["weights"] = x.reshape(B, N, *shape[1:]), w
    return x[pick], info


def _check_particles(particles, ess_threshold) -> int:
    """The particle count, checked with the resampling threshold."""
    if not isinstance(particles, int) or isinstance(particles, bool) or particles < 1:
        raise ValueError(f"particles must be an integer >= 1, got {particles!r}")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold must lie in [0, 1] (a share of the particles), got {ess_threshold!r}")
    return particles


def _twist_coeffs(sde: SDE, t: Tensor, sigma_y: float, s_i: Tensor, final: bool):
    """(b, tau^2 [r]) of the twist at time t, or of the likelihood itself after the last step."""
    if final:
        return 1.0, torch.full_like(s_i, sigma_y ** 2)
    alpha, sigma = (float(c) for c in sde.marginal_coeffs(t))
    return 1.0 / alpha, sigma_y ** 2 + (s_i * sigma / alpha) ** 2


def _log_twist(sde, x_bar, y_rep, s_i, t, sigma_y) -> Tensor:
    """log h_t(x_t) [B N] for spectral particles x_bar [B N, d] (y_rep: each particle's y_bar [B N, r])."""
    b, tau2 = _twist_coeffs(sde, t, sigma_y, s_i, final=False)
    return _log_normal(y_rep, b * s_i * x_bar[:, :len(s_i)], tau2).sum(1)


def _log_normal(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    return -0.5 * ((x - mean) ** 2 / var + torch.log(2 * math.pi * var))


def _ess(log_w: Tensor) -> Tensor:
    """(sum w)^2 / sum w^2 per row of log_w [B, N]."""
    return torch.exp(2 * torch.logsumexp(log_w, 1) - torch.logsumexp(2 * log_w, 1))


def _systematic(log_w: Tensor, g) -> Tensor:
    """Flat indices [B N] of systematic resampling within each row of log_w [B, N]."""
    B, N = log_w.shape
    cdf = torch.cumsum(torch.softmax(log_w, 1), 1)
    cdf[:, -1] = 1.0
    u = (torch.rand(B, 1, generator=g, dtype=torch.float64, device=log_w.device)
         + torch.arange(N, device=log_w.device, dtype=torch.float64)) / N
    idx = torch.searchsorted(cdf, u).clamp(max=N - 1)
    return (idx + torch.arange(B, device=log_w.device)[:, None] * N).reshape(-1)


def _propose(mu_bar: Tensor, y_bar: Tensor, s_i: Tensor, b, tau2: Tensor, var: Tensor, g) -> Tensor:
    """x_bar_s [B N, d]: the locally optimal proposal in the observed directions, the kernel elsewhere."""
    r = len(s_i)
    z = torch.randn(mu_bar.shape, generator=g, dtype=torch.float64, device=mu_bar.device)
    bs = b * s_i
    denom = tau2 + bs ** 2 * var
    mean_obs = (tau2 * mu_bar[:, :r] + bs * var * y_bar) / denom
    sd_obs = (var * tau2 / denom).sqrt()
    return torch.cat([mean_obs + sd_obs * z[:, :r], mu_bar[:, r:] + var.sqrt() * z[:, r:]], 1)
