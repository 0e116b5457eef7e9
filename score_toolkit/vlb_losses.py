"""Training on the variational bound of the discrete chain (improved DDPM, Nichol & Dhariwal 2021):
L_vlb, the hybrid objective L_simple + lambda L_vlb, and the importance sampler of its terms.

The chain is a grid T = t_0 > ... > t_{n-1} = eps of n times (`samplers.ddpm_strided_grid`; by default
the SDE's whole N-step chain) with n terms: term j < n - 1 is the step KL from t_j to t_{j+1},

    L_j = KL(q(x_{t_{j+1}} | x_{t_j}, x_0) || N(c_t x_t + c_0 x0_hat, sigma^2 I)),

sigma^2 from the network's variance head (`learned_range`) or a fixed variance, and term n - 1 is the
decoder -log p(k | x_{t_{n-1}}) of the 8-bit data k (`likelihood.discretized_gaussian_log_likelihood`,
its variance between the fixed small and fixed large decoder variances of `likelihood.vlb_terms`). The
prior term has no parameters and is left out. Each term is in bits per dimension, as in the reference
implementation, so lambda = 0.001 means what it means there. Per sample, with j drawn with probability
p_j (uniform, or `LossSecondMomentSampler`) and importance weight w_j = 1 / (n p_j):

    "vlb"      w_j n L_j                          (an unbiased estimate of L_vlb = sum_j L_j)
    "hybrid"   w_j (L_simple + lambda n L_j')     (L_j' with the mean's gradient stopped: L_simple
                                                   trains the mean, L_vlb only the variance)

where L_simple = ||eps_hat - z||^2 / d at t_j, the eps loss.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import torch

import likelihood
from models.precond import Precond, eps_error
from sde_lib import SDE, append_dims
from sde_lib import reverse_step
from sde_lib.checks import check_cond, check_one_of, check_positive_int
import samplers

Tensor = torch.Tensor
OBJECTIVES = ("simple", "hybrid", "vlb")
TIME_SAMPLERS = ("uniform", "loss_second_moment")


class LossSecondMomentSampler:
    """Draws chain terms j in {0, ..., n-1} with p_j proportional to sqrt(E[L_j^2]), mixed with uniform.

    Keeps the last `history` losses of every term; until every term has `history` of them (the warm-up)
    it draws uniformly. After, p_j = (1 - uniform_mix) sqrt(mean_h L_{j,h}^2) / Z + uniform_mix / n. The
    importance weight 1 / (n p_j) keeps E_p[w L] = (1/n) sum_j L_j for any p; p_j proportional to L_j gives
    an estimator with no variance. Its state (`state_dict`) goes into each checkpoint.
    """

    def __init__(self, n: int, history: int = 10, uniform_mix: float = 0.001):
        self.n, self.history = check_positive_int(n, "n"), check_positive_int(history, "history")
        if not 0.0 <= uniform_mix <= 1.0:
            raise ValueError(f"uniform_mix must lie in [0, 1], got {uniform_mix!r}")
        self.uniform_mix = float(uniform_mix)
        self.losses = torch.zeros(n, history, dtype=torch.float64)
        self.counts = torch.zeros(n, dtype=torch.int64)

    def warmed_up(self) -> bool:
        return bool((self.counts >= self.history).all())

    def probabilities(self) -> Tensor:
        """p [n], float64."""
        if not self.warmed_up():
            return torch.full((self.n,), 1.0 / self.n, dtype=torch.float64)
        rms = self.losses.pow(2).mean(1).sqrt()
        return (1 - self.uniform_mix) * rms / rms.sum() + self.uniform_mix / self.n

    def sample(self, batch: int, generator: Optional[torch.Generator] = None):
        """(j int64 [batch], w float64 [batch] = 1 / (n p_j))."""
        p = self.probabilities()
        j = torch.multinomial(p, batch, replacement=True, generator=generator)
        return j, 1.0 / (self.n * p[j])

    def update(self, j: Tensor, losses: Tensor) -> None:
        """Record each sample's loss under its term; a term's oldest loss drops out of a full history."""
        for term, loss in zip(j.tolist(), losses.detach().double().cpu().tolist()):
            if self.counts[term] >= self.history:
                self.losses[term] = self.losses[term].roll(-1)
                self.losses[term, -1] = loss
            else:
                self.losses[term, self.counts[term]] = loss
            self.counts[term] += 1

    def state_dict(self) -> dict:
        return {"losses": self.losses.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["losses"].shape) != (self.n, self.history):
            raise ValueError(f"the time sampler's saved history is {tuple(state['losses'].shape)}, "
                             f"this run's is {(self.n, self.history)}")
        self.losses, self.counts = state["losses"].clone(), state["counts"].clone()


class UniformTermSampler:
    """j uniform in {0, ..., n-1}, weight 1; no state."""

    def __init__(self, n: int):
        self.n = check_positive_int(n, "n")

    def sample(self, batch: int, generator: Optional[torch.Generator] = None):
        j = torch.randint(0, self.n, (batch,), generator=generator)
        return j, torch.ones(batch, dtype=torch.float64)

    def update(self, j: Tensor, losses: Tensor) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class VLBLoss:
    """loss_fn(model, x0, generator=None, cond=None) -> scalar for the "vlb" and "hybrid" objectives (module
    docstring), on `grid` (the chain's times, descending to eps). `model` is a `models.Precond` (with a
    variance head for `variance="learned_range"`, the default; else a fixed variance for the step terms).
    x0 [B, C, H, W] is 8-bit data in model space (`likelihood.levels_to_model_space` of its levels).
    `time_sampler` is the term sampler; its state is `state_dict()` (checkpointed with the run).
    """

    def __init__(self, sde: SDE, grid: Tensor, objective: str = "hybrid", *, vlb_weight: float = 0.001,
                 variance: str = "learned_range", time_sampler: str = "uniform", history: int = 10,
                 uniform_mix: float = 0.001, n_bins: int = 256, centered: bool = True):
        check_one_of("objective", objective, OBJECTIVES[1:])
        check_one_of("variance", variance, ("learned_range", "fixed_small", "fixed_large"))
        check_one_of("time_sampler", time_sampler, TIME_SAMPLERS)
        self.sde, self.grid = sde, samplers.check_grid(grid, sde)
        if len(self.grid) < 2:
            raise ValueError("the chain's grid needs at least 2 times (one step and the decoder)")
        self.objective, self.vlb_weight, self.variance = objective, float(vlb_weight), variance
        self.n_bins, self.centered = n_bins, centered
        n = len(self.grid)  # n - 1 step terms and the decoder
        self.sampler = (LossSecondMomentSampler(n, history, uniform_mix) if time_sampler == "loss_second_moment"
                        else UniformTermSampler(n))
        self._steps = reverse_step.posterior(sde, self.grid[:-1], self.grid[1:])  # float64 [n - 1] each

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)

    def __call__(self, model: Precond, x0: Tensor, generator: Optional[torch.Generator] = None,
                 cond: Optional[Mapping[str, Tensor]] = None) -> Tensor:
        B, n = x0.shape[0], len(self.grid)
        cond = check_cond(model, cond, B)
        if self.variance == "learned_range" and not model.learns_variance:
            raise ValueError("variance 'learned_range' needs a network with a variance head "
                             "(config.model.learn_variance = True)")
        k = _levels(x0, self.n_bins, self.centered)  # the decoder's data, checked before the network call
        j, w = self.sampler.sample(B, generator)
        t = self.grid[j].to(x0.device)
        alpha, sigma = (c.to(x0.dtype) for c in self.sde.marginal_coeffs(t))
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        x_t = append_dims(alpha, x0.ndim) * x0 + append_dims(sigma, x0.ndim) * z
        F, v = model.raw_and_v(x_t, t.to(x0.dtype), **cond)
        mean_F = F.detach() if self.objective == "hybrid" else F
        terms = self.terms(x0, k, j.to(x0.device), model.convert("x0", x_t, t.to(x0.dtype), mean_F), v)
        per_sample = n * terms
        if self.objective == "hybrid":
            simple = eps_error(model.parametrization, F, x0, z, alpha, sigma).pow(2).flatten(1).mean(1)
            per_sample = simple.double() + self.vlb_weight * per_sample
        per_sample = per_sample * w.to(per_sample.device)
        self.sampler.update(j, per_sample)
        return per_sample.mean().to(x0.dtype)

    def terms(self, x0: Tensor, k: Tensor, j: Tensor, x0_hat: Tensor, v: Optional[Tensor]) -> Tensor:
        """L_j [B] in bits per dimension, float64: the step KL where j < n - 1, the decoder's NLL of the levels
        k at j = n - 1 (x0_hat and v at x_{t_j}; v None without a variance head)."""
        n, out = len(self.grid), torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
        bits = x0[0].numel() * math.log(2)
        learned = self.variance == "learned_range"
        step = (j < n - 1).nonzero().squeeze(1)
        if len(step):
            i = j[step].cpu()
            t, s = self.grid[i].to(x0.device), self.grid[i + 1].to(x0.device)
            q = reverse_step.Posterior(*(c[i].to(x0.device) for c in self._steps))
            var = reverse_step.reverse_variance(self.sde, t, s, self.variance, v=v[step] if learned else None, q=q)
            out = out.index_put((step,), likelihood.step_kl(q, x0[step], x0_hat[step], var) / bits)
        last = (j == n - 1).nonzero().squeeze(1)
        if len(last):
            var = likelihood.decoder_variance(self.sde, self.grid, self.variance, v=v[last] if learned else None)
            nll = -likelihood.discretized_gaussian_log_likelihood(k[last], x0_hat[last].double(),
                                                                  var.expand_as(x0[last]).to(x0.device),
                                                                  n_bins=self.n_bins, centered=self.centered)
            out = out.index_put((last,), nll / bits)
        return out


def _levels(x0: Tensor, n_bins: int, centered: bool) -> Tensor:
    """The integer levels k of data x0 in model space (the inverse of `likelihood.levels_to_model_space`); a
    ValueError unless x0 holds such levels (to 1e-3 of a level, float32 rounding included)."""
    a, b = likelihood.data_scale(centered)
    scaled = (x0.double() - b) / a * (n_bins - 1)
    k = torch.round(scaled)
    if x0.numel() and (float((scaled - k).abs().max()) > 1e-3 or float(k.min()) < 0 or float(k.max()) > n_bins - 1):
        raise ValueError(f"x0 must hold {n_bins}-level data in model space ({'[-1, 1]' if centered else '[0, 1]'}, "
                         f"levels_to_model_space of integer levels) for the discretised decoder of L_vlb")
    return k
