"""Predictors: one step of the reverse-time SDE (or ODE) from time t to t_next < t.

Each predictor is one small class registered by name; `update(x, t, t_next, generator)` returns
`(x, x_mean)`: the new sample and its value before noise was added. `t` and `t_next` are float64
tensors [B]. Every predictor makes exactly one score call per step ('none' makes none).
"""
from __future__ import annotations

import abc


import torch

from sde_lib import SDE
from sde_lib.registry import Registry
from samplers.base import coeff, noise_like

Tensor = torch.Tensor
_PREDICTORS = Registry("predictor")


def register_predictor(name: str):
    """Class decorator: `@register_predictor(name="...")` adds a predictor to the registry."""
    return _PREDICTORS.register(name)


def get_predictor(name: str):
    """The predictor class registered under `name`; a ValueError lists the registered names otherwise."""
    return _PREDICTORS.get(name)


def list_predictors() -> list:
    return _PREDICTORS.names()


class Predictor(abc.ABC):
    def __init__(self, sde: SDE, score_fn, probability_flow: bool = False):
        self.sde, self.score_fn, self.probability_flow = sde, score_fn, probability_flow
        self.rsde = sde.reverse(score_fn, probability_flow)

    @abc.abstractmethod
    def update(self, x: Tensor, t: Tensor, t_next: Tensor, generator=None):
        """One step from t to t_next; returns (x, x_mean)."""


@register_predictor(name="euler_maruyama")
class EulerMaruyamaPredictor(Predictor):
    """x <- x + drift dt + g sqrt(|dt|) z with dt = t_next - t < 0 (Euler for the ODE)."""

    def update(self, x, t, t_next, generator=None):
        dt = t_next - t
        drift, g = self.rsde.sde(x, t)
        x_mean = torch.addcmul(x, drift, coeff(dt, x))
        if self.probability_flow:
            return x_mean, x_mean
        return torch.addcmul(x_mean, coeff(g * (-dt).sqrt(), x), noise_like(x, generator)), x_mean


@register_predictor(name="reverse_diffusion")
class ReverseDiffusionPredictor(Predictor):
    """Runs the forward chain's step backwards (Song et al. 2021, eq. 46):

    x <- x - f + G^2 s(x, t) + G z, with (f, G) the exact forward step from t_next to t.
    """

    def update(self, x, t, t_next, generator=None):
        rev_f, G = self.rsde.discretize(x, t, t - t_next)
        x_mean = x - rev_f
        if self.probability_flow:
            return x_mean, x_mean
        return torch.addcmul(x_mean, coeff(G, x), noise_like(x, generator)), x_mean


@register_predictor(name="ancestral_sampling")
class AncestralSamplingPredictor(Predictor):
    """Samples the Gaussian posterior q(x_s | x_t, x_0) at x_0 = Tweedie's estimate, s = t_next.

    With x_t = a x_s + b z the exact transition (`SDE.transition_coeffs`), this is

        x_s = (x_t + b^2 s(x_t, t)) / a + (b sigma(s) / sigma(t)) z,

    DDPM's ancestral step for VP (a = sqrt(1 - beta), b^2 = beta) and SMLD's for VE
    (a = 1, b^2 = sigma_t^2 - sigma_s^2); the same formula serves sub-VP and any linear SDE.
    """

    def __init__(self, sde: SDE, score_fn, probability_flow: bool = False):
        if probability_flow:  # refused before any call: the corrector may call the score first
            raise ValueError("predictor 'ancestral_sampling' has no probability-flow form; "
                             "use 'euler_maruyama' or 'reverse_diffusion' with probability_flow=True")
        super().__init__(sde, score_fn, probability_flow)

    def update(self, x, t, t_next, generator=None):
        # The posterior q(x_s | x_t, x_0) at x_0 = Tweedie's estimate: mean a sigma_s^2/sigma_t^2 x_t
        # + alpha_s b^2/sigma_t^2 x0_hat, which simplifies to (x_t + b^2 s) / a.
        a, b = self.sde.transition_coeffs(t, t_next)
        sigma_t, sigma_s = self.sde.marginal_coeffs(t)[1], self.sde.marginal_coeffs(t_next)[1]
        x0 = self.sde.tweedie(x, t, self.score_fn(x, t.to(x.dtype)))
        alpha_s = self.sde.marginal_coeffs(t_next)[0]
        x_mean = torch.addcmul(coeff(a * (sigma_s / sigma_t) ** 2, x) * x, coeff(alpha_s * (b / sigma_t) ** 2, x), x0)
        return torch.addcmul(x_mean, coeff(b * sigma_s / sigma_t, x), noise_like(x, generator)), x_mean


@register_predictor(name="none")
class NonePredictor(Predictor):
    """No predictor step (corrector-only sampling, e.g. NCSN's annealed Langevin dynamics)."""

    def update(self, x, t, t_next, generator=None):
        return x, x
