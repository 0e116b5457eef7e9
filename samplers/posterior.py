"""Posterior samplers for linear inverse problems y = A x + sigma_y n, by name, with one calling
convention (`samplers.posterior_base`):

    x, info = samplers.posterior_sample("ddrm", sde, score_fn, shape, observation, y, sigma_y=0.05,
                                        steps=20, seed=0)

  particle     twisted SMC, asymptotically exact as `particles` grow (samplers.particle)      needs the SVD
  ddrm         DDRM, eta / eta_b (samplers.ddrm)                                                needs the SVD
  pigdm        Pi-GDM, DDIM on a pseudoinverse-guided score (samplers.guided_posterior)        needs the SVD
  dps          DPS, a gradient step on ||y - A x0_hat|| (samplers.guided_posterior)            any A
  replacement  score_sde's replacement, RePaint with `resample` > 1 (samplers.controllable)   noiseless inpainting

info holds each one's cost ("network_calls", "network_evaluations_per_sample", "backward_passes") and
the time "t" of the samples it returns.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Callable, Dict, Optional, Sequence

import torch

from sde_lib import SDE
from samplers.controllable import inpaint_sample
from samplers.ddrm import ddrm_posterior_sample
from samplers.guided_posterior import dps_posterior_sample, pigdm_posterior_sample
from samplers.observations import Inpainting, LinearObservation, check_problem
from samplers.particle import particle_posterior_sample

Tensor = torch.Tensor
__all__ = ["posterior_sample", "list_posterior_samplers", "get_posterior_sampler", "posterior_own_options",
           "replacement_posterior_sample"]


def replacement_posterior_sample(sde: SDE, score_fn, shape: Sequence[int], observation: LinearObservation, y: Tensor, *,
                                 sigma_y: float = 0.0, sampler: str = "ancestral", resample: int = 1, jump: int = 1,
                                 sampler_options: Optional[dict] = None, steps: Optional[int] = None, grid=None,
                                 eps: Optional[float] = None, seed: Optional[int] = None,
                                 generator: Optional[torch.Generator] = None, device=None, dtype=torch.float32,
                                 cond: Optional[dict] = None, progress: bool = False):
    """Replacement (`resample` = 1) or RePaint (`resample` > 1, `jump`) with `sampler`, for a noiseless
    Inpainting observation: `samplers.inpaint_sample` in the common calling convention."""
    check_problem(observation, y, shape, sigma_y, "replacement", needs_svd=False)
    if not isinstance(observation, Inpainting) or sigma_y != 0:
        raise ValueError(f"replacement conditions on known pixels: it needs an Inpainting observation and sigma_y = 0, "
                         f"got {type(observation).__name__} with sigma_y = {sigma_y!r}; use particle, ddrm, pigdm or dps")
    image = observation.v(torch.cat([y, y.new_zeros(len(y), observation.d - observation.m)], 1))
    x, nfe = inpaint_sample(sde, score_fn, shape, y=image.to(dtype), mask=observation.mask, sampler=sampler,
                            steps=steps, resample=resample, jump=jump, grid=grid, eps=eps, seed=seed,
                            generator=generator, device=device, dtype=dtype, progress=progress,
                            sampler_options=sampler_options, cond=cond)
    return x, {"network_calls": nfe, "network_evaluations_per_sample": nfe, "backward_passes": 0,
               "t": _last_time(sde, grid, eps)}


def _last_time(sde: SDE, grid, eps) -> float:
    """The time replacement's samples are at: the grid's last time, or eps (default sde.sampling_eps)."""
    if grid is not None and not isinstance(grid, str):
        return float(torch.as_tensor(grid)[-1])
    return float(sde.sampling_eps if eps is None else eps)


_SOLVERS: Dict[str, Callable] = {
    "particle": particle_posterior_sample, "ddrm": ddrm_posterior_sample, "pigdm": pigdm_posterior_sample,
    "dps": dps_posterior_sample, "replacement": replacement_posterior_sample}
NEEDS_SVD = ("particle", "ddrm", "pigdm")


def list_posterior_samplers() -> list:
    """The names `posterior_sample` takes."""
    return sorted(_SOLVERS)


def get_posterior_sampler(name: str) -> Callable:
    """The sampler function of `name`, or a ValueError listing the names (and the nearest one)."""
    if name not in _SOLVERS:
        near = difflib.get_close_matches(str(name), _SOLVERS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"posterior sampler must be one of {list_posterior_samplers()}, got {name!r}{hint}")
    return _SOLVERS[name]


def posterior_own_options(name: str) -> list:
    """The options `name` takes beyond the common ones (particles, eta, zeta, ...)."""
    common = set(inspect.signature(replacement_posterior_sample).parameters) - {"sampler", "resample", "jump",
                                                                                "sampler_options"}
    return [p for p in inspect.signature(get_posterior_sampler(name)).parameters if p not in common]


def posterior_sample(method: str, sde: SDE, score_fn, shape: Sequence[int], observation: LinearObservation, y: Tensor,
                     **kwargs):
    """x, info = the posterior sampler `method`'s samples [shape] given y (module docstring); an option it
    does not take is a TypeError naming the ones it does."""
    fn = get_posterior_sampler(method)
    takes = inspect.signature(fn).parameters
    for key in kwargs:
        if key not in takes:
            raise TypeError(f"posterior sampler {method!r} got an unknown option {key!r}; its own options are "
                            f"{posterior_own_options(method)}")
    return fn(sde, score_fn, shape, observation, y, **kwargs)
