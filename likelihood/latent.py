"""Likelihoods of latent diffusion: a score model trained on scaled autoencoder latents w = s z.

The autoencoder's posterior q(z | x) is a diagonal Gaussian and s the latent scale (1 / std of the
latents, so that w has about unit variance). Two questions have closed-form answers in terms of the
probability-flow likelihood of w (`likelihood.flow.log_likelihood`):

  - the density of the unscaled latents: w = s z is a change of variables with |dw/dz| = s^D_z, so
        log p(z) = log p_model(s z) + D_z log s;
  - a bound on the images' likelihood (LSGM, Vahdat et al. 2021):
        log p(x) >= E_{q(z|x)}[ log p(x | z) + log p(z) - log q(z | x) ],
    estimated by Monte Carlo over posterior draws, and in bits/dim comparable with a pixel model's
    `bits_per_dim`.

A posterior is any object with `.sample(generator) -> z [B, ...]`, `.log_prob(z) -> [B]` (summed over
the latent dimensions), `.mean` and `.std` (both [B, ...]).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from sde_lib import SDE
from sde_lib.checks import check_one_of, check_open_interval, check_positive_int
from samplers.guards import make_generator
from likelihood.flow import (bits_from_nats, check_levels, dequantize_to_model_space, dequantized_bits_per_dim,
                             levels_to_model_space, log_likelihood)

Tensor = torch.Tensor
DECODERS = ("gaussian", "discretized")  # p(x | z): a density in model space, or probabilities of the levels
BOUND_PARTS = ("reconstruction", "prior", "entropy")


def _check_scale(scale) -> float:
    return check_open_interval(scale, "scale", 0.0, math.inf, "(0, inf): the latent scale s of w = s z")


def _check_batch(v, name: str) -> None:
    """v must be a tensor [B, ...] with at least one dimension per sample."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{name} must be a tensor [B, ...], got {type(v).__name__}")
    if v.ndim < 2:
        raise ValueError(f"{name} must be a batch [B, ...] with at least 2 dimensions, got shape {tuple(v.shape)}")


def _check_callable(fn, name: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")


def _check_per_sample(v, batch: int, what: str) -> Tensor:
    """`what` must have returned one number per sample: a tensor [B]."""
    if not isinstance(v, torch.Tensor) or tuple(v.shape) != (batch,):
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"{what} must return one value per sample, a tensor of shape ({batch},), got {shape}")
    return v


def latent_log_likelihood(sde: SDE, score_fn, z: Tensor, *, scale: float = 1.0,
                          **ll_kwargs) -> Tuple[Tensor, Tensor, int]:
    """log p(z) [B] in nats of unscaled latents z [B, ...], under a score model of w = s z:

        log p(z) = log p_model(s z) + D_z log s,      D_z = prod(z.shape[1:]),

    with log p_model the probability-flow likelihood `log_likelihood` at its eps (`ll_kwargs`:
    divergence, rtol, atol, eps, cond, ...). Returns (logp_z [B], w_T = w(T) [B, ...], nfe).
    """
    scale = _check_scale(scale)
    _check_batch(z, "z")
    logp_w, w_T, nfe = log_likelihood(sde, score_fn, scale * z, **ll_kwargs)
    return logp_w + math.prod(z.shape[1:]) * math.log(scale), w_T, nfe


def latent_bits_per_dim(sde: SDE, score_fn, z: Tensor, *, scale: float = 1.0,
                        **ll_kwargs) -> Tuple[Tensor, Tensor, int]:
    """Bits per latent dimension [B] of unscaled latents z [B, ...]: -log p(z) / (D_z ln 2), with log p(z)
    by `latent_log_likelihood`. The latents are continuous, so there is no dequantization, and the number
    can be negative. It is NOT comparable with image bits/dim (other dimensions, a density rather than a
    probability of levels): `image_bits_per_dim_bound` gives that. Returns (bpd [B], w_T, nfe).
    """
    logp, w_T, nfe = latent_log_likelihood(sde, score_fn, z, scale=scale, **ll_kwargs)
    return -bits_from_nats(logp, math.prod(z.shape[1:])), w_T, nfe


def _bound_terms(sde: SDE, score_fn, decoder_log_prob, posterior, x: Tensor, generator, scale: float,
                 ll_kwargs: dict) -> Tuple[dict, int]:
    """One draw z ~ q(z | x): its terms [B] log p(x | z), log p(z) and -log q(z | x), and the score calls."""
    B = x.shape[0]
    z = posterior.sample(generator)
    _check_batch(z, "posterior.sample(generator)")
    if z.shape[0] != B:
        raise ValueError(f"posterior.sample(generator) must return {B} latents (one per image), got shape "
                         f"{tuple(z.shape)}")
    reconstruction = _check_per_sample(decoder_log_prob(x, z), B, "decoder_log_prob(x, z)")
    log_q = _check_per_sample(posterior.log_prob(z), B, "posterior.log_prob(z)")
    prior, _, nfe = latent_log_likelihood(sde, score_fn, z, scale=scale, generator=generator, **ll_kwargs)
    return {"reconstruction": reconstruction, "prior": prior, "entropy": -log_q}, nfe


