"""Time grids: decreasing float64 times T = t_0 > t_1 > ... > t_n = eps that samplers step along.

Each grid is a small function `(sde, steps, eps) -> Tensor [steps + 1]`, registered by name, and
every sampler takes `grid=` as a name or as explicit times. Spacings:

  uniform_t        t_i uniform in [eps, T]                      (score_sde's PC and ODE samplers)
  uniform_log_snr  lambda(t_i) uniform                          (DPM-Solver's default)
  karras           sigma_i^(1/rho) uniform, sigma = e^-lambda   (EDM, Karras et al. 2022, eq. 5)
  quadratic        t_i = eps + (T - eps) u_i^2, u_i uniform     (DDIM's quadratic skip)
"""
from __future__ import annotations

from typing import Union

import torch

from sde_lib import SDE
from sde_lib.checks import check_positive
from sde_lib.registry import Registry

Tensor = torch.Tensor
_GRIDS = Registry("grid")


def register_grid(name: str):
    """Function decorator: `@register_grid("name")` makes a grid selectable by `grid="name"`."""
    def wrap(fn):
        _GRIDS.register(name)(fn)
        return fn
    return wrap


def list_grids() -> list:
    return _GRIDS.names()


def _u(steps: int) -> Tensor:
    """steps + 1 points from 1 down to 0, float64."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


@register_grid("uniform_t")
def uniform_t(sde: SDE, steps: int, eps: float) -> Tensor:
    """t_i = eps + (T - eps) (1 - i/n)."""
    return torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)


@register_grid("uniform_log_snr")
def uniform_log_snr(sde: SDE, steps: int, eps: float) -> Tensor:
    """lambda(t_i) evenly spaced between lambda(T) and lambda(eps)."""
    lam_T, lam_eps = sde.log_snr(_ends(sde, eps))
    return _pin_ends(sde.t_from_log_snr(lam_T + (lam_eps - lam_T) * (1 - _u(steps))), sde, eps)


@register_grid("karras")
def karras(sde: SDE, steps: int, eps: float, rho: float = 7.0) -> Tensor:
    """EDM's sigma_i = (sigma_max^(1/rho) + (i/n) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho in the
    noise-to-signal ratio sigma = sigma(t) / alpha(t) = e^-lambda (the VE sigma itself for VE)."""
    check_positive(rho, "rho")
    s_max, s_min = (-sde.log_snr(_ends(sde, eps))).exp()
    sig = (s_min ** (1 / rho) + _u(steps) * (s_max ** (1 / rho) - s_min ** (1 / rho))) ** rho
    return _pin_ends(sde.t_from_log_snr(-sig.log()), sde, eps)


@register_grid("quadratic")
def quadratic(sde: SDE, steps: int, eps: float) -> Tensor:
    """t_i = eps + (T - eps) u_i^2 with u_i uniform: finer steps near the data, as DDIM's quadratic skip."""
    return eps + (sde.T - eps) * _u(steps) ** 2


def _ends(sde: SDE, eps: float) -> Tensor:
    return torch.tensor([sde.T, eps], dtype=torch.float64)


def _pin_ends(t: Tensor, sde: SDE, eps: float) -> Tensor:
    """Set the end points exactly (an inverse map returns them to ~1e-15 only)."""
    t[0], t[-1] = sde.T, eps
    return t


def check_grid(grid: Tensor, sde: SDE, name: str = "grid") -> Tensor:
    """`grid` as float64 [n + 1], n >= 1: strictly decreasing times inside (0, T]."""
    t = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
    if t.ndim != 1 or t.numel() < 2:
        raise ValueError(f"{name} must be a 1-D tensor of at least 2 times, got shape {tuple(t.shape)}")
    if not bool(torch.all(t[1:] < t[:-1])):
        i = int(torch.nonzero(t[1:] >= t[:-1])[0])
        raise ValueError(f"{name} must be strictly decreasing from T to the last time, but {name}[{i}] = "
                         f"{float(t[i]):.6g} <= {name}[{i + 1}] = {float(t[i + 1]):.6g}")
    if not (float(t[-1]) > 0 and float(t[0]) <= sde.T):
        raise ValueError(f"{name} must lie in (0, T] = (0, {sde.T:g}] for {type(sde).__name__}, "
                         f"got times from {float(t[0]):.6g} down to {float(t[-1]):.6g}")
    return t


def get_grid(grid: Union[str, Tensor, None], sde: SDE, steps: int, eps: float, default: str = "uniform_t") -> Tensor:
    """The grid a sampler steps along: a registered name (None: `default`) built with `steps` steps
    and last time `eps`, or explicit times (checked by `check_grid`; `steps` and `eps` unused)."""
    if grid is None or isinstance(grid, str):
        return check_grid(_GRIDS.get(grid or default)(sde, steps, eps), sde)
    return check_grid(grid, sde)
