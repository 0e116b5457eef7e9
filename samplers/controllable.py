"""Controllable generation with any sampler: inpainting and colorization by replacement (Song et al.
2021, appendix I), RePaint's resampling (Lugmayr et al. 2022), and Imagen's static and dynamic
thresholding of the x0 estimate (Saharia et al. 2022).

Replacement. With x_0 observed on the known coordinates, y = x_0[known], the forward process noises the
known part by itself: x_t[known] = alpha(t) y + sigma(t) z. On a grid T = t_0 > ... > t_n = eps the loop
takes one step of a registered sampler from t_i to t_{i+1} on the whole x, then overwrites the known part
with a fresh forward-noised copy of y:

    x <- sampler step t_i -> t_{i+1} of x,      x[known] <- alpha(t_{i+1}) y + sigma(t_{i+1}) z.

The unknown part follows the score of p_t(x_unknown | x_t[known]): it conditions on one noisy copy of
y, not on y, which biases the result for correlated data (on the correlated Gaussians of the tests,
the mean of the unknown part is off by 0.2-0.3 of the conditional spread, its covariance by 15-40%).

Resampling (RePaint). Each interval is taken `resample` = r times: after stepping and replacing, x is
noised back with the exact forward transition x_{t_i} = a x_{t_{i+1}} + b z ((a, b) =
`sde.transition_coeffs(t_i, t_{i+1})`) and stepped again, so the unknown part meets r draws of the
known part's noise and moves towards p_t(x_unknown | y). With `jump` = j > 1 the loop steps down j
intervals before noising back across all j at once (RePaint's jump length). r = 1 is plain replacement.

Known coordinates of a transform. Colorization observes the gray level, a coordinate of u = Q^T x with
Q orthogonal, not of x. Replacement happens in u: u = Q^T x, u[known] <- alpha y_u + sigma z, x = Q u.
Q^T z is again N(0, I), so this is the forward process in u. Inpainting is the identity Q.

Thresholding. `thresholded_score` clips the x0 estimate implied by a score (Tweedie) and returns the
score that implies the clipped estimate, so every sampler uses it.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Sequence, Tuple

import torch
from tqdm.auto import trange

from sde_lib import SDE, append_dims
from sde_lib.checks import check_cond, check_positive_int, cond_keys
from samplers.base import COMMON, Sampler, check_x_T, noise_like, sampler_info, start
from samplers.grids import check_grid, get_grid
from samplers.guards import GuardedScore, check_device, check_eps, check_finite, make_generator

Tensor = torch.Tensor
__all__ = ["inpaint_sample", "colorize_sample", "colorization_basis", "thresholded_score", "threshold_x0"]

# ----- inpainting and colorization --------------------------------------------------------------------

def inpaint_sample(sde: SDE, score_fn: Callable[..., Tensor], shape: Sequence[int], *,
                   y: Tensor,                            # observed data: shape, or shape[1:] for the batch
                   mask: Tensor,                         # 1 / True where x is known; shaped like y
                   sampler: str = "pc",                  # a name in samplers.list_samplers() but "adaptive"
                   steps: Optional[int] = None,          # grid intervals (with a grid name or the default)
                   resample: int = 1,                    # RePaint's r: passes over each interval (1: replacement)
                   jump: int = 1,                        # RePaint's jump length: intervals per noise-back
                   grid=None,                            # a grid name or times; default uniform_t
                   eps: Optional[float] = None,          # last time; default sde.sampling_eps
                   denoise: bool = False,                # final Tweedie step at the last time (1 NFE)
                   x_T: Optional[Tensor] = None,         # start here instead of a prior sample
                   seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                   device=None, dtype=torch.float32,
                   callback: Optional[Callable[[dict], None]] = None, progress: bool = False,
                   sampler_options: Optional[dict] = None,  # the sampler's own arguments, e.g. {"eta": 1.0}
                   cond: Optional[Mapping[str, Tensor]] = None) -> Tuple[Tensor, int]:
    """Samples [shape] of x given x[mask] = y[mask], by replacement with `sampler` one grid interval
    at a time and, with resample > 1, RePaint's resampling (module docstring).

    The run is set up once (grid, prior draw, generator, the score with `cond` bound); each interval is
    one call of the sampler's loop on grid[i:i+2] with `sampler_options` (DPM-Solver and DPM-Solver++(2S):
    one update of full order), so a multistep sampler (dpmpp_2m, dpmpp_3m) loses its history at
    every interval and takes first-order steps; "ode" needs a fixed-step method
    (sampler_options={"method": "rk4"}); "adaptive" chooses its own times and is refused. The noise of
    the known part comes from the run's generator too, so `seed` fixes the samples. The result equals
    y (in the run's dtype) on the known coordinates exactly. nfe = the sum of the calls' nfe (+1 with denoise).
    `callback` receives {i (interval), t (new time, a float), x, x_mean (= x), denoised (the sampler's,
    when it reports one), resample (pass over this interval)} after every interval.
    """
    y, mask = _check_observation(y, mask, shape)
    return _replacement_loop(sde, score_fn, shape, y, mask, None, sampler=sampler, steps=steps,
                             resample=resample, jump=jump, grid=grid, eps=eps, denoise=denoise, x_T=x_T,
                             seed=seed, generator=generator, device=device, dtype=dtype, callback=callback,
                             progress=progress, sampler_options=sampler_options, cond=cond)


def colorization_basis(dtype=torch.float64, device=None) -> Tensor:
    """The orthogonal 3 x 3 matrix Q whose columns are (1, 1, 1)/sqrt(3), (-2, 1, 1)/sqrt(6), (0, 1, -1)/sqrt(2)
    (score_sde's `get_pc_colorizer`, to its float32 rounding): u = Q^T x per pixel puts the gray level
    (R + G + B)/sqrt(3) = sqrt(3) mean(R, G, B) in u[0] and two color coordinates in u[1:]."""
    r3, r6, r2 = math.sqrt(3), math.sqrt(6), math.sqrt(2)
    return torch.tensor([[1 / r3, -2 / r6, 0.0], [1 / r3, 1 / r6, 1 / r2], [1 / r3, 1 / r6, -1 / r2]],
                        dtype=dtype, device=device)


def colorize_sample(sde: SDE, score_fn: Callable[..., Tensor], shape: Sequence[int], *,
                    gray: Tensor,                        # [B, 1, ...] or [1, ...]: mean over the 3 channels
                    sampler: str = "pc", steps: Optional[int] = None, resample: int = 1, jump: int = 1,
                    grid=None, eps: Optional[float] = None, denoise: bool = False,
                    x_T: Optional[Tensor] = None, seed: Optional[int] = None,
                    generator: Optional[torch.Generator] = None, device=None, dtype=torch.float32,
                    callback: Optional[Callable[[dict], None]] = None, progress: bool = False,
                    sampler_options: Optional[dict] = None,
                    cond: Optional[Mapping[str, Tensor]] = None) -> Tuple[Tensor, int]:
    """Samples [shape] = [B, 3, ...] of RGB x given its gray level mean(x[:, c], c) = gray, by
    replacement in u = Q^T x (Q = `colorization_basis()`, channel axis 1), where the gray level is the
    known coordinate u[:, 0] = sqrt(3) gray; then x = Q u. Arguments and nfe as `inpaint_sample`. The
    result's channel mean equals gray up to float rounding.
    """
    if len(shape) < 2 or shape[1] != 3:
        raise ValueError(f"shape must be [B, 3, ...] (RGB on axis 1) for colorization, got {tuple(shape)}")
    want = ((shape[0], 1) + tuple(shape[2:]), (1,) + tuple(shape[2:]))
    if not torch.is_tensor(gray) or tuple(gray.shape) not in want:
        got = tuple(gray.shape) if torch.is_tensor(gray) else type(gray).__name__
        raise ValueError(f"gray must be a tensor of shape {want[0]} (one per sample) or {want[1]} (one for "
                         f"the batch), the mean over the 3 channels of shape {tuple(shape)}; got {got}")
    gray = gray.double() if gray.ndim == len(shape) else gray.double()[None]  # [B or 1, 1, ...]
    # u = Q^T x: the known u[:, 0] = sqrt(3) gray, the two color coordinates u[:, 1:] unknown.
    y = torch.cat([math.sqrt(3) * gray, torch.zeros_like(gray).expand(-1, 2, *gray.shape[2:])], 1)
    mask = (torch.arange(3) == 0).reshape(3, *(1,) * (len(shape) - 2)).expand(y.shape)
    return _replacement_loop(sde, score_fn, shape, y, mask, colorization_basis(), sampler=sampler, steps=steps,
                             resample=resample, jump=jump, grid=grid, eps=eps, denoise=denoise, x_T=x_T,
                             seed=seed, generator=generator, device=device, dtype=dtype, callback=callback,
                             progress=progress, sampler_options=sampler_options, cond=cond)


def _replacement_loop(sde, score_fn, shape, y, mask, Q, *, sampler, steps, resample, jump, grid, eps, denoise,
                      x_T, seed, generator, device, dtype, callback, progress, sampler_options, cond):
    """The loop of `inpaint_sample` with the known coordinates those of u = Q^T x along axis 1 (Q None: x)."""
    resample, jump = check_positive_int(resample, "resample"), check_positive_int(jump, "jump")
    if grid is None or isinstance(grid, str):
        times = get_grid(grid, sde, check_positive_int(steps, "steps (the number of grid intervals)"),
                         check_eps(sde, eps), "uniform_t")
    else:
        times = check_grid(grid, sde)
        if steps is not None and steps != len(times) - 1:
            raise ValueError(f"steps = {steps!r} contradicts the grid of {len(times)} times; pass one of them")
    info, options = _interval_sampler(sampler, sampler_options, len(times) - 1)
    check_x_T(x_T, shape)
    on = (check_device(device), dtype) if x_T is None else (x_T.device, x_T.dtype)
    for i in range(len(times) - 1):  # every interval's checks (DDIM's eta fits each step), no call
        info.dry_run(sde, times[i:i + 2], options, shape, *on)
    score = GuardedScore(score_fn, check_cond(score_fn, cond, shape[0]))
    g = make_generator(generator, seed, device)
    x = start(sde, shape, x_T, g, device, dtype)
    if x.shape[0] == 0:  # an empty batch: nothing to complete, no call to make
        return x, 0
    times, y, mask = times.to(x.device), y.to(x.device, x.dtype), mask.to(x.device)
    Q = None if Q is None else Q.to(x.device, x.dtype)
    B, n, last_step = x.shape[0], len(times) - 1, {}

    def observed(t: Tensor) -> Tensor:
        # A fresh forward draw of the observation at time t: alpha(t) y + sigma(t) z.
        alpha, sigma = (append_dims(c.expand(B).to(x.dtype), x.ndim) for c in sde.marginal_coeffs(t))
        return alpha * y + sigma * noise_like(x, g)

    def replace(x: Tensor, known: Tensor) -> Tensor:
        # x with the known coordinates of u = Q^T x set to `known`.
        u = torch.where(mask, known, x if Q is None else _along_channels(x, Q))
        return u if Q is None else _along_channels(u, Q.T)

    x = replace(x, observed(times[0]))
    with torch.no_grad():
        for first in trange(0, n, jump, disable=not progress, desc=f"inpaint ({sampler})"):
            last = min(first + jump, n)
            for r in range(resample):
                for i in range(first, last):
                    # One sampler step t_i -> t_{i+1} on the whole x, then the known part replaced.
                    x = replace(info.run(sde, score, x, times[i:i + 2], options, g, last_step.update), observed(times[i + 1]))
                    if callback is not None:
                        callback({"i": i, "t": float(times[i + 1]), "x": x, "x_mean": x,
                                  "denoised": last_step.get("denoised"), "resample": r})
                if r < resample - 1:
                    # RePaint: back to t_first by the exact forward transition, to step this block again.
                    a, b = sde.transition_coeffs(times[first], times[last])
                    x = a.to(x.dtype) * x + b.to(x.dtype) * noise_like(x, g)
        if denoise:
            # Tweedie's E[x_0 | x] at the last time removes the noise left on the unknown part.
            t = times[n].expand(B)
            x = sde.tweedie(x, t, score(x, t.to(x.dtype)))
    check_finite(x, f"inpainting with {sampler!r}", n, times[n])
    return replace(x, y), score.nfe  # the data are known: y itself


def _along_channels(x: Tensor, Q: Tensor) -> Tensor:
    """u = Q^T x along axis 1 (u_j = sum_i x_i Q_ij), for x [B, C, ...] and Q [C, C]."""
    return (x.movedim(1, -1) @ Q).movedim(-1, 1)


def _check_observation(y, mask, shape) -> Tuple[Tensor, Tensor]:
    """y and mask as tensors of shape `shape` or shape[1:] (one for the batch); mask as bool."""
    allowed = f"{tuple(shape)} (one per sample) or {tuple(shape[1:])} (one for the batch)"
    for name, v in (("mask", mask), ("y", y)):
        if not torch.is_tensor(v) or tuple(v.shape) not in (tuple(shape), tuple(shape[1:])):
            got = f"shape {tuple(v.shape)}" if torch.is_tensor(v) else type(v).__name__
            raise ValueError(f"{name} must be a tensor of shape {allowed} for samples of shape {tuple(shape)}; "
                             f"got {got}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            bad = mask[(mask != 0) & (mask != 1)][0]
            raise ValueError(f"mask must hold 0 / 1 (or bool; 1 where x is known), got the value {float(bad)!r}")
        mask = mask == 1
    if tuple(mask.shape) != tuple(y.shape):
        mask, y = torch.broadcast_tensors(mask, y)
    return y, mask


def _interval_sampler(name: str, options: Optional[dict], n: int) -> Tuple[Sampler, dict]:
    """The sampler and its loop's options for one grid interval of n: a singlestep DPM-Solver makes one
    update of full order, Heun's total churn is shared by the n one-interval calls."""
    info = sampler_info(name)  # a ValueError listing the registered samplers if unknown
    options = dict(options or {})
    taken = [k for k in options if k in COMMON]
    if taken:
        raise ValueError(f"sampler_options must not set {taken[0]!r}: the inpainting loop sets "
                         f"{', '.join(COMMON)} (pass steps, grid, eps, ... to the loop itself)")
    info.check_options(options)
    if info.own_steps(options):
        raise ValueError(f"sampler {name!r} with {options or 'its defaults'} chooses its own times, so it cannot "
                         "run one grid interval at a time; use a fixed-step sampler ('ode' with "
                         "sampler_options={'method': 'rk4'}, 'euler', 'midpoint', ...)")
    if name == "heun" and isinstance(options.get("s_churn"), (int, float)):
        # EDM's s_churn is a total over the grid's n steps: each one-interval call gets its share.
        options["s_churn"] = options["s_churn"] / n
    # A planned sampler's loop options for one interval (singlestep: one update of full order).
    return info, info.plan(None, 1, options)[1] if info.plan else options


# ----- thresholding ---------------------------------------------------------------------------------

def threshold_x0(x0: Tensor, percentile: float = 0.995, static: bool = False) -> Tensor:
    """Imagen's thresholding of an x0 estimate [B, ...] for data in [-1, 1].

    static:  x0' = clip(x0, -1, 1).
    dynamic: per sample, s = max(1, the `percentile` quantile of |x0| over its coordinates) and
             x0' = clip(x0, -s, s) / s; a sample already inside [-1, 1] has s = 1 and stays as it is.
    """
    p = _check_percentile(percentile)
    if static:
        return x0.clamp(-1, 1)
    s = append_dims(_quantile(x0.abs().flatten(1), p).clamp_min(1), x0.ndim)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def thresholded_score(sde: SDE, score_fn: Callable[..., Tensor], percentile: float = 0.995,
                      static: bool = False) -> Callable[..., Tensor]:
    """score_fn'(x, t, **cond): the score whose Tweedie x0 estimate is `threshold_x0` of score_fn's.

    From x0 = (x + sigma^2 s) / alpha, the score implying x0' is s' = (alpha x0' - x) / sigma^2, computed as
        s' = s + alpha (x0' - x0) / sigma^2,
    so that where nothing is clipped (x0' = x0) s' is s exactly. One score_fn call per call; usable with
    every sampler. percentile in (0, 1] (Imagen: 0.995); static=True clips to [-1, 1] instead.
    """
    p = _check_percentile(percentile)

    def thresholded(x: Tensor, t: Tensor, **cond) -> Tensor:
        s = score_fn(x, t, **cond)
        x0 = sde.tweedie(x, t, s)
        alpha, sigma = sde.marginal_coeffs(torch.as_tensor(t, dtype=torch.float64, device=x.device))
        return s + append_dims((alpha / sigma ** 2).to(x.dtype), x.ndim) * (threshold_x0(x0, p, static) - x0)

    thresholded.cond_keys = cond_keys(score_fn)  # what score_fn takes, for the samplers' one check
    return thresholded


def _quantile(v: Tensor, p: float) -> Tensor:
    """The p-quantile of each row of v [B, D], interpolated linearly between order statistics (numpy's
    default, as torch.quantile, which refuses inputs over 2^24 elements)."""
    v = v.sort(dim=1).values
    pos = p * (v.shape[1] - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, v.shape[1] - 1)
    return v[:, lo] + (pos - lo) * (v[:, hi] - v[:, lo])


def _check_percentile(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ValueError(f"percentile must be a quantile level in (0, 1] (Imagen: 0.995; 1 is the largest |x0|), "
                         f"got {p!r}")
    return float(p)
