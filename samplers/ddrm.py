"""DDRM, Denoising Diffusion Restoration Models (Kawar et al. 2022): a fast approximate posterior sampler
for y = A x + sigma_y n that works coordinate-wise in the SVD basis of A, one network call a step and no
network gradients.

Written in the variance-exploding form x~ = x_t / alpha_t = x_0 + sig_t z (sig_t = sigma_t / alpha_t), in
the spectral coordinates x_bar = V^T x~, with y_i = (U^T y)_i / s_i and its noise level n_i = sigma_y / s_i
in each observed direction i < r. A step from sig_t to sig_s, with x0_bar = V^T x0_hat(x_t) and fresh z:

    unobserved (i >= r)     x_bar_s = x0_bar + sqrt(1 - eta^2) sig_s (x_bar_t - x0_bar) / sig_t + eta sig_s z
    observed, sig_s < n_i   x_bar_s = x0_bar + sqrt(1 - eta^2) sig_s (y_i - x0_bar) / n_i    + eta sig_s z
    observed, sig_s >= n_i  x_bar_s = (1 - eta_b) x0_bar + eta_b y_i + sqrt(sig_s^2 - eta_b^2 n_i^2) z

and the run starts from x_bar_T = y_i + sqrt(sig_T^2 - n_i^2) z where sig_T > n_i (a prior draw
elsewhere). Each kernel keeps q(x~_s | x_0) = N(x_0, sig_s^2 I) given the truth, which is why a model
trained unconditionally serves (the paper's Theorem 1). The last step lands on sig = 0, DDRM's output: the
x0 estimate, with y itself in the noiseless observed directions (eta_b = 1), so a noiseless observation is
reproduced exactly. The defaults eta = 0.85, eta_b = 1 are the paper's.

eta = "markov" takes sqrt(1 - eta_i^2) = sig_s / n_i in the observed directions below their noise
level, the choice under which x_0 -> x~_s -> y is Markov, so that x0_hat(x_t) is E[x_0 | x_t, y] there,
and eta = 0 in the unobserved ones.

Where it is exact and where not (measured on isotropic Gaussian data, tests/test_posterior_solvers.py).
Only with a noiseless observation and eta = 0 (or "markov"), on a prior whose covariance is diagonal in V
(isotropic data, say): the observed directions are y and the unobserved ones follow DDIM's flow, which
converges as the steps grow. The paper's eta = 0.85 keeps fresh noise eta sig_s at every step however
fine the grid, and stays biased (the unobserved variance 0.366 for 0.49 at 640 steps). With noise in y
the observed directions take the x0 estimate's mean, not a draw of x_0, so their variance falls short
(about half, with "markov", whose means are exact; eta = 0.85 moves the means too). A prior that couples
observed and unobserved directions (correlated data, a Gaussian mixture) is biased in any setting, as
replacement is: x~_t holds y plus noise, and the unconditional denoiser does not know y exactly.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from tqdm.auto import trange

from sde_lib import SDE
from samplers.observations import LinearObservation
from samplers.posterior_base import scaled_sigma, setup

Tensor = torch.Tensor
__all__ = ["ddrm_posterior_sample"]


@torch.no_grad()  # no gradient is taken, so no graph is built
def ddrm_posterior_sample(sde: SDE, score_fn, shape: Sequence[int], observation: LinearObservation, y: Tensor, *,
                          sigma_y: float = 0.0, eta: float = 0.85, eta_b: float = 1.0, steps: Optional[int] = None,
                          grid=None, eps: Optional[float] = None, seed: Optional[int] = None,
                          generator: Optional[torch.Generator] = None, device=None, dtype=torch.float32,
                          cond: Optional[dict] = None, progress: bool = False):
    """B = shape[0] posterior samples x_0 [B, *shape] given y [B, m] (module docstring): one network call
    at each grid time but the last (`steps` calls), the last step to noise 0. `eta` a number in [0, 1]
    or "markov". Returns (x, info)."""
    for name, value, also in (("eta", eta, " or 'markov'"), ("eta_b", eta_b, "")):
        if name == "eta" and value == "markov":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name} must lie in [0, 1]{also} (DDRM's noise share; the paper's eta = 0.85, "
                             f"eta_b = 1), got {value!r}")
    run = setup(sde, score_fn, shape, observation, y, sigma_y, solver="ddrm", steps=steps, grid=grid, eps=eps,
                seed=seed, generator=generator, device=device, dtype=dtype, cond=cond)
    grid, g, score, r = run.grid, run.generator, run.score, observation.r
    s_i = observation.singulars.to(run.x.device)
    y_i, n_i = run.y_bar / s_i, sigma_y / s_i                          # [B, r], [r]
    sig = scaled_sigma(sde, grid)
    sig[-1] = 0.0                                                       # the last step lands on x_0
    x_bar = observation.vt(run.x).double() / float(sde.marginal_coeffs(grid[0])[0])
    above = sig[0] > n_i                                                # observed directions y already sets
    z = _noise(x_bar, g)[:, :r]
    x_bar[:, :r] = torch.where(above, y_i + (sig[0] ** 2 - n_i ** 2).clamp_min(0).sqrt() * z, x_bar[:, :r])
    for i in trange(len(grid) - 1, disable=not progress, desc="ddrm_posterior_sample"):
        t = grid[i].expand(len(x_bar))
        alpha_t = sde.marginal_coeffs(grid[i])[0]
        x = observation.v((alpha_t * x_bar).to(dtype))
        x0_bar = observation.vt(sde.tweedie(x, t, score(x, t.to(dtype)))).double()
        x_bar = _step(x_bar, x0_bar, y_i, n_i, sig[i], sig[i + 1], eta, eta_b, _noise(x_bar, g))
    x = observation.v(x_bar.to(dtype))
    return x, {"network_calls": score.nfe, "network_evaluations_per_sample": score.nfe, "backward_passes": 0, "t": 0.0}


def _step(x_bar, x0_bar, y_i, n_i, sig_t, sig_s, eta, eta_b, z):
    """One DDRM step from sig_t to sig_s in the spectral coordinates [B, d] (module docstring)."""
    r, n_safe = y_i.shape[1], torch.where(n_i > 0, n_i, 1.0)
    if eta == "markov":  # unobserved: eta = 0; observed below n_i: sqrt(1 - eta_i^2) = sig_s / n_i
        keep, keep_o = 1.0, (sig_s / n_safe).clamp(max=1)
    else:
        keep = (1 - eta ** 2) ** 0.5
        keep_o = torch.full_like(n_i, keep)
    out = x0_bar + keep * sig_s * (x_bar - x0_bar) / sig_t + (1 - keep ** 2) ** 0.5 * sig_s * z  # unobserved
    x0o, zo = x0_bar[:, :r], z[:, :r]
    below = x0o + keep_o * sig_s * (y_i - x0o) / n_safe + (1 - keep_o ** 2).sqrt() * sig_s * zo
    at_y = (1 - eta_b) * x0o + eta_b * y_i + (sig_s ** 2 - (eta_b * n_i) ** 2).clamp_min(0).sqrt() * zo
    out[:, :r] = torch.where(sig_s < n_i, below, at_y)
    return out


def _noise(x_bar: Tensor, g) -> Tensor:
    return torch.randn(x_bar.shape, generator=g, dtype=torch.float64, device=x_bar.device)
