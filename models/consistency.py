"""Consistency models (Song et al. 2023): a network wrapped so that it maps any x_t to the end of its
probability-flow trajectory, with the boundary condition f(x, t_min) = x built in.

Any linear SDE x_t = alpha_t x_0 + sigma_t z is EDM's process y = x / alpha at the noise level
nu = sigma / alpha (the VE sigma itself for VE). In that scale the consistency function is

    f(x_t, t) = alpha_min [c_skip(nu) y + c_out(nu) F~],          y = x_t / alpha_t,
    c_skip(nu) = sigma_d^2 / ((nu - nu_min)^2 + sigma_d^2),   c_out(nu) = (nu - nu_min) sigma_d / sqrt(nu^2 + sigma_d^2),

with nu_min = nu(t_min), alpha_min = alpha(t_min) and sigma_d the data's std. c_skip(nu_min) = 1 and
c_out(nu_min) = 0, so f(x, t_min) = x for every network. F~ is the network's output in EDM's form:
whatever the network predicts (eps, score, x0, v: `models.Precond`) gives its denoiser D(x_t), and
F~ = (D - c_skip^EDM y) / c_out^EDM with EDM's c_skip^EDM = sigma_d^2 / (nu^2 + sigma_d^2), c_out^EDM =
nu sigma_d / sqrt(nu^2 + sigma_d^2). Since c_out / c_out^EDM = (nu - nu_min) / nu,

    f / alpha_min = c_skip y + (1 - nu_min / nu) (D - c_skip^EDM y),

so a consistency model initialised from a trained score network starts near its one-step denoiser
(f ~ D for nu >> nu_min), as consistency distillation initialises it.

The wrapper is a score_fn too, so the seam stays one callable: its score is the one whose Tweedie
estimate is f / alpha_min, s = (alpha_t f / alpha_min - x) / sigma_t^2. `samplers.consistency_sample`
reads f back from it; every other sampler can run on it as well.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from sde_lib import SDE, append_dims
from sde_lib.checks import check_positive

Tensor = torch.Tensor


def noise_level(sde: SDE, t: Tensor) -> Tensor:
    """nu(t) = sigma(t) / alpha(t) = exp(-lambda(t)): EDM's sigma of the SDE at t, float64 like t."""
    return (-sde.log_snr(t.double())).exp()


def boundary_coeffs(nu: Tensor, nu_min: float, sigma_data: float):
    """(c_skip, ratio) of the module docstring, float64 [B]: f / alpha_min = c_skip y + ratio (D - c_skip^EDM y)."""
    c_skip = sigma_data ** 2 / ((nu - nu_min) ** 2 + sigma_data ** 2)
    return c_skip, 1 - nu_min / nu


class ConsistencyFunction(nn.Module):
    """f(x, t, **cond) of the module docstring around a `models.Precond` wrapper (any parametrization).

    Args:
      precond: the wrapped network; its `denoise` gives D.
      t_min: the boundary time where f(x, t_min) = x (the consistency model's sigma_min is nu(t_min)).
      sigma_data: the data's std in the model's space (0.5 for images in [-1, 1], as EDM).

    `consistency(x, t)` is f [B, ...]; calling the module gives the score implied by f (a score_fn).
    """

    def __init__(self, precond: nn.Module, t_min: float, sigma_data: float = 0.5):
        super().__init__()
        check_positive(sigma_data, "sigma_data")
        sde = precond.sde
        if not 0 < t_min < sde.T:
            raise ValueError(f"t_min must lie in (0, T) = (0, {sde.T:g}), got {t_min!r}")
        self.precond, self.sde, self.t_min, self.sigma_data = precond, sde, float(t_min), float(sigma_data)
        t0 = torch.tensor(self.t_min, dtype=torch.float64)
        self.nu_min, self.alpha_min = float(noise_level(sde, t0)), float(sde.marginal_coeffs(t0)[0])
        self.cond_keys = getattr(precond, "cond_keys", None)
        self.learns_variance = False

    @property
    def net(self) -> nn.Module:
        return self.precond.net

    def select(self, cond):
        return self.precond.select(cond)

    def consistency(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        """f(x_t, t) [B, ...], an estimate of x at t_min; t [B] with t >= t_min."""
        return self._consistency(x, t, self.sde.marginal_coeffs(t.double())[0], cond)

    def _consistency(self, x: Tensor, t: Tensor, alpha: Tensor, cond: dict) -> Tensor:
        """f with alpha(t) (float64 [B]) given."""
        nu = noise_level(self.sde, t)
        c_skip, ratio = boundary_coeffs(nu, self.nu_min, self.sigma_data)
        c_edm = self.sigma_data ** 2 / (nu ** 2 + self.sigma_data ** 2)
        y = x / append_dims(alpha.to(x.dtype), x.ndim)
        d = self.precond.denoise(x, t, **cond)
        out = torch.addcmul(append_dims(c_skip.to(x.dtype), x.ndim) * y, append_dims(ratio.to(x.dtype), x.ndim),
                            d - append_dims(c_edm.to(x.dtype), x.ndim) * y)
        return self.alpha_min * out

    def forward(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        """The score whose Tweedie estimate E[x_0 | x_t] is f / alpha_min: (alpha_t f / alpha_min - x) / sigma_t^2."""
        alpha, sigma = self.sde.marginal_coeffs(t.double())
        f = self._consistency(x, t, alpha, cond)
        scale = append_dims((alpha / self.alpha_min).to(x.dtype), x.ndim)
        return (scale * f - x) / append_dims((sigma ** 2).to(x.dtype), x.ndim)

__all__ = ["ConsistencyFunction", "boundary_coeffs", "noise_level"]
