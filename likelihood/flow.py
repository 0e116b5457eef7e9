"""Exact likelihood by the probability-flow ODE (instantaneous change of variables), and the
quantized data's side of it: dequantization, bits per dimension, encode / decode.

With dx/dt = f~(x, t) = f(t) x - 1/2 g(t)^2 s(x, t), the ODE from eps to T carries a data point
x to a latent z = x(T), and

    log p_eps(x) = log p_T(z) + int_eps^T div_x f~(x(t), t) dt.

The divergence is the trace of the drift's Jacobian: exact (D vector-Jacobian products, for small
D) or Hutchinson-Skilling, E_v[v^T (df~/dx) v] with Rademacher or Gaussian probes v held fixed
along the solve. Each ODE evaluation costs one score call and one vector-Jacobian product per
probe, for the whole batch at once.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Tuple

import torch
from torchdiffeq import odeint

from sde_lib import SDE
from sde_lib.checks import check_cond, check_one_of, check_positive_int
from samplers.guards import GuardedScore, check_eps, check_finite, check_float_dtype, make_generator
from samplers.ode import flow_drift, solve_flow, solver_options

Tensor = torch.Tensor
DIVERGENCES = ("exact", "rademacher", "gaussian")


def _probes(x: Tensor, divergence: str, n_probes: int, generator) -> Optional[Tensor]:
    """Fixed Hutchinson probes [P, B, ...] with E[v v^T] = I, or None for the exact trace."""
    if divergence == "exact":
        return None
    v = torch.randn((n_probes,) + tuple(x.shape), generator=generator, dtype=x.dtype).to(x.device)
    return v.sign() if divergence == "rademacher" else v


def _divergence(drift: Tensor, x: Tensor, probes: Optional[Tensor]) -> Tensor:
    """div_x drift per sample [B]: exact by D VJPs, or the probe average of v^T J v."""
    if probes is None:
        flat = drift.flatten(1)
        div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for d in range(flat.shape[1]):
            (g,) = torch.autograd.grad(flat[:, d].sum(), x, retain_graph=True)
            div = div + g.flatten(1)[:, d]
        return div
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for p, v in enumerate(probes):
        (vjp,) = torch.autograd.grad(drift, x, v, retain_graph=p + 1 < len(probes))
        total = total + (vjp * v).flatten(1).sum(1)
    return total / len(probes)


def _augmented_drift(sde: SDE, score_fn, probes: Optional[Tensor], eps: float):
    """torchdiffeq func(t, (x, delta)) -> (f~(x, t), div f~(x, t)), with f~ the sampler's own
    probability-flow drift (`samplers.ode.flow_drift`, t clamped to [eps, T])."""
    drift_fn = flow_drift(sde, score_fn, eps, sde.T)

    def func(t: Tensor, state):
        x = state[0]
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            drift = drift_fn(t, x)
            div = _divergence(drift, x, probes)
        return drift.detach(), div.detach()

    return func


def log_likelihood(sde: SDE, score_fn, x: Tensor, *, divergence: str = "exact",
                   n_probes: int = 1,                   # Hutchinson probes per evaluation
                   rtol: float = 1e-5, atol: float = 1e-5,
                   eps: float = 1e-5,                   # start time of the flow: log p_eps(x)
                   method: str = "dopri5", steps: Optional[int] = None,
                   generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
                   cond: Optional[Mapping[str, Tensor]] = None) -> Tuple[Tensor, Tensor, int]:
    """log p_eps(x) in nats for a batch x [B, ...], by one ODE solve for the whole batch; `cond`
    (e.g. {"y": labels [B]}) goes to every score call.

    Returns (logp [B], z = x(T) [B, ...], nfe). Computes in x's dtype: pass float64 data (and a
    float64-capable score_fn) for float64 throughout.
    """
    check_one_of("divergence", divergence, DIVERGENCES)
    n_probes = check_positive_int(n_probes, "n_probes")
    eps = check_eps(sde, eps)
    options = solver_options(method, steps, eps, sde.T)
    check_float_dtype(x.dtype, "log_likelihood")
    score = GuardedScore(score_fn, check_cond(score_fn, cond, x.shape[0]))
    if x.shape[0] == 0:  # an empty batch: empty results, no call
        return x.new_zeros(0), x, 0
    probes = _probes(x, divergence, n_probes, make_generator(generator, seed))
    ts = torch.tensor([eps, sde.T], dtype=x.dtype, device=x.device)
    delta0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    zs, deltas = odeint(_augmented_drift(sde, score, probes, eps), (x, delta0), ts,
                        rtol=rtol, atol=atol, method=method, options=options)
    z, delta = zs[-1], deltas[-1]
    check_finite(z, f"likelihood ODE ({method!r})", f"the end, after {score.nfe} score calls", ts[-1])
    return sde.prior_logp(z) + delta, z, score.nfe


def data_scale(centered: bool) -> Tuple[float, float]:
    """(a, b) of the map x = a y + b from data y in [0, 1] to model space: (2, -1) when centered
    (x in [-1, 1]), else (1, 0)."""
    return (2.0, -1.0) if centered else (1.0, 0.0)


def dequantize(k: Tensor, generator: Optional[torch.Generator] = None, *, noise: Optional[Tensor] = None,
               n_bins: int = 256, dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform dequantization y = (k + u) / n_bins, u ~ U[0, 1), so y lies in [k/n, (k+1)/n).

    k: integer levels [N, ...] (e.g. uint8 pixels); noise: a fixed u of k's shape (to reuse one
    dequantization), else drawn with `generator`. A density on y bounds the discrete likelihood of
    k: log P(k) >= log p_y(y) - D log n_bins (`bits_per_dim`).
    """
    levels = k.to(dtype)
    if noise is None:
        noise = torch.rand(k.shape, generator=generator, dtype=dtype).to(k.device)
    y = (levels + noise.to(dtype)) / n_bins
    # k + u rounds up to k + 1 when u is within half an ulp of 1; keep the interval half-open.
    upper = torch.nextafter((levels + 1) / n_bins, torch.zeros((), dtype=dtype, device=k.device))
    return torch.minimum(y, upper)


