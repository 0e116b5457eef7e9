"""Correctors: MCMC steps that leave p_t invariant at a fixed time t (Langevin dynamics).

Each corrector is one small class registered by name; `update(x, t, generator)` returns
`(x, x_mean)` and makes `n_steps` score calls. Step sizes follow a signal-to-noise ratio (Langevin)
or the noise level (annealed Langevin dynamics).
"""
from __future__ import annotations

import abc
import math
from typing import Optional

import torch

from sde_lib import SDE, append_dims
from samplers.base import noise_like
from sde_lib.checks import check_one_of, check_positive
from sde_lib.registry import Registry

Tensor = torch.Tensor
_CORRECTORS = Registry("corrector")


def register_corrector(name: str):
    """Class decorator: `@register_corrector(name="...")` adds a corrector to the registry."""
    return _CORRECTORS.register(name)


def get_corrector(name: str):
    """The corrector class registered under `name`; a ValueError lists the registered names otherwise."""
    return _CORRECTORS.get(name)


def list_correctors() -> list:
    return _CORRECTORS.names()


def _norm(v: Tensor) -> Tensor:
    """Per-sample L2 norm [B]."""
    return v.flatten(1).norm(dim=1)


class Corrector(abc.ABC):
    def __init__(self, sde: SDE, score_fn, snr: float, n_steps: int):
        check_positive(snr, "snr")
        self.sde, self.score_fn, self.snr, self.n_steps = sde, score_fn, snr, n_steps

    def update(self, x: Tensor, t: Tensor, generator=None, t_next: Optional[Tensor] = None):
        """n_steps Langevin steps x <- x + e s(x, t) + sqrt(2 e) z, with e from `step_size`.

        `t_next` is the next time of the sampler's grid, which sets the VP step-size factor
        alpha(t)^2 / alpha(t_next)^2 (default: one step of the SDE's own N-step chain)."""
        x_mean = x
        t_net = t.to(x.dtype)
        for _ in range(self.n_steps):
            grad = self.score_fn(x, t_net)
            z = noise_like(x, generator)
            e = append_dims(self.step_size(grad, z, t, t_next).to(x.dtype), x.ndim)
            x_mean = torch.addcmul(x, e, grad)
            x = torch.addcmul(x_mean, (2 * e).sqrt(), z)
        return x, x_mean

    @abc.abstractmethod
    def step_size(self, grad: Tensor, z: Tensor, t: Tensor, t_next: Optional[Tensor] = None) -> Tensor:
        """Per-sample Langevin step size e [B]."""


@register_corrector(name="langevin")
class LangevinCorrector(Corrector):
    """Langevin corrector of Song et al. 2021 (Algorithm 4/5): the step is set so that the
    signal-to-noise ratio ||e s|| / ||sqrt(2e) z|| equals `snr`:

        e = 2 alpha (snr ||z|| / ||s||)^2,  alpha = `SDE.langevin_alpha(t)` (1 - beta_i for VP, 1 for VE).

    `norm` says whose norms: "batch" (the batch means of ||z|| and ||s||, as in the paper) or
    "sample" (each sample's own ||s||, so a sample's trajectory does not depend on its
    batch-mates). With "sample", ||z|| is replaced by its root mean square sqrt(D): a step size
    that grows with the very noise it scales inflates the variance (measured on a 64-D
    Gaussian with 100 reverse-diffusion steps: +8% with the sample's own ||z||, +5% with sqrt(D),
    +2% for "batch"). Per-sample norms need high dimensions, where ||s|| concentrates: in 2-D a sample near a mode has ||s|| ~ 0 and takes a huge step (a 2-D
    mixture's component stds came out 2-4x too large), so "batch" is the default and "sample"
    suits images.
    """

    def __init__(self, sde: SDE, score_fn, snr: float, n_steps: int, norm: str = "batch"):
        super().__init__(sde, score_fn, snr, n_steps)
        check_one_of("norm", norm, ("batch", "sample"))
        self.norm = norm

    def step_size(self, grad, z, t, t_next=None):
        if self.norm == "batch":
            z_norm, g_norm = _norm(z).mean(dtype=torch.float64), _norm(grad).mean(dtype=torch.float64)
        else:
            z_norm, g_norm = math.sqrt(z[0].numel()), _norm(grad).double()
        ratio = z_norm / g_norm.clamp_min(torch.finfo(torch.float64).tiny)
        return (2 * self.snr ** 2) * self.sde.langevin_alpha(t, t_next) * ratio ** 2


@register_corrector(name="ald")
class AnnealedLangevinDynamics(Corrector):
    """Annealed Langevin dynamics of NCSN (Song & Ermon 2019): a step proportional to the
    noise variance, e = 2 alpha (snr sigma(t))^2."""

    def step_size(self, grad, z, t, t_next=None):
        sigma = self.sde.marginal_coeffs(t)[1]
        return 2 * self.sde.langevin_alpha(t, t_next) * (self.snr * sigma) ** 2


@register_corrector(name="none")
class NoneCorrector(Corrector):
    """No corrector step."""

    def __init__(self, sde, score_fn, snr=1.0, n_steps=0, **unused):
        self.sde, self.score_fn, self.snr, self.n_steps = sde, score_fn, snr, 0

    def update(self, x, t, generator=None, t_next=None):
        return x, x

    def step_size(self, grad, z, t, t_next=None):  # never called
        raise NotImplementedError
