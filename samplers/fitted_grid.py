"""A time grid fitted to one model, sampler and step budget: the step times that make the sampler's
endpoints closest to the probability-flow ODE's on pilot draws.

A fixed rule (uniform log-SNR, Karras rho = 7) spends steps where nothing happens for a given model:
far above the data's scale, where the flow is linear, and far below its smallest feature, where the
denoiser is constant. The fitted grid moves them to where the denoiser changes. Like Align Your
Steps (Sabour et al. 2024) or GITS (Chen et al. 2024) it is computed once per model and budget and
then reused for every batch; unlike them it minimises the sampler's own error directly:

    E(t_1..t_{n-1}) = sqrt( mean_b ||S_t(x_T^b) - Phi(x_T^b)||^2 / mean_b ||Phi(x_T^b) - mean Phi||^2 )

over B pilot prior draws x_T^b, where S_t is the sampler on the grid T = t_0 > t_1 > ... > t_n = eps
and Phi the converged flow (`solve_flow` at rtol = atol = ref_tol). The interior times are
parametrised through the log-SNR, lambda_i = lambda(T) + (lambda(eps) - lambda(T)) c_i with
c = cumsum(softmax(w)), so every w in R^n is a strictly decreasing grid with the ends fixed; Powell's
method (derivative-free, deterministic) minimises E(w) from the `init` grid.

Cost: one reference solve of the pilot plus up to max_evals sampler runs on it, i.e. up to
max_evals * steps * B network evaluations. Rare trajectories (ones that cross between modes late)
dominate E, so the pilot must be large enough to hold some: on a 2-D two-mode mixture, 1,000 draws
fitted a grid as good on new draws as on the pilot, while 256 draws overfitted it.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy.optimize import minimize

from sde_lib import SDE, GaussianMixture
from sde_lib.checks import check_cond, check_positive_int
from samplers.base import get_sampler, sampler_info
from samplers.grids import check_grid, get_grid
from samplers.guards import check_eps
from samplers.ode import solve_flow

Tensor = torch.Tensor
__all__ = ["fit_grid", "endpoint_error"]
# E of a grid the sampler cannot run: worse than any it can, and finite (Powell's line searches
# take differences of E values, which inf would turn into nan).
_FAILED = 1e6


def endpoint_error(x: Tensor, ref: Tensor) -> float:
    """E: RMS_b ||x_b - ref_b|| / RMS_b ||ref_b - mean ref||, for samples x and flow endpoints ref [B, ...]."""
    spread = float((ref - ref.mean(0)).pow(2).flatten(1).sum(1).mean().sqrt())
    return float((x - ref).pow(2).flatten(1).sum(1).mean().sqrt()) / spread


def fit_grid(sde: SDE, score_fn: Callable[..., Tensor], shape: Sequence[int], *,
             steps: int,                                # the grid's steps (steps + 1 times)
             sampler: str = "unipc",                    # a deterministic registered sampler
             sampler_kwargs: Optional[dict] = None,     # its options (order=3, method="rk4", ...)
             init: Union[str, Tensor] = "uniform_log_snr",  # the grid the fit starts from
             eps: Optional[float] = None,               # last time; default sde.sampling_eps
             max_evals: Optional[int] = None,           # sampler runs; default 100 * steps
             ref_tol: float = 1e-6,                     # rtol = atol of the reference solve
             seed: int = 0, device=None, dtype=torch.float32,
             cond: Optional[Mapping[str, Tensor]] = None) -> Tuple[Tensor, Dict[str, float]]:
    """The fitted grid: float64 times [steps + 1] from T down to eps, for `grid=` of `sampler`, and
    what the fit did: {"pilot_error_initial", "pilot_error" (E of the init and fitted grids),
    "evals" (sampler runs), "network_calls" (score calls, each on the whole pilot batch), "n_pilot"}.
    shape = (B, ...) is the pilot batch, drawn from the prior with `seed` and run as one batch;
    `cond` (e.g. {"y": labels [B]}) goes to every score call. `steps` are the grid's intervals: for a
    singlestep sampler (dpm_solver, dpmpp_2s) each interval is one update of full order, so a run costs
    order x steps calls. Every argument is checked, and the sampler
    probed for determinism, before the first network call."""
    steps = check_positive_int(steps, "steps")
    max_evals = check_positive_int(100 * steps if max_evals is None else max_evals, "max_evals")
    if len(shape) < 1 or shape[0] < 2:
        raise ValueError(f"shape must start with a pilot batch of at least 2 draws, got {tuple(shape)}")
    if not (isinstance(ref_tol, (int, float)) and 0 < ref_tol < 1):
        raise ValueError(f"ref_tol must be in (0, 1), got {ref_tol!r}")
    eps = check_eps(sde, eps)
    cond = check_cond(score_fn, cond, shape[0])
    kwargs = dict(sampler_kwargs or {})
    run = check_fittable(sampler, kwargs, sde)
    start = get_grid(init, sde, steps, eps, "uniform_log_snr")
    if len(start) != steps + 1 or float(start[-1]) != eps:
        raise ValueError(f"init must be a grid of steps + 1 = {steps + 1} times ending at eps = {eps:g}, "
                         f"got {len(start)} times ending at {float(start[-1]):g}")
    # The pilot draws and their converged flow endpoints Phi(x_T), the target of every sampler run.
    calls = 0  # network calls so far
    x_T = sde.prior_sampling(tuple(shape), torch.Generator(device or "cpu").manual_seed(seed), device, dtype)
    ref, calls = solve_flow(sde, score_fn, x_T, sde.T, eps, rtol=ref_tol, atol=ref_tol, cond=cond)
    # w in R^n -> a grid: increments softmax(w) of the log-SNR path from lambda(T) to lambda(eps).
    lam_T, lam_eps = (float(v) for v in sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64)))

    def grid_of(w: np.ndarray) -> Tensor:
        c = np.concatenate([[0.0], np.cumsum(np.exp(w - w.max()))])
        t = sde.t_from_log_snr(torch.from_numpy(lam_T + (lam_eps - lam_T) * c / c[-1]))
        t[0], t[-1] = sde.T, eps
        return t

    def error(w: np.ndarray) -> float:  # E of the grid of w
        nonlocal calls
        try:
            x, nfe = run(sde, score_fn, x_T.shape, grid=check_grid(grid_of(w), sde), x_T=x_T, device=device,
                         dtype=dtype, cond=cond, **kwargs)
        except (ValueError, FloatingPointError):  # times too close to tell apart, or a blown-up step
            return _FAILED
        calls += nfe
        e = endpoint_error(x, ref)
        return e if math.isfinite(e) else _FAILED

    # Powell from the init grid's w; the fitted grid is kept only if it beats the init grid.
    lam = sde.log_snr(start)
    w0 = torch.diff((lam - lam_T) / (lam_eps - lam_T)).log().numpy()
    initial = error(w0)
    best = minimize(error, w0, method="Powell", options={"maxfev": max_evals, "xtol": 1e-3, "ftol": 1e-4})
    w, fitted = (best.x, float(best.fun)) if best.fun < initial else (w0, initial)
    info = {"pilot_error_initial": initial, "pilot_error": fitted, "evals": int(best.nfev) + 1,
            "network_calls": calls, "n_pilot": int(shape[0])}
    return grid_of(w), info


def check_fittable(name: str, kwargs: dict, sde: SDE) -> Callable:
    """The registered sampler `name` with options `kwargs` if a grid can be fitted for it: it steps
    along a grid it is given (unlike `adaptive`, or `ode` with an adaptive method, which choose their
    own steps) and is a function of x_T (two seeds give the same samples on 1-D Gaussian data, whose
    score is known without a network). A ValueError naming `sampler` otherwise."""
    fn = get_sampler(name)
    if sampler_info(name).own_steps(kwargs):
        raise ValueError(f"sampler {name!r} with {kwargs or 'its defaults'} chooses its own steps, so it has no "
                         "grid to fit; fit the grid of a fixed-step sampler (unipc, dpmpp_2m, ddim, heun, ode with "
                         "method='rk4', ...)")
    gaussian = GaussianMixture([1.0], [[0.0]], [[1.0]]).score_fn(sde)  # exact, and no network
    x_T = torch.ones(2, 1, dtype=torch.float64)
    a, b = (fn(sde, gaussian, (2, 1), steps=4, x_T=x_T, seed=seed, dtype=torch.float64, **kwargs)[0]
            for seed in (0, 1))
    if not torch.equal(a, b):
        raise ValueError(f"sampler {name!r} with {kwargs or 'its defaults'} is stochastic (two seeds give different "
                         "samples from one x_T); a grid can be fitted for a deterministic sampler only "
                         "(e.g. ddim with eta=0, heun with s_churn=0, unipc, dpmpp_2m)")
    return fn
