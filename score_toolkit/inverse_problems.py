"""Inverse problems from the command line: sampling.task = inpaint | colorize | superres | linear with a
posterior sampler as sampling.method (particle, ddrm, pigdm, dps; `samplers.posterior`). The observed
images (sampling.observed, at the data's resolution, in model space here) are degraded by the task's
operator A and noised by sigma_y once, the noise from a generator of its own (seed config.seed + 17), so
every sample of an image conditions on the same y:

    inpaint   y = the pixels sampling.mask keeps             superres  y = 2-D block means, factor sampling.sr_factor
    colorize  y = the channels' mean (3-channel images)      linear    y = A x, A [m, C H W] from sampling.matrix

A low-resolution image to super-resolve is given nearest-up-sampled to the data's size (its block means
are then the image itself). sampling.particles sets the particle sampler's particles per sample (each
batch runs batch_size x particles rows at once); sampling.ddrm_eta ("markov" or a number), ddrm_eta_b,
pigdm_eta and dps_zeta the solvers' own options.
"""
from __future__ import annotations

import logging
import re
from typing import Optional

import torch

import samplers
import sde_lib
from samplers.observations import AveragePooling, Colorization, Inpainting, LinearObservation, MatrixObservation
from score_toolkit import data_lib
from score_toolkit.errors import ConfigError

Tensor = torch.Tensor
TASKS = ("inpaint", "colorize", "superres", "linear")
SOLVERS = ("particle", "ddrm", "pigdm", "dps")   # replacement is a sampler name with inpaint / colorize
_OWN = {"ddrm": {"eta": "ddrm_eta", "eta_b": "ddrm_eta_b"}, "pigdm": {"eta": "pigdm_eta"}, "dps": {"zeta": "dps_zeta"},
        "particle": {"particles": "particles"}}
_COMMON = {"sigma_y": "sigma_y", "steps": "steps", "eps": "eps", "grid": "grid"}


def uses_posterior_sampler(config) -> bool:
    """Whether sampling.method names a posterior sampler (otherwise a task is done by replacement)."""
    return config.sampling.task != "none" and config.sampling.method in SOLVERS


def build_observation(config, shape, mask: Optional[Tensor] = None) -> LinearObservation:
    """The task's operator A on images of `shape` (C, H, W); `mask` [C, H, W] (1 = known) for inpaint."""
    s, shape = config.sampling, tuple(shape)
    if s.task == "inpaint":
        return Inpainting(mask > 0)
    if s.task == "colorize":
        return Colorization(shape)
    if s.task == "superres":
        return AveragePooling(shape, s.sr_factor)
    return MatrixObservation(data_lib.load_matrix(s.matrix, shape[0] * shape[1] * shape[2]), shape)


def solver_options(config) -> dict:
    """The arguments of samplers.posterior_sample from config.sampling: steps, eps, grid, sigma_y and the
    configured solver's own (`_OWN`: particles, ddrm_eta, ddrm_eta_b, pigdm_eta, dps_zeta)."""
    s = config.sampling
    options = {"steps": s.steps, "eps": s.eps, "sigma_y": s.sigma_y}
    if s.grid:
        options["grid"] = s.grid
    for option, key in _OWN[s.method].items():
        options[option] = _eta(s[key]) if key == "ddrm_eta" else s[key]
    if s.method == "pigdm":  # its guidance's residual on x0_hat clipped to the data's range
        options["x0_range"] = (-1.0, 1.0) if config.data.centered else (0.0, 1.0)
    return options


def _eta(value: str):
    """sampling.ddrm_eta, a string: "markov", or a number (left as given when it is neither)."""
    try:
        return value if value == "markov" else float(value)
    except (TypeError, ValueError):
        return value


def observations(config, observation: LinearObservation, observed: Tensor) -> Tensor:
    """y [N, m] = A x + sigma_y n for the observed images x [N, C, H, W] (model space), float64."""
    noise = torch.randn(len(observed), observation.m, generator=torch.Generator().manual_seed(config.seed + 17),
                        dtype=torch.float64)
    return observation(observed.double()) + float(config.sampling.sigma_y) * noise


def build_posterior_sampler(config, sde: sde_lib.SDE, device: torch.device, observed: Tensor,
                            mask: Optional[Tensor]):
    """sample(score_fn, shape, seed, start=0, cond=None) -> (x, info) on `device`: the configured posterior
    sampler given the observation of observed[i mod N] for sample i (module docstring)."""
    op = build_observation(config, observed.shape[1:], mask)
    ys, options = observations(config, op, observed), solver_options(config)

    def sample(score_fn, shape, seed, start: int = 0, cond: Optional[dict] = None):
        y = ys[torch.arange(start, start + shape[0]) % len(ys)].to(device)
        cond = {k: v.to(device) for k, v in (cond or {}).items()}
        x, info = samplers.posterior_sample(config.sampling.method, sde, score_fn, shape, op, y, seed=seed,
                                            device=device, cond=cond, **options)
        logging.info("%s (%s) from sample %d: %d samples, %d network evaluations and %d backward passes a sample%s",
                     config.sampling.method, config.sampling.task, start, shape[0],
                     info["network_evaluations_per_sample"], info["backward_passes"],
                     f", mean ESS {sum(info['ess']) / len(info['ess']):.1f} of {info['particles_per_sample']}"
                     if "ess" in info else "")
        return x, info

    return sample


def validate(config, sde: sde_lib.SDE, shape, mask: Optional[Tensor]) -> None:
    """Every check the posterior sampler makes, on a stand-in observation, before any work: a ConfigError
    naming the key (sampling.particles, sampling.sigma_y, sampling.ddrm_eta, ...)."""
    s = config.sampling
    try:
        op = build_observation(config, shape, mask)
    except ValueError as e:
        key = {"superres": "sr_factor", "linear": "matrix", "inpaint": "mask"}.get(s.task, "task")
        raise ConfigError(f"config.sampling.{key} = {s[key]!r} is not allowed: {e}") from e
    y = torch.zeros(1, op.m, dtype=torch.float64)

    def run(sde, score_fn, shape, **kwargs):
        return samplers.posterior_sample(s.method, sde, score_fn, shape, op, y, **kwargs)

    try:
        samplers.probe(run, sde, (1, *shape), **solver_options(config))
    except (ValueError, TypeError) as e:
        word = re.match(r"\w+", str(e))
        key = {**_COMMON, **_OWN[s.method]}.get(word.group(0) if word else "", "method")
        raise ConfigError(f"config.sampling.{key} = {s[key]!r} is not allowed with sampling.method = "
                          f"{s.method!r}: {e}") from e
