"""The predictor-corrector sampler (Song et al. 2021, Algorithm 1)."""
from __future__ import annotations

from typing import Optional

import torch
from tqdm.auto import trange

from sde_lib import SDE
from sde_lib.checks import check_positive_int
from samplers.base import at, ignore, sampler
from samplers.correctors import get_corrector
from samplers.predictors import get_predictor

Tensor = torch.Tensor
__all__ = ["pc_loop", "pc_sample"]


def pc_loop(sde: SDE, score, x: Tensor, grid: Tensor, *,
            predictor: str = "reverse_diffusion",     # name in samplers.list_predictors()
            corrector: str = "langevin",              # name in samplers.list_correctors()
            snr: float = 0.16,                        # corrector's signal-to-noise ratio
            n_steps: int = 1,                         # corrector steps per time step
            corrector_options: Optional[dict] = None, # more corrector arguments, e.g. {"norm": "sample"}
            probability_flow: bool = False,           # predictor follows the ODE instead
            generator: Optional[torch.Generator] = None, callback=ignore, progress: bool = False) -> Tensor:
    """Alternate corrector and predictor steps along the grid T = t_0 > ... > t_n: step i runs the
    corrector at t_i, then the predictor from t_i to t_{i+1}. Score calls: n (1 + n_steps), fewer with
    predictor or corrector 'none'. Set up by `pc_sample` with steps default sde.N, the uniform-t grid
    and denoise=True (Tweedie's formula at the last time). `callback` receives {i, t (the new time), x,
    x_mean (x before the predictor's noise)} after every step.
    """
    if predictor == "none" and corrector == "none":
        raise ValueError("predictor and corrector are both 'none': x would stay the prior draw; choose a "
                         "predictor (e.g. 'reverse_diffusion') or a corrector (e.g. 'langevin')")
    n_steps = check_positive_int(n_steps, "n_steps") if corrector != "none" else 0
    pred = get_predictor(predictor)(sde, score, probability_flow)
    corr = get_corrector(corrector)(sde, score, snr, n_steps, **(corrector_options or {}))
    for i in trange(len(grid) - 1, disable=not progress, desc="pc_sample"):
        t, t_next = at(grid, i, x), at(grid, i + 1, x)
        x, x_mean = corr.update(x, t, generator, t_next=t_next)
        x, x_mean = pred.update(x, t, t_next, generator)
        callback({"i": i, "t": t_next, "x": x, "x_mean": x_mean})
    return x


def _chain_steps(sde: SDE) -> int:
    """sde.N"""
    return sde.N


pc_sample = sampler("pc", pc_loop, default_steps=_chain_steps, denoise=True)
