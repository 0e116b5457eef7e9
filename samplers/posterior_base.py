"""What every posterior sampler for y = A x + sigma_y n sets up before its loop, in one place: the
checks (before any network call), the time grid, the generator, the score with its conditioning bound,
the prior draw, and the observation in the SVD basis.

Every posterior sampler is called the same way (`samplers.posterior_sample` picks one by name):

    x, info = <name>_posterior_sample(sde, score_fn, shape, observation, y, *, sigma_y=0.0, steps=None,
                                      grid=None, eps=None, seed=None, generator=None, device=None,
                                      dtype=torch.float32, cond=None, progress=False, **own_options)

and reports its cost in info: "network_calls" (batched calls), "network_evaluations_per_sample" (rows
of those calls per posterior sample: particles count) and "backward_passes" (through the network), and
"t", the time of the samples it returns (the grid's last, eps; DDRM's 0).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch

from sde_lib import SDE
from sde_lib.checks import check_cond
from samplers.base import sampler_info, start
from samplers.guards import GuardedScore, check_device, make_generator
from samplers.observations import LinearObservation, check_problem

Tensor = torch.Tensor


class Run(NamedTuple):
    grid: Tensor                 # [n + 1] float64 on x's device, T first
    generator: Optional[torch.Generator]
    score: GuardedScore          # score(x, t), conditioning bound, counted
    x: Tensor                    # the prior draw [B * repeat, *shape]
    y: Tensor                    # the observation [B, m] on x's device, float64
    y_bar: Optional[Tensor]      # U^T y [B, r], float64 (None without an SVD)


def setup(sde: SDE, score_fn, shape: Sequence[int], observation: LinearObservation, y: Tensor, sigma_y, *,
          solver: str, steps, grid, eps, seed, generator, device, dtype, cond, needs_svd: bool = True,
          repeat: int = 1) -> Run:
    """Check the problem and set up one run (module docstring); `repeat` rows of x per posterior sample
    (particles), the conditioning repeated alike."""
    check_problem(observation, y, shape, sigma_y, solver, needs_svd)
    B = int(shape[0])
    times, _ = sampler_info("ancestral").times(sde, steps, grid, eps, {})
    device = check_device(device)
    g = make_generator(generator, seed, device)
    cond = {k: v.repeat_interleave(repeat, 0) for k, v in check_cond(score_fn, cond, B).items()}
    x = start(sde, (B * repeat, *shape[1:]), None, g, device, dtype)
    y = y.to(x.device, torch.float64)
    y_bar = observation.ut(y)[:, :observation.r] if observation.has_svd else None
    return Run(times.to(x.device), g, GuardedScore(score_fn, cond), x, y, y_bar)


def scaled_sigma(sde: SDE, t: Tensor) -> Tensor:
    """sigma(t) / alpha(t): the noise level of x_t / alpha(t) = x_0 + (sigma / alpha) z, the variance-exploding
    form in which DDRM and Pi-GDM are written, so one formula serves VP, sub-VP and VE."""
    alpha, sigma = sde.marginal_coeffs(t)
    return sigma / alpha


def x0_with_grad(sde: SDE, score, x: Tensor, t: Tensor):
    """(x_t with requires_grad, the score s(x_t), x0_hat(x_t) = Tweedie's estimate through the network)
    for a guidance gradient; the caller differentiates inside torch.enable_grad()."""
    x = x.detach().requires_grad_(True)
    s = score(x, t.to(x.dtype))
    return x, s, sde.tweedie(x, t, s)
