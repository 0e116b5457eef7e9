"""The gradient-guided approximate posterior samplers for y = A x + sigma_y n: DPS (Chung et al. 2023) and
Pi-GDM (Song et al. 2023). Each step differentiates the network's x0 estimate x0_hat(x_t) with respect to
x_t (one network call and one backward pass a step), to pull the chain towards A x0_hat = y.

DPS, Diffusion Posterior Sampling: an ancestral step (the posterior mean of q(x_s | x_t, x0_hat) plus
its noise, beta~), then a step down the gradient of the residual's norm,

    x_s = x'_s - zeta grad_{x_t} || y - A x0_hat(x_t) ||_2          (per sample),

which is the paper's zeta' / ||y - A x0_hat|| times the gradient of the squared norm with zeta = 2 zeta'
(its official code's `scale`; zeta = 1 is its inpainting setting). It needs A alone, no SVD, and treats
noise in y only through zeta.

Pi-GDM, pseudoinverse-guided diffusion: p(x_0 | x_t) is approximated by N(x0_hat, r_t^2 I) with
r_t^2 = sig_t^2 / (1 + sig_t^2) (sig = sigma / alpha; data of unit variance), so that
p(y | x_t) ~ N(A x0_hat, r_t^2 A A^T + sigma_y^2 I), and the guidance

    g = grad_{x_t} [ (y - A x0_hat)^T (r_t^2 A A^T + sigma_y^2 I)^-1 A x0_hat(x_t) ]   (the first factor held fixed)

is a vector-Jacobian product through the network, the inverse diagonal in the SVD basis:
A^T (r^2 A A^T + sigma_y^2)^-1 (y - A x0_hat) = V [s_i (y_bar_i - s_i x0_bar_i) / (r^2 s_i^2 + sigma_y^2)].
Each step is the model's own DDIM step (eta = 1 by default: the ancestral one) plus alpha_t r_t^2 g: the
paper's Algorithm 1 with the scalar r_t^2 taken out of the inverse, as it does for noiseless y (where
r_t^2 (r_t^2 A A^T)^-1 A is A's pseudo-inverse). Adding g to the score instead (its eq. 7) moves x0_hat
by sigma_t^2 / alpha_t g, and diverged with the shipped network on Fashion-MNIST inpainting; alpha_t g
without the factor r_t^2 overshoots at low noise and diverged on the toy problems with exact scores. This
step too diverged on Fashion-MNIST until the residual was taken on x0_hat clipped to the data's range (`x0_range`: the network's Jacobian at high noise is far
from its ideal Cov[x_0 | x_t] / sigma^2, and an x0_hat outside the data feeds it back).

Neither is exact on a multimodal posterior, nor on a Gaussian one at finite guidance (their bias is
measured in benchmarks/bench_posterior.py and stated in README.md).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from tqdm.auto import trange

from sde_lib import SDE
from sde_lib.reverse_step import posterior
from samplers.base import at, coeff, noise_like
from samplers.ddim import ddim_loop
from samplers.observations import LinearObservation
from samplers.posterior_base import scaled_sigma, setup, x0_with_grad

Tensor = torch.Tensor
__all__ = ["dps_posterior_sample", "pigdm_posterior_sample"]


@torch.no_grad()  # the network's graph is built only where a gradient is taken
def dps_posterior_sample(sde: SDE, score_fn, shape: Sequence[int], observation: LinearObservation, y: Tensor, *,
                         sigma_y: float = 0.0, zeta: float = 1.0, steps: Optional[int] = None, grid=None,
                         eps: Optional[float] = None, seed: Optional[int] = None,
                         generator: Optional[torch.Generator] = None, device=None, dtype=torch.float32,
                         cond: Optional[dict] = None, progress: bool = False):
    """B = shape[0] DPS samples [B, *shape] at the grid's last time, given y [B, m] (module docstring); any
    observation, an SVD not needed. Returns (x, info)."""
    _check_scale(zeta, "zeta")
    run = setup(sde, score_fn, shape, observation, y, sigma_y, solver="dps", steps=steps, grid=grid, eps=eps,
                seed=seed, generator=generator, device=device, dtype=dtype, cond=cond, needs_svd=False)
    grid, x, score, target = run.grid, run.x, run.score, run.y.to(dtype)
    for i in trange(len(grid) - 1, disable=not progress, desc="dps_posterior_sample"):
        t, s = at(grid, i, x), at(grid, i + 1, x)
        with torch.enable_grad():
            xg, _, x0 = x0_with_grad(sde, score, x, t)
            residual = torch.linalg.vector_norm(target - observation(x0), dim=1)
            grad = torch.autograd.grad(residual.sum(), xg)[0]
        q = posterior(sde, t, s)
        x_mean = torch.addcmul(coeff(q.c_t, x) * x, coeff(q.c_0, x), x0.detach())
        x = torch.addcmul(x_mean, coeff(q.beta_tilde.sqrt(), x), noise_like(x, run.generator)) - zeta * grad
    return x, {"network_calls": score.nfe, "network_evaluations_per_sample": score.nfe, "backward_passes": score.nfe,
               "t": float(grid[-1])}


@torch.no_grad()  # the network's graph is built only where a gradient is taken
def pigdm_posterior_sample(sde: SDE, score_fn, shape: Sequence[int], observation: LinearObservation, y: Tensor, *,
                           sigma_y: float = 0.0, eta: float = 1.0, x0_range: Optional[Tuple[float, float]] = None,
                           steps: Optional[int] = None, grid=None, eps: Optional[float] = None,
                           seed: Optional[int] = None, generator: Optional[torch.Generator] = None, device=None,
                           dtype=torch.float32, cond: Optional[dict] = None, progress: bool = False):
    """B = shape[0] Pi-GDM samples [B, *shape] at the grid's last time, given y [B, m] (module docstring):
    a DDIM step with `eta`, plus alpha_t r_t^2 g; `x0_range` (low, high) clips the x0 estimate inside the
    guidance's residual (the data's range; None: no clipping). Returns (x, info)."""
    _check_scale(eta, "eta")
    if x0_range is not None and not (len(x0_range) == 2 and float(x0_range[0]) < float(x0_range[1])):
        raise ValueError(f"x0_range must be None or (low, high) with low < high, got {x0_range!r}")
    run = setup(sde, score_fn, shape, observation, y, sigma_y, solver="pigdm", steps=steps, grid=grid, eps=eps,
                seed=seed, generator=generator, device=device, dtype=dtype, cond=cond)
    grid, x, s_i = run.grid, run.x, observation.singulars.to(run.x.device)
    for i in trange(len(grid) - 1, disable=not progress, desc="pigdm_posterior_sample"):
        t = at(grid, i, x)
        alpha_t, r2 = float(sde.marginal_coeffs(grid[i])[0]), float(scaled_sigma(sde, grid[i])) ** 2
        r2 = r2 / (1 + r2)
        with torch.enable_grad():
            xg, sc, x0 = x0_with_grad(sde, run.score, x, t)
            x0_bar = observation.vt(_clipped(x0.detach(), x0_range)).double()[:, :observation.r]
            w = s_i * (run.y_bar - s_i * x0_bar) / (r2 * s_i ** 2 + sigma_y ** 2)
            v = observation.v(torch.cat([w, w.new_zeros(len(w), observation.d - observation.r)], 1)).to(x.dtype)
            g = torch.autograd.grad(x0, xg, v)[0]
        sc = sc.detach()
        x = ddim_loop(sde, lambda *_: sc, x, grid[i:i + 2], eta=eta, generator=run.generator) + alpha_t * r2 * g
    n = run.score.nfe
    return x, {"network_calls": n, "network_evaluations_per_sample": n, "backward_passes": n, "t": float(grid[-1])}


def _clipped(x0: Tensor, x0_range) -> Tensor:
    return x0 if x0_range is None else x0.clamp(float(x0_range[0]), float(x0_range[1]))


def _check_scale(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
