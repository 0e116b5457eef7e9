"""The variational bound of the discrete reverse chain on a time grid (DDPM's L_vlb), per sample, in nats:
a prior KL, one Gaussian KL per reverse step (written through the SDE's exact transitions,
`sde_lib.reverse_step`), and the discretised Gaussian decoder of the integer data at the last time.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Tuple

import torch

from sde_lib import SDE, append_dims, reverse_step
from sde_lib.checks import check_cond, check_one_of
from samplers.grids import check_grid
from samplers.guards import GuardedScore, make_generator
from likelihood.flow import bits_from_nats, check_levels, data_scale, levels_to_model_space

Tensor = torch.Tensor
BOUND_VARIANCES = ("fixed_small", "fixed_large", "analytic", "learned_range")  # learned_range: a variance head


def _log_prob_between(lower: Tensor, upper: Tensor) -> Tensor:
    """log(Phi(upper) - Phi(lower)) for lower < upper, without cancellation in either tail."""
    flip = lower > 0  # both in the upper tail: Phi(u) - Phi(l) = Phi(-l) - Phi(-u)
    lo, hi = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi).clamp(max=1.0))


def discretized_gaussian_log_likelihood(k: Tensor, mean: Tensor, variance: Tensor, *, n_bins: int = 256,
                                        centered: bool = True) -> Tensor:
    """log P(k) [B], summed over all but the batch dimension, of integer levels k [B, ...] under
    N(mean, variance) (model space, float64) discretised to the levels' bins: level k sits at
    x_k = `levels_to_model_space(k)`, its bin is [x_k - h, x_k + h] with h = a / (2 (n_bins - 1)), and the
    first and last bins reach to -inf and +inf, so the n_bins probabilities sum to 1 (DDPM's decoder)."""
    check_levels(k, n_bins)
    a, _ = data_scale(centered)
    x, h, sd = levels_to_model_space(k, n_bins, centered), a / (2 * (n_bins - 1)), variance.sqrt()
    upper = torch.where(k == n_bins - 1, torch.full_like(x, math.inf), (x + h - mean) / sd)
    lower = torch.where(k == 0, torch.full_like(x, -math.inf), (x - h - mean) / sd)
    return _log_prob_between(lower, upper).flatten(1).sum(1)


def gaussian_kl(mean_q: Tensor, var_q: Tensor, mean_p: Tensor, var_p: Tensor) -> Tensor:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) [B] in float64, summed over all but the batch dimension."""
    mean_q, var_q, mean_p, var_p = (v.double() for v in (mean_q, var_q, mean_p, var_p))
    kl = 0.5 * (torch.log(var_p / var_q) + (var_q + (mean_q - mean_p) ** 2) / var_p - 1)
    return kl.flatten(1).sum(1)


def vlb_terms(sde: SDE, score_fn, k: Tensor, grid: Tensor, *, variance: str = "fixed_small",
              gamma: Optional[Tensor] = None, data_range: float = 2.0, n_bins: int = 256, centered: bool = True,
              generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
              cond: Optional[Mapping[str, Tensor]] = None, dtype: torch.dtype = torch.float32) -> dict:
    """The variational bound on -log P(k) of the discrete reverse chain on `grid` (T = t_0 > ... > t_n), per
    sample, in nats (float64), for integer data k [B, ...] (x_0 = `levels_to_model_space(k)` in `dtype`, the
    network's; the terms themselves are computed in float64):

      prior   = KL(q(x_{t_0} | x_0) || N(0, prior_std^2 I));
      steps   [B, n], steps[:, i] = KL(q(x_{t_{i+1}} | x_{t_i}, x_0) || p(x_{t_{i+1}} | x_{t_i})) at one draw
                x_{t_i} ~ q(x_{t_i} | x_0), with p's mean c_t x_t + c_0 x0_hat and variance `variance`
                (`sde_lib.reverse_step`; the expected KL is 1/2 (r - 1 - log r) + 1/2 log(sigma*^2 / beta~) per
                dimension for the optimal mean, r = sigma*^2 / sigma^2);
      decoder = -log p(k | x_{t_n}), the discretised Gaussian (`discretized_gaussian_log_likelihood`) with
                mean x0_hat(x_{t_n}) and variance (`decoder_variance`): fixed_large (sigma / alpha)^2 at t_n
                (the noise left there, in data units); fixed_small the last step's beta~ (improved DDPM's
                clipping); analytic (sigma / alpha)^2 (1 - gamma[n]), clipped to [that beta~, (data_range / 2)^2];
                learned_range the network's v between the fixed small and fixed large ones;
      total   = prior + steps.sum(1) + decoder,   an upper bound on -log P(k) under the model.

    gamma ("analytic"): E||eps_hat||^2 / d at every time of the grid [n + 1] (`samplers.estimate_gamma`).
    "learned_range" needs score_fn to be a `models.Precond` of a network with a variance head (its
    `denoise_and_v` gives x0_hat and v from one call). One network call per step and sample batch, n + 1
    in all; `cond` goes to every call.
    """
    check_one_of("variance", variance, BOUND_VARIANCES)
    check_variance_head(score_fn, variance)
    check_levels(k, n_bins)  # the decoder's data: integer levels, before any call
    grid = check_grid(grid, sde).to(k.device)
    n = len(grid) - 1
    if variance == "analytic" and (gamma is None or len(gamma) != n + 1):
        raise ValueError(f"variance 'analytic' needs gamma at every time of the grid ({n + 1} here; "
                         f"samplers.estimate_gamma measures them), got {None if gamma is None else len(gamma)}")
    x0 = levels_to_model_space(k, n_bins, centered, dtype)
    score = GuardedScore(score_fn, check_cond(score_fn, cond, x0.shape[0]))
    g = make_generator(generator, seed)
    T = grid[0].expand(x0.shape[0])
    alpha_T, sigma_T = (append_dims(c, x0.ndim).expand_as(x0) for c in sde.marginal_coeffs(T))
    prior = gaussian_kl(alpha_T * x0.double(), sigma_T ** 2, torch.zeros_like(alpha_T),
                         torch.full_like(alpha_T, sde.prior_std ** 2))
    steps = vlb_step_terms(sde, score, x0, grid, variance=variance, gamma=None if gamma is None else gamma[:-1],
                           data_range=data_range, generator=g)
    x_n, t_n = _draw(sde, x0, grid[n], g)
    x0_hat, v = _x0_hat_and_v(sde, score, x_n, t_n, variance)
    var = decoder_variance(sde, grid, variance, gamma=gamma, data_range=data_range, v=v)
    decoder = -discretized_gaussian_log_likelihood(k, x0_hat.double(), var.expand_as(x0), n_bins=n_bins,
                                                   centered=centered)
    return {"prior": prior, "steps": steps, "decoder": decoder, "total": prior + steps.sum(1) + decoder,
            "nfe": score.nfe}


def vlb_step_terms(sde: SDE, score_fn, x0: Tensor, grid: Tensor, *, variance: str = "fixed_small",
                   gamma: Optional[Tensor] = None, data_range: float = 2.0,
                   generator: Optional[torch.Generator] = None, cond: Optional[Mapping[str, Tensor]] = None) -> Tensor:
    """The bound's step terms [B, n] for data x0 [B, ...] (model space, any values; `vlb_terms`): term i is
    KL(q(x_{t_{i+1}} | x_{t_i}, x_0) || p(x_{t_{i+1}} | x_{t_i})) in nats at one draw x_{t_i} ~ q(x_{t_i} | x_0).
    gamma ("analytic"): E||eps_hat||^2 / d at grid[:-1]. One network call per step."""
    check_variance_head(score_fn, variance)
    score = score_fn if isinstance(score_fn, GuardedScore) else GuardedScore(score_fn, check_cond(score_fn, cond, len(x0)))
    steps = torch.zeros(x0.shape[0], len(grid) - 1, dtype=torch.float64, device=x0.device)
    for i in range(len(grid) - 1):
        x_t, t = _draw(sde, x0, grid[i], generator)
        s = grid[i + 1].expand(x0.shape[0])
        q = reverse_step.posterior(sde, t, s)
        x0_hat, v = _x0_hat_and_v(sde, score, x_t, t, variance)
        var = reverse_step.reverse_variance(sde, t, s, variance, data_range=data_range, v=v,
                                            gamma=None if gamma is None else gamma[i], q=q)
        steps[:, i] = step_kl(q, x0, x0_hat, var)
    return steps


def step_kl(q: reverse_step.Posterior, x0: Tensor, x0_hat: Tensor, variance: Tensor) -> Tensor:
    """KL(q(x_s | x_t, x_0) || N(c_t x_t + c_0 x0_hat, variance I)) [B] in nats (float64), summed over
    dimensions, for one step's posterior q ([B] coefficients), data x0 and the model's x0_hat [B, ...];
    variance [B] or shaped like x0 (a variance head's). The two means differ by c_0 (x_0 - x0_hat) alone,
    so it is written that way, without the large c_t x_t that would cancel."""
    gap = append_dims(q.c_0, x0.ndim) * (x0.double() - x0_hat.double())
    var = variance if variance.ndim == x0.ndim else append_dims(variance, x0.ndim)
    return gaussian_kl(gap, append_dims(q.beta_tilde, x0.ndim).expand_as(gap), torch.zeros_like(gap),
                       var.expand_as(gap))


def _draw(sde: SDE, x0: Tensor, time: Tensor, generator) -> Tuple[Tensor, Tensor]:
    """(x_t ~ q(x_t | x_0), t [B]): one fresh draw at `time`."""
    t = time.expand(x0.shape[0])
    alpha, sigma = (append_dims(c.to(x0.dtype), x0.ndim) for c in sde.marginal_coeffs(t))
    return alpha * x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device), t


def check_variance_head(score_fn, variance: str) -> None:
    """variance "learned_range" needs a network with a variance head (`models.Precond.learns_variance`)."""
    if variance == "learned_range" and not getattr(score_fn, "learns_variance", False):
        raise ValueError("variance 'learned_range' needs a network with a variance head (a models.Precond of a "
                         "network built with learn_variance=True; config.model.learn_variance), and this score "
                         "function has none; use fixed_small, fixed_large or analytic")


def _x0_hat_and_v(sde: SDE, score, x_t: Tensor, t: Tensor, variance: str) -> Tuple[Tensor, Optional[Tensor]]:
    """(x0_hat, v): from the variance head where `variance` is learned_range (v None otherwise)."""
    with torch.no_grad():
        if variance == "learned_range":
            return score.denoise_and_v(x_t, t.to(x_t.dtype))
        return sde.tweedie(x_t, t, score(x_t, t.to(x_t.dtype))), None


def decoder_variance(sde: SDE, grid: Tensor, variance: str, *, gamma=None, data_range: float = 2.0,
                     v: Optional[Tensor] = None) -> Tensor:
    """The decoder's variance at t_n (`vlb_terms`): a float64 scalar tensor, or shaped like v [B, ...] for
    learned_range, exp(v log large + (1 - v) log small) between the fixed_large and fixed_small ones."""
    alpha, sigma = sde.marginal_coeffs(grid[-1])
    noise = (sigma / alpha) ** 2
    last_small = reverse_step.posterior(sde, grid[-2], grid[-1]).beta_tilde if len(grid) > 2 else noise
    if variance == "fixed_large":
        return noise
    if variance == "fixed_small":
        return last_small
    if variance == "learned_range":
        return (v.double() * noise.log() + (1 - v.double()) * last_small.log()).exp()
    optimal = noise * (1 - torch.as_tensor(gamma[-1], dtype=torch.float64))
    return optimal.clamp(min=float(last_small), max=(data_range / 2) ** 2)


def vlb_bits_per_dim(sde: SDE, score_fn, k: Tensor, grid: Tensor, **kwargs) -> Tuple[Tensor, dict]:
    """The variational bound `vlb_terms(...)["total"]` in bits per dimension [B]: an upper bound on the
    discrete model's -log2 P(k) / D (not the probability flow's exact likelihood, `bits_per_dim`).
    Returns (bpd [B], the terms in nats)."""
    terms = vlb_terms(sde, score_fn, k, grid, **kwargs)
    return bits_from_nats(terms["total"], math.prod(k.shape[1:])), terms