def bits_from_nats(nats: Tensor, D: int) -> Tensor:
    """A log-likelihood or NLL of D dimensions in nats, in bits per dimension: nats / (D ln 2)."""
    return nats / (D * math.log(2))


def nats_from_bits(bpd: Tensor, D: int) -> Tensor:
    """The inverse of `bits_from_nats`."""
    return bpd * (D * math.log(2))


def dequantize_to_model_space(k: Tensor, generator: Optional[torch.Generator] = None, *, n_bins: int = 256,
                               centered: bool = True, dtype: torch.dtype = torch.float32) -> Tensor:
    """x = a y + b [N, ...], with y = `dequantize(k)` in [0, 1) and (a, b) = `data_scale(centered)`: the
    model-space point at which a density bounds the discrete likelihood of levels k (`dequantized_bits_per_dim`)."""
    a, b = data_scale(centered)
    return a * dequantize(k, generator, n_bins=n_bins, dtype=dtype) + b


def dequantized_bits_per_dim(logp_x: Tensor, D: int, *, n_bins: int = 256, centered: bool = True) -> Tensor:
    """Bits per dimension [B] of levels k from a log-density (or a lower bound on it) in model space at
    x = `dequantize_to_model_space(k)`, D dimensions per sample:

        bpd = -(log p_x(x) + D log a) / (D ln 2) + log2(n_bins),

    since log p_y(y) = log p_x(x) + D log a (x = a y + b) and log P(k) >= log p_y(y) - D log n_bins."""
    a, _ = data_scale(centered)
    return -bits_from_nats(logp_x + D * math.log(a), D) + math.log2(n_bins)


def bits_per_dim(sde: SDE, score_fn, k: Tensor, *, n_bins: int = 256, centered: bool = True,
                 generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
                 **ll_kwargs) -> Tuple[Tensor, Tensor, int]:
    """Bits per dimension of quantized data k in {0, ..., n_bins - 1} (e.g. uint8 images).

    `dequantize` gives y = (k + u) / n_bins, u ~ U[0, 1)^D, a density on [0, 1]^D whose
    log-likelihood lower-bounds that of the discrete data; the model sees x = a y + b with
    (a, b) = `data_scale(centered)`. By the change of variables log p_y(y) = log p_x(x) + D log a,
    and log P(k) >= log p_y(y) - D log n_bins, so

        bpd = -(log p_x(x) + D log a) / (D ln 2) + log2(n_bins).

    Returns (bpd [B], z, nfe); `ll_kwargs` (cond among them) go to `log_likelihood`.
    """
    check_levels(k, n_bins)
    dtype = ll_kwargs.pop("dtype", torch.float32)
    generator = make_generator(generator, seed)
    x = dequantize_to_model_space(k, generator, n_bins=n_bins, centered=centered, dtype=dtype)
    logp, z, nfe = log_likelihood(sde, score_fn, x, generator=generator, **ll_kwargs)
    return dequantized_bits_per_dim(logp, math.prod(k.shape[1:]), n_bins=n_bins, centered=centered), z, nfe


def check_levels(k: Tensor, n_bins: int) -> None:
    """k must hold integer levels in {0, ..., n_bins - 1} (e.g. uint8 pixels)."""
    if k.is_floating_point() and not torch.equal(k, k.round()):
        raise ValueError("k must hold integer bin indices (e.g. uint8 pixel values), got non-integer floats")
    lo, hi = (int(k.min()), int(k.max())) if k.numel() else (0, 0)  # python ints: uint8 would wrap 256 to 0
    if lo < 0 or hi >= n_bins:
        raise ValueError(f"k must lie in {{0, ..., {n_bins - 1}}}, got values in [{lo}, {hi}]")


def levels_to_model_space(k: Tensor, n_bins: int = 256, centered: bool = True, dtype=torch.float64) -> Tensor:
    """x = a k / (n_bins - 1) + b: the training data's values of integer levels k ((a, b) = `data_scale`)."""
    a, b = data_scale(centered)
    return a * k.to(dtype) / (n_bins - 1) + b


def encode(sde: SDE, score_fn, x: Tensor, *, eps: float = 1e-5, rtol: float = 1e-5, atol: float = 1e-5,
           method: str = "dopri5", steps: Optional[int] = None, cond: Optional[Mapping[str, Tensor]] = None) -> Tensor:
    """The latent z = x(T) of data x = x(eps) under the probability-flow ODE."""
    return solve_flow(sde, score_fn, x, check_eps(sde, eps), sde.T, rtol=rtol, atol=atol,
                      method=method, steps=steps, cond=cond)[0]


def decode(sde: SDE, score_fn, z: Tensor, *, eps: float = 1e-5, rtol: float = 1e-5, atol: float = 1e-5,
           method: str = "dopri5", steps: Optional[int] = None, cond: Optional[Mapping[str, Tensor]] = None) -> Tensor:
    """The data x = x(eps) of a latent z = x(T): the inverse of `encode`."""
    return solve_flow(sde, score_fn, z, sde.T, check_eps(sde, eps), rtol=rtol, atol=atol,
                      method=method, steps=steps, cond=cond)[0]
