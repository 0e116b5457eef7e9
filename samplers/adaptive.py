"""An adaptive-step solver of the reverse SDE (Jolicoeur-Martineau et al. 2021, "Gotta Go Fast When
Generating Data with Score-Based Models", Algorithm 1).

From (x, t) a step of size h towards eps draws one Brownian increment sqrt(h) z and forms two
estimates of x at t - h, with the reverse SDE dx = [f(t) x - g(t)^2 s(x, t)] dt + g(t) dw_bar
written as K(x, t) = -h [f(t) x - g(t)^2 s(x, t)] + g(t) sqrt(h) z:

    x'  = x + K1,               K1 = K(x, t)           (Euler-Maruyama, first order)
    x'' = x + (K1 + K2) / 2,    K2 = K(x', t - h)      (improved Euler, the same z)

Their difference estimates the local error, scaled by the mixed tolerance per coordinate,

    delta = max(atol, rtol * max(|x'|, |x'_prev|)),   E = ||(x' - x'') / delta||_2 / sqrt(D),

with x'_prev the x' of the last accepted step. A step with E <= 1 is accepted and continues from
x'' (extrapolation); either way the next step size is h <- min(t - eps, theta h E^-r).

Whose error decides, `norm`:
  "sample" (the paper's): the RMS is over one sample's D coordinates and every sample keeps its own
    t and h, so its path does not depend on its batch-mates (a sample that is done waits at eps
    with h = 0). E then depends on the step's own noise z, and accepting only steps whose z gave a
    small E biases the noise the sampler keeps; over thousands of coordinates (images) E
    concentrates and the bias vanishes, but over a few it does not: on the 2-D mixture of the tests
    (exact score) component stds come out 20-85% too wide, and under VE the weights 0.40 / 0.60
    instead of 0.3 / 0.7, at every tolerance tried (rtol 0.01 to 0.1).
  "batch" (the default): the RMS is over every coordinate of the batch and the whole batch takes one
    step size, which concentrates E in any dimension (same mixture, 20,000 samples, rtol 0.003 to
    0.05: weights within 0.01, stds and means within 2%; defaults: 184 NFE under VE, 112 under VP).
    A sample's steps then depend on its batch-mates, as with batch-norm Langevin correctors; use
    "sample" for high-dimensional data when that matters.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from sde_lib import SDE, append_dims
from samplers.base import coeff, denoised, register_sampler, start
from samplers.guards import check_finite, check_positive_int

Tensor = torch.Tensor
__all__ = ["adaptive_sample"]


@register_sampler("adaptive")
def adaptive_sample(sde: SDE, score_fn: Callable[..., Tensor], shape: Sequence[int], *,
                    rtol: float = 0.05,                   # relative tolerance of the mixed error
                    atol: float = 0.01,                   # absolute tolerance, in the data's units
                    h_init: float = 0.01,                 # first step size, in t
                    theta: float = 0.9,                   # safety factor of the step-size update
                    r: float = 0.9,                       # exponent of the step-size update
                    norm: str = "batch",                  # "batch" or "sample": whose error sets h
                    denoise: bool = False,                # final Tweedie step at eps (1 NFE)
                    max_nfe: int = 100_000,               # raise rather than run on past this
                    steps: None = None,                   # chosen by the solver: must be None
                    grid: None = None,                    # chosen by the solver: must be None
                    eps: Optional[float] = None,          # last time; default sde.sampling_eps
                    x_T: Optional[Tensor] = None,         # start here instead of a prior sample
                    seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                    device=None, dtype=torch.float32,
                    callback: Optional[Callable[[dict], None]] = None,
                    progress: bool = False, **cond) -> Tuple[Tensor, int]:
    """Samples [shape] from the reverse SDE with adaptive steps from T down to eps (module docstring).

    `steps` and `grid` take no value: the solver picks its times, and `rtol` / `atol` its accuracy.
    Each attempt costs two score calls on the whole batch (with norm="sample", samples already at
    eps ride along with h = 0), so nfe = 2 * attempts (+1 with denoise). `callback` receives
    {i (attempt), t (the time, a float; each sample's time [B] with norm="sample"), x, x_mean (x without this step's noise), denoised
    (E[x_0 | x] before the attempt), h (next step sizes [B]), accepted ([B] bool)} after every attempt.
    """
    _check_options(steps, grid, rtol, atol, h_init, theta, r, norm)
    max_nfe = check_positive_int(max_nfe, "max_nfe")
    run = start(sde, score_fn, shape, steps=1, grid=None, eps=eps, x_T=x_T, seed=seed, generator=generator,
                device=device, dtype=dtype, cond=cond)
    score, x, (T, eps) = run.score, run.x, run.grid.tolist()
    rsde = sde.reverse(score)
    t = run.times(0).clone()
    h = torch.full_like(t, min(h_init, T - eps))
    x_prev = x  # x' of the last accepted step; the start point before any
    bar = tqdm(total=T - eps, disable=not progress, desc="adaptive_sample")
    i = 0
    while bool((t > eps).any()):
        if score.nfe + 2 > max_nfe:
            raise RuntimeError(f"adaptive_sample needs more than max_nfe={max_nfe} score calls; "
                               f"{int((t > eps).sum())} samples have not reached eps (loosen rtol / atol)")
        score.step = i
        sqrt_h, z = coeff(h.sqrt(), x), run.noise()
        # Euler-Maruyama proposal x' = x + K1.
        s1 = score(x, t.to(x.dtype))
        x0 = denoised(sde, x, t, s1) if callback is not None else None
        drift, g = rsde.sde(x, t, s1)
        k1_mean, k1_noise = -coeff(h, x) * drift, coeff(g, x) * sqrt_h * z
        x1 = x + k1_mean + k1_noise
        # Improved Euler x'' = x + (K1 + K2) / 2 with the same Brownian increment.
        drift2, g2 = rsde.sde(x1, t - h)
        k2_mean, k2_noise = -coeff(h, x) * drift2, coeff(g2, x) * sqrt_h * z
        x2 = x + 0.5 * (k1_mean + k1_noise + k2_mean + k2_noise)
        # Mixed-tolerance error of x' against x'': RMS over each sample's coordinates, or the batch's.
        delta = torch.maximum(rtol * torch.maximum(x1.abs(), x_prev.abs()), torch.full_like(x1, atol))
        sq = ((x1 - x2) / delta).flatten(1).double().pow(2)
        err = sq.mean(1).sqrt() if norm == "sample" else sq.mean().sqrt().expand(len(t))
        # Accept where E <= 1 (samples at eps stay there), then resize every step.
        ok = (err <= 1) & (t > eps)
        keep = append_dims(ok, x.ndim)
        x, x_prev = torch.where(keep, x2, x), torch.where(keep, x1, x_prev)
        t_new = torch.where(h >= t - eps, torch.full_like(t, eps), t - h)  # land exactly on eps
        t = torch.where(ok, t_new, t)
        h = torch.minimum(t - eps, theta * h * err.clamp_min(1e-8) ** -r)
        check_finite(x, "adaptive", i, t)
        bar.update(T - float(t.max()) - bar.n)  # the slowest sample's progress
        if callback is not None:
            x_mean = torch.where(keep, x2 - 0.5 * (k1_noise + k2_noise), x)
            callback({"i": i, "t": t, "x": x, "x_mean": x_mean, "h": h, "accepted": ok, "denoised": x0})
        i += 1
    bar.close()
    if denoise:
        # Tweedie's E[x_0 | x] at eps removes the noise left there.
        score.step = i
        x = denoised(sde, x, t, score(x, t.to(x.dtype)))
    return x, score.nfe


def _check_options(steps, grid, rtol, atol, h_init, theta, r, norm) -> None:
    if steps is not None:
        raise ValueError(f"steps must be None for adaptive_sample, which chooses its own steps "
                         f"(set rtol / atol for accuracy), got {steps!r}")
    if grid is not None:
        raise ValueError("grid must be None for adaptive_sample, which chooses its own times; "
                         "pass eps for the last time")
    for name, v in (("rtol", rtol), ("atol", atol), ("h_init", h_init), ("theta", theta), ("r", r)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if norm not in ("batch", "sample"):
        raise ValueError(f"norm must be 'batch' (one step size for the batch) or 'sample' (one per sample), "
                         f"got {norm!r}")
