"""The predictor-corrector sampler (Song et al. 2021, Algorithm 1)."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from sde_lib import SDE, append_dims
from samplers.guards import GuardedScore, check_eps, check_finite, check_positive_int, make_generator
from samplers.correctors import get_corrector
from samplers.grids import uniform_grid
from samplers.predictors import get_predictor

Tensor = torch.Tensor


def tweedie_denoise(sde: SDE, score_fn, x: Tensor, t: Tensor) -> Tensor:
    """Tweedie's formula E[x_0 | x_t] = (x_t + sigma(t)^2 s(x_t, t)) / alpha(t); one score call."""
    alpha, sigma = sde.marginal_coeffs(t)
    s = score_fn(x, t.to(x.dtype))
    return (x + append_dims((sigma ** 2).to(x.dtype), x.ndim) * s) / append_dims(alpha.to(x.dtype), x.ndim)


def pc_sample(sde: SDE, score_fn: Callable[[Tensor, Tensor], Tensor], shape: Sequence[int], *,
              predictor: str = "reverse_diffusion",     # name in samplers.list_predictors()
              corrector: str = "langevin",              # name in samplers.list_correctors()
              snr: float = 0.16,                        # corrector's signal-to-noise ratio
              n_steps: int = 1,                         # corrector steps per time step
              corrector_options: Optional[dict] = None, # more corrector arguments, e.g. {"norm": "sample"}
              N: Optional[int] = None,                  # time steps; default sde.N
              eps: Optional[float] = None,              # last time; default sde.sampling_eps
              probability_flow: bool = False,           # predictor follows the ODE instead
              denoise: bool = True,                     # final Tweedie step at eps (1 NFE)
              x_T: Optional[Tensor] = None,             # start here instead of a prior sample
              generator: Optional[torch.Generator] = None,
              seed: Optional[int] = None,
              device=None, dtype=torch.float32,
              callback: Optional[Callable[[dict], None]] = None,
              progress: bool = False) -> Tuple[Tensor, int]:
    """Draw samples [shape] by alternating corrector and predictor steps from T down to eps.

    On the grid T = t_0 > ... > t_N = eps, step i runs the corrector at t_i, then the predictor
    from t_i to t_{i+1}; `denoise` finishes with Tweedie's formula at eps. `callback` receives a
    dict {i, t, x, x_mean} after every step. Returns (samples, nfe), nfe the real score calls.
    """
    eps = check_eps(sde, eps)
    N = check_positive_int(sde.N if N is None else N, "N")
    n_steps = check_positive_int(n_steps, "n_steps") if corrector != "none" else 0
    score = GuardedScore(score_fn)
    pred = get_predictor(predictor)(sde, score, probability_flow)
    corr = get_corrector(corrector)(sde, score, snr, n_steps, **(corrector_options or {}))
    generator = make_generator(generator, seed, device)
    x = sde.prior_sampling(shape, generator, device, dtype) if x_T is None else x_T
    grid = uniform_grid(sde, N, eps).to(x.device)
    ones = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
    for i in tqdm(range(N), disable=not progress, desc="pc_sample"):
        t, t_next = grid[i] * ones, grid[i + 1] * ones
        score.step = i
        x, x_mean = corr.update(x, t, generator)
        x, x_mean = pred.update(x, t, t_next, generator)
        check_finite(x, f"predictor {predictor!r} / corrector {corrector!r}", i, t)
        if callback is not None:
            callback({"i": i, "t": t_next, "x": x, "x_mean": x_mean})
    if denoise:
        score.step = N
        x = tweedie_denoise(sde, score, x, grid[-1] * ones)
    return x, score.nfe
