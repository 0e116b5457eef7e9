"""One reverse step of a linear SDE, from time t to an earlier time s < t: the Gaussian posterior of the
forward process, and the variance a model's reverse kernel may take (DDPM's two fixed choices, improved
DDPM's learned interpolation, Analytic-DPM's optimum).

With the exact forward transition x_t = a x_s + b z (a = alpha_t / alpha_s, beta = b^2 = sigma_t^2 -
a^2 sigma_s^2; `SDE.transition_coeffs`), the posterior is

    q(x_s | x_t, x_0) = N(c_t x_t + c_0 x_0, beta~ I),
    c_t = a sigma_s^2 / sigma_t^2,   c_0 = alpha_s beta / sigma_t^2,   beta~ = beta sigma_s^2 / sigma_t^2,

and a model's reverse kernel is p(x_s | x_t) = N(c_t x_t + c_0 x0_hat(x_t), sigma^2 I). On VP's N-step
chain (s = t - T/N) these are DDPM's numbers; on any other grid (a strided one, improved DDPM's respacing)
the same formulas hold, so no grid needs a case of its own. Variances (`reverse_variance`):

  fixed_small    beta~                                  (the posterior's own; DDPM's sigma^2 = beta~)
  fixed_large    beta                                   (the forward step's; DDPM's sigma^2 = beta)
  learned_range  exp(v log beta + (1 - v) log beta~)    (Nichol & Dhariwal 2021; v per dimension, not clamped)
  analytic       beta~ + beta^2 / (a^2 sigma_t^2) (1 - Gamma)   (Bao et al. 2022, Theorem 1)

where Gamma = E ||eps_hat(x_t)||^2 / d at time t. The analytic variance is the one that minimises the
KL to the true reverse kernel q(x_s | x_t) among isotropic Gaussians with the model's mean: its trace is
beta~ d + c_0^2 E tr Cov(x_0 | x_t), and E tr Cov(x_0 | x_t) = (sigma_t / alpha_t)^2 (d - E ||E[eps | x_t]||^2).
It is clipped to Theorem 2's bounds, [beta~, beta~ + c_0^2 (r / 2)^2] for data in an interval of width r
(Cov(x_0 | x_t) <= (r / 2)^2), which also absorb a Gamma estimated above 1.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from sde_lib.checks import check_one_of, check_positive
from sde_lib.sdes import SDE

Tensor = torch.Tensor
VARIANCES = ("fixed_small", "fixed_large", "learned_range", "analytic")


class Posterior(NamedTuple):
    """q(x_s | x_t, x_0) = N(c_t x_t + c_0 x_0, beta_tilde I), and the forward step's variance beta; each
    float64 [B] (or scalar), shaped like t."""
    c_t: Tensor
    c_0: Tensor
    beta_tilde: Tensor
    beta: Tensor
    a: Tensor        # alpha_t / alpha_s
    sigma_t: Tensor


def posterior(sde: SDE, t: Tensor, s: Tensor) -> Posterior:
    """The posterior of the step from t back to s < t (module docstring); t, s float64 tensors."""
    a, b = sde.transition_coeffs(t, s)
    alpha_s, sigma_s = sde.marginal_coeffs(s)
    sigma_t = sde.marginal_coeffs(t)[1]
    beta, ratio = b ** 2, (sigma_s / sigma_t) ** 2
    return Posterior(a * ratio, alpha_s * beta / sigma_t ** 2, beta * ratio, beta, a, sigma_t)


def reverse_variance(sde: SDE, t: Tensor, s: Tensor, kind: str, *, v: Optional[Tensor] = None,
                     gamma: Optional[Tensor] = None, data_range: float = 2.0,
                     q: Optional[Posterior] = None) -> Tensor:
    """sigma^2 of the reverse kernel p(x_s | x_t) for the variance `kind` (module docstring): float64,
    shaped like t, or like v for "learned_range" (v [B, ...], the network's mixing output).

    gamma: Gamma = E ||eps_hat(x_t)||^2 / d at t, for "analytic" (a float or a tensor shaped like t);
    data_range: the width r of the data's interval for its clipping (2 for data in [-1, 1]);
    q: `posterior(sde, t, s)` where the caller has it already.
    """
    check_one_of("variance", kind, VARIANCES)
    q = posterior(sde, t, s) if q is None else q
    if kind == "fixed_small":
        return q.beta_tilde
    if kind == "fixed_large":
        return q.beta
    if kind == "learned_range":
        if v is None:
            raise ValueError("variance 'learned_range' needs v, the network's mixing output (a variance head)")
        lb, lbt = (c.reshape(c.shape + (1,) * (v.ndim - c.ndim)) for c in (q.beta.log(), q.beta_tilde.log()))
        return (v.double() * lb + (1 - v.double()) * lbt).exp()
    if gamma is None:
        raise ValueError("variance 'analytic' needs gamma = E||eps_hat(x_t)||^2 / d at t (estimate it first)")
    check_positive(data_range, "data_range")
    gamma = torch.as_tensor(gamma, dtype=torch.float64, device=q.beta.device)
    optimal = q.beta_tilde + q.beta ** 2 / (q.a ** 2 * q.sigma_t ** 2) * (1 - gamma)
    upper = q.beta_tilde + q.c_0 ** 2 * (data_range / 2) ** 2
    return torch.minimum(torch.maximum(optimal, q.beta_tilde), upper)


def learned_range_target(sde: SDE, t: Tensor, s: Tensor, variance: Tensor) -> Tensor:
    """The v with exp(v log beta + (1 - v) log beta~) = variance: log(variance / beta~) / log(beta / beta~)."""
    q = posterior(sde, t, s)
    return (variance / q.beta_tilde).log() / (q.beta / q.beta_tilde).log()
