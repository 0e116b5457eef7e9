"""Likelihoods of score models, in nats and bits per dimension.

  flow    the exact likelihood by the probability-flow ODE, dequantization and bits/dim of quantized
          data, encode / decode;
  vlb     the variational bound of the discrete reverse chain on a time grid;
  latent  latent diffusion: the density of autoencoder latents and LSGM's bound on the images' likelihood.
"""
from likelihood.flow import (DIVERGENCES, bits_from_nats, bits_per_dim, check_levels, data_scale, decode,
                             dequantize, dequantize_to_model_space, dequantized_bits_per_dim, encode,
                             levels_to_model_space, log_likelihood, nats_from_bits)
from likelihood.vlb import (BOUND_VARIANCES, check_variance_head, decoder_variance,
                            discretized_gaussian_log_likelihood, gaussian_kl, step_kl, vlb_bits_per_dim,
                            vlb_step_terms, vlb_terms)
from likelihood.latent import (DECODERS, image_bits_per_dim_bound, image_nll_bound, latent_bits_per_dim,
                               latent_log_likelihood)

__all__ = [
    "DIVERGENCES", "bits_from_nats", "bits_per_dim", "check_levels", "data_scale", "decode", "dequantize",
    "dequantize_to_model_space", "dequantized_bits_per_dim", "encode", "levels_to_model_space",
    "log_likelihood", "nats_from_bits",
    "BOUND_VARIANCES", "check_variance_head", "decoder_variance", "discretized_gaussian_log_likelihood",
    "gaussian_kl", "step_kl", "vlb_bits_per_dim", "vlb_step_terms", "vlb_terms",
    "DECODERS", "image_bits_per_dim_bound", "image_nll_bound", "latent_bits_per_dim", "latent_log_likelihood",
]
