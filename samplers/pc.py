"""The predictor-corrector sampler (Song et al. 2021, Algorithm 1)."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from sde_lib import SDE
from samplers.base import register_sampler, start
from samplers.guards import check_finite, check_positive_int
from samplers.correctors import get_corrector
from samplers.predictors import get_predictor

Tensor = torch.Tensor


def tweedie_denoise(sde: SDE, score_fn, x: Tensor, t: Tensor) -> Tensor:
    """Tweedie's formula E[x_0 | x_t] = (x_t + sigma(t)^2 s(x_t, t)) / alpha(t); one score call."""
    return sde.tweedie(x, t, score_fn(x, t.to(x.dtype)))


@register_sampler("pc")
def pc_sample(sde: SDE, score_fn: Callable[..., Tensor], shape: Sequence[int], *,
              predictor: str = "reverse_diffusion",     # name in samplers.list_predictors()
              corrector: str = "langevin",              # name in samplers.list_correctors()
              snr: float = 0.16,                        # corrector's signal-to-noise ratio
              n_steps: int = 1,                         # corrector steps per time step
              corrector_options: Optional[dict] = None, # more corrector arguments, e.g. {"norm": "sample"}
              steps: Optional[int] = None,              # time steps; default sde.N
              N: Optional[int] = None,                  # the same as steps (score_sde's name)
              grid=None,                                # a grid name (samplers.list_grids()) or times; default uniform_t
              eps: Optional[float] = None,              # last time; default sde.sampling_eps
              probability_flow: bool = False,           # predictor follows the ODE instead
              denoise: bool = True,                     # final Tweedie step at eps (1 NFE)
              x_T: Optional[Tensor] = None,             # start here instead of a prior sample
              generator: Optional[torch.Generator] = None,
              seed: Optional[int] = None,
              device=None, dtype=torch.float32,
              callback: Optional[Callable[[dict], None]] = None,
              progress: bool = False, **cond) -> Tuple[Tensor, int]:
    """Draw samples [shape] by alternating corrector and predictor steps from T down to eps.

    On the grid T = t_0 > ... > t_n = eps, step i runs the corrector at t_i, then the predictor
    from t_i to t_{i+1}; `denoise` finishes with Tweedie's formula at eps. `callback` receives a
    dict {i, t (the new time, a float), x, x_mean} after every step. `cond` goes to every score call.
    Returns (samples, nfe), nfe the real score calls.
    """
    if steps is not None and N is not None and steps != N:
        raise ValueError(f"pass steps or N (the same thing), not both: steps={steps!r}, N={N!r}")
    steps = sde.N if steps is None and N is None else (steps if steps is not None else N)
    n_steps = check_positive_int(n_steps, "n_steps") if corrector != "none" else 0
    pred_cls, corr_cls = get_predictor(predictor), get_corrector(corrector)
    run = start(sde, score_fn, shape, steps=steps, grid=grid, eps=eps, x_T=x_T, seed=seed, generator=generator,
                device=device, dtype=dtype, cond=cond)
    x, score = run.x, run.score
    pred = pred_cls(sde, score, probability_flow)
    corr = corr_cls(sde, score, snr, n_steps, **(corrector_options or {}))
    n = len(run.grid) - 1
    for i in tqdm(range(n), disable=not progress, desc="pc_sample"):
        t, t_next = run.times(i), run.times(i + 1)
        score.step = i
        x, x_mean = corr.update(x, t, run.generator, t_next=t_next)
        x, x_mean = pred.update(x, t, t_next, run.generator)
        check_finite(x, f"predictor {predictor!r} / corrector {corrector!r}", i, t)
        if callback is not None:
            callback({"i": i, "t": t_next, "x": x, "x_mean": x_mean})
    if denoise:
        score.step = n
        x = tweedie_denoise(sde, score, x, run.times(n))
    return x, score.nfe
