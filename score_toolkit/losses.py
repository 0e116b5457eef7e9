"""Denoising score matching losses: continuous time (any linear SDE) and the discrete DDPM / SMLD ones.

With x_t = alpha(t) x_0 + sigma(t) z, the DSM objective is

    J = E_{t, x_0, z} [ lambda(t) || s(x_t, t) + z / sigma(t) ||^2 ],

minimised by the true score of p_t. Weightings:
  "std2"        lambda(t) = sigma(t)^2  (the default; the DDPM epsilon loss and the NCSN loss),
  "likelihood"  lambda(t) = g(t)^2      (Song et al. 2021b: J bounds the negative log-likelihood).
For "likelihood", `importance_sampling` draws t with density proportional to g(t)^2 / sigma(t)^2
and reweights, which leaves the expectation unchanged and removes most of its variance.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional

import torch

from sde_lib import SDE, append_dims
from models.precond import Precond, eps_error
from sde_lib.checks import check_cond, check_one_of, check_open_interval

Tensor = torch.Tensor
WEIGHTINGS = ("std2", "likelihood")
REDUCTIONS = ("mean", "sum")


def _reduce(per_dim: Tensor, reduce: str) -> Tensor:
    """Per-sample sum or mean over all but the batch dimension: [B, ...] -> [B]."""
    flat = per_dim.flatten(1)
    return flat.sum(1) if reduce == "sum" else flat.mean(1)


class ImportanceTimeSampler:
    """Draws t in [eps, T] with density w(t) / Z, w = g(t)^2 / sigma(t)^2, by inverse CDF.

    The CDF is tabulated once on a grid uniform in log t (where w(t) t is smooth even though
    w ~ 1/t near 0 for VP), by the trapezoid rule in float64.
    """

    def __init__(self, sde: SDE, eps: float, n_grid: int = 4097):
        log_t = torch.linspace(math.log(eps), math.log(sde.T), n_grid, dtype=torch.float64)
        t = log_t.exp()
        alpha, sigma = sde.marginal_coeffs(t)
        dens = sde.diffusion(t) ** 2 / sigma ** 2 * t          # w(t) dt/dlog t
        steps = 0.5 * (dens[1:] + dens[:-1]) * (log_t[1:] - log_t[:-1])
        cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(steps, 0)])
        self.Z = float(cdf[-1])                                  # int_eps^T w(t) dt
        self.cdf, self.log_t = cdf / cdf[-1], log_t

    def sample(self, n: int, generator=None, device=None) -> Tensor:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        i = torch.searchsorted(self.cdf, u).clamp(1, len(self.cdf) - 1)
        c0, c1 = self.cdf[i - 1], self.cdf[i]
        frac = (u - c0) / (c1 - c0).clamp_min(1e-300)
        log_t = self.log_t[i - 1] + frac * (self.log_t[i] - self.log_t[i - 1])
        return log_t.exp().to(device)


def get_loss_fn(sde: SDE, continuous: bool = True, weighting: str = "std2",
                importance_sampling: bool = False, reduce: str = "mean", eps: float = 1e-5
                ) -> Callable[..., Tensor]:
    """Returns loss_fn(model, x0, generator=None, cond=None) -> scalar: the DSM loss averaged over the batch.

    `model` is a `models.Precond` wrapper (trained through its raw output) or any score_fn(x, t, **cond);
    `cond` (e.g. {"y": labels [B]}) goes to every call, checked once per call of loss_fn.

    continuous=True: t ~ U(eps, T) (or importance-sampled), the continuous-time objective.
    continuous=False: the classic discrete losses, t on the N-step chain's times i/(N-1) T:
      for VP the DDPM epsilon loss ||eps_net - z||^2 = sigma_i^2 ||s + z/sigma_i||^2 with
      sigma_i^2 = 1 - alpha_bar_i; for VE the SMLD loss with sigma_i from the noise ladder.
      Use it with `models.get_score_fn(..., continuous=False)`.
    """
    check_one_of("weighting", weighting, WEIGHTINGS)
    check_one_of("reduce", reduce, REDUCTIONS)
    check_open_interval(eps, "eps", 0.0, sde.T, f"(0, T) = (0, {sde.T:g})")
    if importance_sampling and weighting != "likelihood":
        raise ValueError("importance_sampling applies to weighting='likelihood' only")
    if not continuous and weighting != "std2":
        raise ValueError("the discrete DDPM / SMLD losses use weighting='std2'")
    sampler = ImportanceTimeSampler(sde, eps) if importance_sampling else None

    def loss_fn(model, x0: Tensor, generator: Optional[torch.Generator] = None,
                cond: Optional[Mapping[str, Tensor]] = None) -> Tensor:
        B = x0.shape[0]
        cond = check_cond(model, cond, B)
        if not continuous:
            i = torch.randint(0, sde.N, (B,), generator=generator).to(x0.device)
            t = i.double() / (sde.N - 1) * sde.T
            alpha, sigma = sde.discrete_coeffs(t)
        elif sampler is not None:
            t = sampler.sample(B, generator, x0.device)
            alpha, sigma = sde.marginal_coeffs(t)
        else:
            t = eps + (sde.T - eps) * torch.rand(B, generator=generator, dtype=torch.float64).to(x0.device)
            alpha, sigma = sde.marginal_coeffs(t)
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        a, s = alpha.to(x0.dtype), sigma.to(x0.dtype)
        x_t = append_dims(a, x0.ndim) * x0 + append_dims(s, x0.ndim) * z
        per_sample = _reduce(_eps_error(model, x_t, t.to(x0.dtype), x0, z, a, s, cond) ** 2, reduce)
        return (per_sample * _weight(sde, t, sigma, weighting, sampler, eps).to(x0.dtype)).mean()

    return loss_fn


def _eps_error(model, x_t, t, x0, z, alpha, sigma, cond) -> Tensor:
    """eps_hat - z, so that ||.||^2 = sigma^2 ||s_hat - s_true||^2. A `Precond` wrapper is trained
    through its network's raw output (no division by sigma undone by a multiplication); any other
    score_fn(x, t, **cond) through its score, as sigma s + z."""
    if isinstance(model, Precond):
        return eps_error(model.parametrization, model.raw(x_t, t, **cond), x0, z, alpha, sigma)
    return torch.addcmul(z, append_dims(sigma, x0.ndim), model(x_t, t, **cond))


def _weight(sde: SDE, t: Tensor, sigma: Tensor, weighting: str, sampler, eps: float) -> Tensor:
    """lambda(t) / sigma(t)^2, or the importance weight Z / (T - eps) for importance-sampled t."""
    if weighting == "std2":
        return torch.ones_like(t)
    if sampler is not None:
        return torch.full_like(t, sampler.Z / (sde.T - eps))
    return sde.diffusion(t) ** 2 / sigma ** 2
