"""Ancestral sampling with a choice of reverse variance, on any grid of any linear SDE (DDPM, Ho et al.
2020; its strided form, Nichol & Dhariwal 2021; Analytic-DPM, Bao et al. 2022).

Each step from t to s < t draws from the model's reverse kernel (`sde_lib.reverse_step`),

    x_s = c_t x_t + c_0 x0_hat(x_t) + sigma z,   sigma^2 = reverse_variance(t, s, variance),

one network call a step. variance="fixed_small" is DDPM's sigma^2 = beta~ (and DDIM with eta = 1, to
rounding); "fixed_large" DDPM's beta; "learned_range" improved DDPM's exp(v log beta + (1 - v) log beta~)
with v from the network's variance head (score_fn a `models.Precond` of a network with one; x0_hat and
v come from the same call); "analytic" Analytic-DPM's optimum from gamma, the per-step E||eps_hat||^2 / d
that `estimate_gamma` measures on data (clipped to Theorem 2's bounds for data of width data_range).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from tqdm.auto import trange

from sde_lib import SDE
from sde_lib.checks import check_one_of
from sde_lib.reverse_step import posterior, reverse_variance
from samplers.base import at, coeff, ignore, noise_estimate, noise_like, sampler

Tensor = torch.Tensor
__all__ = ["ancestral_loop", "ancestral_sample", "estimate_gamma"]
_KINDS = ("fixed_small", "fixed_large", "learned_range", "analytic")


def ancestral_loop(sde: SDE, score, x: Tensor, grid: Tensor, *,
                   variance: str = "fixed_small",        # fixed_small | fixed_large | learned_range | analytic
                   gamma: Optional[Sequence[float]] = None,  # analytic: E||eps_hat||^2 / d at grid[0..n-1]
                   data_range: float = 2.0,              # analytic: width of the data's interval (clipping)
                   generator: Optional[torch.Generator] = None, callback=ignore, progress: bool = False) -> Tensor:
    """x_s = c_t x_t + c_0 x0_hat + sigma z at every step of the grid (module docstring). `callback`
    receives {i, t (the new time), x, x_mean, denoised} after every step."""
    check_one_of("variance", variance, _KINDS)
    if variance == "learned_range" and not getattr(score, "learns_variance", False):
        raise ValueError("variance 'learned_range' needs a network with a variance head (score_fn a models.Precond "
                         "of a network built with learn_variance=True); use fixed_small, fixed_large or analytic")
    n = len(grid) - 1
    if variance == "analytic":
        if gamma is None or len(gamma) != n:
            raise ValueError(f"variance 'analytic' needs gamma, one E||eps_hat||^2 / d per step ({n} for this grid; "
                             f"samplers.estimate_gamma measures them), got {None if gamma is None else len(gamma)}")
    gamma = None if gamma is None else torch.as_tensor(gamma, dtype=torch.float64)  # read by "analytic" alone
    for i in trange(n, disable=not progress, desc="ancestral_sample"):
        t, s = at(grid, i, x), at(grid, i + 1, x)
        if variance == "learned_range":
            x0, v = score.denoise_and_v(x, t.to(x.dtype))
        else:
            x0, v = sde.tweedie(x, t, score(x, t.to(x.dtype))), None
        q = posterior(sde, t, s)
        var = reverse_variance(sde, t, s, variance, gamma=None if gamma is None else gamma[i].to(t.device),
                               data_range=data_range, q=q, v=v)
        sd = var.sqrt().to(x.dtype) if v is not None else coeff(var.sqrt(), x)
        x_mean = torch.addcmul(coeff(q.c_t, x) * x, coeff(q.c_0, x), x0)
        x = torch.addcmul(x_mean, sd, noise_like(x, generator))
        callback({"i": i, "t": s, "x": x, "x_mean": x_mean, "denoised": x0})
    return x


ancestral_sample = sampler("ancestral", ancestral_loop, default_grid="uniform_t")


@torch.no_grad()
def estimate_gamma(sde: SDE, score_fn, x0: Tensor, times: Tensor, *, batch_size: int = 256,
                   generator: Optional[torch.Generator] = None, cond: Optional[dict] = None) -> Tensor:
    """Gamma(t) = E ||eps_hat(x_t, t)||^2 / d for each time of `times` [m], by Monte Carlo over the data
    x0 [N, ...] (in model space), x_t = alpha_t x0 + sigma_t z with fresh z: one score call per batch and
    time. Returns float64 [m]. For the grid of an ancestral run, pass grid[:-1] (each step's start)."""
    times = torch.as_tensor(times, dtype=torch.float64)
    total = torch.zeros(len(times), dtype=torch.float64)
    d = x0[0].numel()
    for lo in range(0, len(x0), batch_size):
        batch = x0[lo:lo + batch_size]
        extra = {k: v[lo:lo + batch_size] for k, v in (cond or {}).items()}
        for j, t in enumerate(times):
            tt = t.expand(len(batch)).to(batch.device)
            alpha, sigma = (coeff(c, batch) for c in sde.marginal_coeffs(tt))
            x_t = alpha * batch + sigma * torch.randn(batch.shape, generator=generator, dtype=batch.dtype).to(batch.device)
            e = noise_estimate(sde, tt, score_fn(x_t, tt.to(batch.dtype), **extra))
            total[j] += float(e.double().pow(2).sum())
    return total / (len(x0) * d)