def image_nll_bound(sde: SDE, score_fn, encode: Callable, decoder_log_prob: Callable, x: Tensor, *,
                    scale: float = 1.0, n_samples: int = 1,           # posterior draws per image
                    generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
                    **ll_kwargs) -> Tuple[Tensor, dict]:
    """An upper bound on -log p(x) [B] in nats for images x [B, ...] (model space) under a latent diffusion
    model, LSGM's bound:

        log p(x) >= E_{q(z|x)}[ log p(x | z) + log p(z) - log q(z | x) ],

    estimated with n draws z_i ~ q(z | x), q = encode(x) (a posterior, see the module), one ODE solve each:

        nll = -(1/n) sum_i [ decoder_log_prob(x, z_i) + log p(z_i) - q.log_prob(z_i) ],

    log p(z) by `latent_log_likelihood(..., scale=scale)`, to which `ll_kwargs` (cond among them) go.
    decoder_log_prob(x, z) -> [B]: log p(x | z). The bound's gap is KL(q(z | x) || p(z | x)) >= 0; the
    estimate is unbiased for the bound (not for log p(x)). The draws and any Hutchinson probes come from
    `generator` (or `seed`), in that order per draw.

    Returns (nll [B], parts): parts holds the draws' means [B] of "reconstruction" log p(x | z), "prior"
    log p(z) and "entropy" -log q(z | x), so nll = -(their sum), and "nfe", the score calls of all solves.
    """
    scale = _check_scale(scale)
    n_samples = check_positive_int(n_samples, "n_samples")
    _check_callable(encode, "encode")
    _check_callable(decoder_log_prob, "decoder_log_prob")
    _check_batch(x, "x")
    generator = make_generator(generator, seed)
    posterior = encode(x)
    draws, nfe = {name: [] for name in BOUND_PARTS}, 0
    for _ in range(n_samples):
        terms, calls = _bound_terms(sde, score_fn, decoder_log_prob, posterior, x, generator, scale, ll_kwargs)
        for name in BOUND_PARTS:
            draws[name].append(terms[name])
        nfe += calls
    parts = {name: torch.stack(draws[name]).mean(0) for name in BOUND_PARTS}
    nll = -(parts["reconstruction"] + parts["prior"] + parts["entropy"])
    return nll, {**parts, "nfe": nfe}


def image_bits_per_dim_bound(sde: SDE, score_fn, encode: Callable, decoder_log_prob: Callable, k: Tensor, *,
                             decoder: str = "gaussian", n_bins: int = 256, centered: bool = True,
                             scale: float = 1.0, n_samples: int = 1,
                             generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
                             dtype: torch.dtype = torch.float32, **ll_kwargs) -> Tuple[Tensor, dict]:
    """An upper bound [B] on the bits per dimension -log2 P(k) / D of integer levels k [B, ...] in
    {0, ..., n_bins - 1} under a latent diffusion model, comparable with a pixel model's `bits_per_dim`
    (D = prod(k.shape[1:]), the image's dimensions), from `image_nll_bound`'s bound B(x) on log p(x):

      decoder "discretized": decoder_log_prob(x, z) is a log probability log P(k | z) of the levels, with
        x = `levels_to_model_space(k)` what the encoder and decoder see; then log P(k) >= B(x) and
            bpd = -B(x) / (D ln 2);
      decoder "gaussian": decoder_log_prob(x, z) is a density in model space, so k is dequantized as
        `bits_per_dim` does, y = (k + u) / n_bins, x = a y + b ((a, b) = `data_scale(centered)`), and
            bpd = -(B(x) + D log a) / (D ln 2) + log2(n_bins)        (`dequantized_bits_per_dim`).

    The dequantization noise u is drawn first from `generator` (or `seed`), so the same seed gives
    `bits_per_dim` and this bound the same x; the posterior draws follow. x is in `dtype`.
    Returns (bpd [B], parts in nats: `image_nll_bound`'s).
    """
    check_one_of("decoder", decoder, DECODERS)
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
        raise ValueError(f"n_bins must be an integer >= 2 (the number of levels), got {n_bins!r}")
    _check_batch(k, "k")
    check_levels(k, n_bins)
    generator = make_generator(generator, seed)
    bound_kwargs = dict(scale=scale, n_samples=n_samples, generator=generator, **ll_kwargs)
    D = math.prod(k.shape[1:])
    if decoder == "discretized":
        x = levels_to_model_space(k, n_bins, centered, dtype)
        nll, parts = image_nll_bound(sde, score_fn, encode, decoder_log_prob, x, **bound_kwargs)
        return bits_from_nats(nll, D), parts
    x = dequantize_to_model_space(k, generator, n_bins=n_bins, centered=centered, dtype=dtype)
    nll, parts = image_nll_bound(sde, score_fn, encode, decoder_log_prob, x, **bound_kwargs)
    return dequantized_bits_per_dim(-nll, D, n_bins=n_bins, centered=centered), parts
