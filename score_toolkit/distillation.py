"""Distillation to a few network calls: progressive distillation and consistency distillation / training.

Both are losses of the training loop (`training.train`), `loss_fn(model, x0, generator, cond)`, with
hooks the loop calls around each optimizer step (`before_step(state)`, `after_step(state)`, which
names a finished stage) and a state dict that each checkpoint keeps, so a run resumes bit for bit.
The teacher is a score_fn (a trained network, guided or not, or an exact score), given by `attach`.

Progressive distillation (Salimans & Ho 2022), on any linear SDE x_t = alpha_t x_0 + sigma_t z.
On a named time grid with 2n steps, the student's n-step grid keeps every other time (for the grids
in PD_GRIDS, t_k = g(k / n), so that is the same named grid with n steps). For a student step t -> s
with the teacher's midpoint t' between them, two teacher DDIM steps give z_s from z_t, and the
student's one DDIM step z_s = alpha_s x + (sigma_s / sigma_t)(z_t - alpha_t x) lands there iff

    x~ = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t).

The loss is w(t) ||x_hat_student(z_t) - x~||^2 (mean over dimensions), with w = max(SNR, 1)
("truncated_snr"), SNR + 1 ("snr_plus_one", the v-loss) or SNR ("snr", the eps-loss). Each halving
trains `steps_per_halving` steps; then the student's EMA becomes the teacher and the student's start.

Consistency models (Song et al. 2023; Song & Dhariwal 2023). The student is a `models.ConsistencyFunction`
f_theta. The boundaries t_min = t_1 < ... < t_N = T are EDM's rho = 7 grid in the noise level
nu = sigma / alpha. For n drawn per sample, x_{n+1} = alpha x_0 + sigma z at t_{n+1}, and

    CD: x_n = one step of the teacher's probability-flow ODE from t_{n+1} (samplers.ode_step: euler,
        heun or ddim),        CT: x_n = alpha_n x_0 + sigma_n z (the same z: DDIM with x_0 itself),
    loss = lambda(n) d(f_theta(x_{n+1}, t_{n+1}), f_theta-(x_n, t_n)),

with theta- an EMA of theta (decay mu(k)), d the mean squared error ("l2") or the pseudo-Huber
sqrt(||a - b||^2 + c^2) - c, lambda = 1 ("uniform") or 1 / (nu_{n+1} - nu_n) ("inverse_delta").
Schedules of N and mu over training steps k of K:
  "fixed"     N = s1, mu = mu0 (consistency distillation's);
  "song"      N(k) = ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1,  mu(k) = exp(s0 log mu0 / N(k));
  "improved"  N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2 floor(s1 / s0) + 1)), mu = 0.
n is drawn uniformly, or ("lognormal") with P(n) proportional to the mass of N(P_mean, P_std^2)
between log nu_n and log nu_{n+1}.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Optional

import torch

from sde_lib import SDE
from sde_lib.checks import check_one_of
import models
import samplers
from samplers.base import coeff

Tensor = torch.Tensor
METHODS = ("progressive", "consistency_distillation", "consistency_training")
PD_GRIDS = ("uniform_t", "uniform_log_snr", "karras", "quadratic")
PD_WEIGHTINGS = ("truncated_snr", "snr_plus_one", "snr")
CM_SCHEDULES = ("fixed", "song", "improved")
CM_LOSSES = ("l2", "pseudo_huber")
CM_WEIGHTINGS = ("uniform", "inverse_delta")
CM_TIMES = ("uniform", "lognormal")


# ----- progressive distillation -----------------------------------------------------------------

def two_step_target(sde: SDE, teacher, z_t: Tensor, t: Tensor, t_mid: Tensor, s: Tensor, cond: dict) -> Tensor:
    """x~ of the module docstring: the x0 whose one DDIM step t -> s equals two teacher DDIM steps
    t -> t_mid -> s from z_t (times float64 [B]). `teacher` is a score_fn(x, t, **cond)."""
    score = _bound(teacher, cond)
    z_s = samplers.ode_step("ddim", sde, score, samplers.ode_step("ddim", sde, score, z_t, t, t_mid), t_mid, s)
    (alpha_t, sigma_t), (alpha_s, sigma_s) = sde.marginal_coeffs(t), sde.marginal_coeffs(s)
    ratio = sigma_s / sigma_t
    return (z_s - coeff(ratio, z_t) * z_t) / coeff(alpha_s - ratio * alpha_t, z_t)


def pd_weight(sde: SDE, t: Tensor, weighting: str) -> Tensor:
    """w(t) of the x-space loss, float64 [B]: max(SNR, 1), SNR + 1 or SNR."""
    snr = (2 * sde.log_snr(t)).exp()
    return {"truncated_snr": snr.clamp_min(1.0), "snr_plus_one": snr + 1, "snr": snr}[weighting]


def halvings(teacher_steps: int, final_steps: int) -> int:
    """log2(teacher_steps / final_steps), a ValueError unless that is a whole number >= 1."""
    k = round(math.log2(teacher_steps / final_steps)) if final_steps >= 1 and teacher_steps > final_steps else 0
    if k < 1 or final_steps * 2 ** k != teacher_steps:
        raise ValueError(f"final_steps = {final_steps!r} must be teacher_steps = {teacher_steps!r} halved one or "
                         f"more times (teacher_steps / 2^k for k >= 1)")
    return k


class ProgressiveDistillation:
    """The training loss of progressive distillation (module docstring) with its halving schedule.

    Args: the SDE; grid (PD_GRIDS), teacher_steps N0 and final_steps N0 / 2^K; steps_per_halving P
    (training steps of each of the K halvings); weighting (PD_WEIGHTINGS); eps, the grid's last time.
    Training step k (from 0) belongs to halving h = k // P + 1, whose student takes N0 / 2^h steps.
    """

    def __init__(self, sde: SDE, grid: str, teacher_steps: int, final_steps: int, steps_per_halving: int,
                 weighting: str = "truncated_snr", eps: Optional[float] = None):
        check_one_of("grid", grid, PD_GRIDS)
        check_one_of("weighting", weighting, PD_WEIGHTINGS)
        self.num_halvings = halvings(teacher_steps, final_steps)
        if not isinstance(steps_per_halving, int) or steps_per_halving < 1:
            raise ValueError(f"steps_per_halving must be an integer >= 1, got {steps_per_halving!r}")
        self.sde, self.grid, self.teacher_steps, self.final_steps = sde, grid, teacher_steps, final_steps
        self.steps_per_halving, self.weighting = steps_per_halving, weighting
        self.eps = sde.sampling_eps if eps is None else eps
        self.total_steps = self.num_halvings * steps_per_halving
        self.teacher = self.teacher_net = self.student_teacher = self._saved_teacher = None
        self.halving, self._grids = 1, {}

    def attach(self, teacher: Callable, teacher_net: Optional[torch.nn.Module] = None) -> None:
        """The first teacher's score_fn (a network, guided or not, or an exact score), and `teacher_net`,
        the network the student starts from (None: the student starts from its own initialisation)."""
        self.teacher, self.teacher_net = teacher, teacher_net

    def student_steps(self, halving: int) -> int:
        return self.teacher_steps // 2 ** halving

    def times(self, halving: int) -> Tensor:
        """The teacher's grid of halving h, float64 [2 n + 1] (n = the student's steps); built once."""
        if halving not in self._grids:
            self._grids[halving] = samplers.get_grid(self.grid, self.sde, 2 * self.student_steps(halving), self.eps)
        return self._grids[halving]

    def before_step(self, state) -> None:
        """At step 0 the student starts as the teacher; at the first step of each later halving the
        student's EMA becomes the teacher (a frozen copy of the network) and the student's weights,
        with Adam's moments reset."""
        if state.step == 0:
            start_from(state, self.teacher_net)
        if self._saved_teacher is not None:  # a resumed run past its first halving
            self._previous_student(state).load_state_dict(self._saved_teacher)
            self._saved_teacher = None
        halving = min(state.step // self.steps_per_halving + 1, self.num_halvings)
        if halving != self.halving:
            self.halving = halving
            state.ema.copy_to(state.model.parameters())
            self._previous_student(state).load_state_dict(state.model.state_dict())
            state.optimizer.state.clear()

    def _previous_student(self, state) -> torch.nn.Module:
        """The frozen network that teaches every halving after the first."""
        if self.student_teacher is None:
            self.student_teacher = _frozen_copy(state.model)
        return self.student_teacher

    def after_step(self, state) -> Optional[str]:
        """The name of the distilled model a step finishes ("steps_<n>"), at the end of each halving."""
        if state.step % self.steps_per_halving == 0 and state.step <= self.total_steps:
            return f"steps_{self.student_steps(state.step // self.steps_per_halving)}"
        return None

    def teacher_of(self, model) -> Callable:
        """This halving's teacher: the attached one in the first, then the previous student with the
        student's own wrapper (unguided: a student of a guided teacher has learned the guidance)."""
        if self.halving == 1:
            return self.teacher
        return models.Precond(model.sde, self.student_teacher, model.parametrization, model.continuous)

    def __call__(self, model, x0: Tensor, generator: Optional[torch.Generator] = None, cond: Optional[dict] = None):
        cond = cond or {}
        n = self.student_steps(self.halving)
        grid = self.times(self.halving).to(x0.device)
        i = torch.randint(0, n, (x0.shape[0],), generator=generator).to(x0.device)
        t, t_mid, s = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        alpha, sigma = self.sde.marginal_coeffs(t)
        z_t = torch.addcmul(coeff(alpha, x0) * x0, coeff(sigma, x0), z)
        with torch.no_grad():
            target = two_step_target(self.sde, self.teacher_of(model), z_t, t, t_mid, s, cond)
        x_hat = model.denoise(z_t, t.to(x0.dtype), **cond)
        per_sample = (x_hat - target).pow(2).flatten(1).mean(1)
        return (pd_weight(self.sde, t, self.weighting).to(x0.dtype) * per_sample).mean()

    def state_dict(self) -> dict:
        state = {"halving": self.halving}
        if self.halving > 1:  # the first teacher is the checkpoint distilled; later ones are students
            state["teacher"] = self.student_teacher.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.halving = int(state["halving"])
        self._saved_teacher = state.get("teacher")


# ----- consistency models -----------------------------------------------------------------------

def cm_boundaries(sde: SDE, N: int, t_min: float, rho: float = 7.0) -> Tensor:
    """t_1 = t_min < ... < t_N = T, float64 [N]: EDM's rho grid in nu = sigma / alpha."""
    return samplers.karras(sde, N - 1, t_min, rho).flip(0)


def cm_schedule(kind: str, k: int, K: int, s0: int, s1: int, mu0: float):
    """(N(k), mu(k)) of the module docstring at training step k of K."""
    if kind == "fixed":
        return s1, mu0
    if kind == "song":
        N = math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1) + 1
        return N, math.exp(s0 * math.log(mu0) / N)
    k_prime = math.floor(K / (math.log2(math.floor(s1 / s0)) + 1))
    return min(s0 * 2 ** (k // k_prime), s1) + 1, 0.0


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """sqrt(||a - b||^2 + c^2) - c per sample [B], written as ||a - b||^2 / (sqrt(. + c^2) + c), which
    keeps its digits where ||a - b|| << c."""
    sq = (a - b).pow(2).flatten(1).sum(1)
    return sq / ((sq + c * c).sqrt() + c)


class ConsistencyLoss:
    """The training loss of consistency distillation (`teacher` attached) or training (no teacher),
    module docstring. The student `model` given to each call is a `models.ConsistencyFunction`; its
    target network theta- is an EMA of its network, kept here and in each checkpoint.

    Args: the SDE; method ("consistency_distillation" | "consistency_training"); total_steps K; t_min;
    sigma_data; schedule, s0, s1, mu0; solver (CD's teacher step, samplers.ODE_STEPS); loss, huber_c
    (0: 0.00054 sqrt(dimensions), Song & Dhariwal's); weighting; times, p_mean, p_std; rho.
    """

    def __init__(self, sde: SDE, method: str, total_steps: int, t_min: float, sigma_data: float = 0.5,
                 schedule: str = "fixed", s0: int = 2, s1: int = 18, mu0: float = 0.95, solver: str = "heun",
                 loss: str = "l2", huber_c: float = 0.0, weighting: str = "uniform", times: str = "uniform",
                 p_mean: float = -1.1, p_std: float = 2.0, rho: float = 7.0):
        check_one_of("method", method, METHODS[1:])
        check_one_of("schedule", schedule, CM_SCHEDULES)
        check_one_of("solver", solver, samplers.ODE_STEPS)
        check_one_of("loss", loss, CM_LOSSES)
        check_one_of("weighting", weighting, CM_WEIGHTINGS)
        check_one_of("times", times, CM_TIMES)
        if not (isinstance(s0, int) and isinstance(s1, int) and 1 <= s0 <= s1):
            raise ValueError(f"s0 and s1 must be integers with 1 <= s0 <= s1, got s0 = {s0!r}, s1 = {s1!r}")
        if not 0 <= mu0 < 1:
            raise ValueError(f"mu0 must lie in [0, 1), got {mu0!r}")
        self.sde, self.method, self.total_steps, self.t_min = sde, method, total_steps, float(t_min)
        self.sigma_data, self.schedule, self.s0, self.s1, self.mu0 = sigma_data, schedule, s0, s1, mu0
        self.solver, self.loss, self.huber_c, self.weighting = solver, loss, huber_c, weighting
        self.time_dist, self.p_mean, self.p_std, self.rho = times, p_mean, p_std, rho
        self.teacher = self.teacher_net = self.target = self._saved_target = self._target_fn = None
        self.step, self._boundaries = 0, {}

    def attach(self, teacher: Optional[Callable], teacher_net: Optional[torch.nn.Module] = None) -> None:
        """CD's teacher score_fn (consistency training takes none); `teacher_net`, the network inside it,
        which the student starts from (given for CT too, it starts the student from its weights)."""
        self.teacher, self.teacher_net = teacher, teacher_net

    def before_step(self, state) -> None:
        """At step 0 the student (and its target) start from the teacher's network when there is one."""
        if self.target is None:
            self.target = _frozen_copy(state.model)
            if self._saved_target is not None:  # a resumed run's theta-
                self.target.load_state_dict(self._saved_target)
        if state.step == 0 and self.teacher_net is not None:
            start_from(state, self.teacher_net)
            self.target.load_state_dict(state.model.state_dict())
        self.step = state.step

    def after_step(self, state) -> None:
        """theta- <- mu theta- + (1 - mu) theta with this step's mu (no stage ends: returns None)."""
        _, mu = cm_schedule(self.schedule, self.step, self.total_steps, self.s0, self.s1, self.mu0)
        with torch.no_grad():
            live = [p for p in state.model.parameters() if p.requires_grad]
            torch._foreach_lerp_(list(self.target.parameters()), live, 1.0 - mu)

    def indices(self, nu: Tensor, B: int, generator) -> Tensor:
        """n in 0 .. N - 2 per sample (the pair t_n < t_{n+1}), uniform or lognormal."""
        if self.time_dist == "uniform":
            return torch.randint(0, len(nu) - 1, (B,), generator=generator)
        cdf = torch.special.ndtr((nu.log() - self.p_mean) / self.p_std)
        return torch.multinomial((cdf[1:] - cdf[:-1]).float(), B, replacement=True, generator=generator)

    def boundaries(self, N: int):
        """(t_1 .. t_N, their noise levels nu), float64 [N] each; built once per N."""
        if N not in self._boundaries:
            times = cm_boundaries(self.sde, N, self.t_min, self.rho)
            self._boundaries[N] = times, models.consistency.noise_level(self.sde, times)
        return self._boundaries[N]

    def pair(self, x0: Tensor, generator, N: int):
        """(x_{n+1}, t_{n+1}, t_n, z, lambda) for a batch: x_{n+1} = alpha x0 + sigma z at t_{n+1}, the pair
        of boundaries the loss compares and its weight."""
        times, nu = self.boundaries(N)
        n = self.indices(nu, x0.shape[0], generator)
        lam = 1 / (nu[n + 1] - nu[n]) if self.weighting == "inverse_delta" else torch.ones(len(n), dtype=nu.dtype)
        t_lo, t_hi, lam = (v.to(x0.device) for v in (times[n], times[n + 1], lam))
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        alpha, sigma = self.sde.marginal_coeffs(t_hi)
        x_hi = torch.addcmul(coeff(alpha, x0) * x0, coeff(sigma, x0), z)
        return x_hi, t_hi, t_lo, z, lam

    def neighbour(self, x_hi: Tensor, t_hi: Tensor, t_lo: Tensor, x0: Tensor, z: Tensor, cond: dict) -> Tensor:
        """x_n: the teacher's ODE step from x_{n+1} (CD), or alpha_n x0 + sigma_n z (CT)."""
        if self.method == "consistency_distillation":
            return samplers.ode_step(self.solver, self.sde, _bound(self.teacher, cond), x_hi, t_hi, t_lo)
        alpha, sigma = self.sde.marginal_coeffs(t_lo)
        return torch.addcmul(coeff(alpha, x0) * x0, coeff(sigma, x0), z)

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        if self.loss == "l2":
            return (a - b).pow(2).flatten(1).mean(1)
        c = self.huber_c or 0.00054 * math.sqrt(a[0].numel())
        return pseudo_huber(a, b, c)

    def __call__(self, model, x0: Tensor, generator: Optional[torch.Generator] = None, cond: Optional[dict] = None):
        cond = cond or {}
        N, _ = cm_schedule(self.schedule, self.step, self.total_steps, self.s0, self.s1, self.mu0)
        x_hi, t_hi, t_lo, z, lam = self.pair(x0, generator, N)
        with torch.no_grad():
            x_lo = self.neighbour(x_hi, t_hi, t_lo, x0, z, cond)
            target = self.target_fn(model).consistency(x_lo, t_lo.to(x0.dtype), **cond)
        pred = model.consistency(x_hi, t_hi.to(x0.dtype), **cond)
        return (lam.to(x0.dtype) * self.distance(pred, target)).mean()

    def target_fn(self, model) -> "models.ConsistencyFunction":
        """The student's consistency function with the target weights theta- (mu = 0: the student's own),
        wrapped once."""
        if self.schedule == "improved":
            return model
        if self._target_fn is None:
            precond = models.Precond(model.sde, self.target, model.precond.parametrization, model.precond.continuous)
            self._target_fn = models.ConsistencyFunction(precond, model.t_min, model.sigma_data)
        return self._target_fn

    def state_dict(self) -> dict:
        return {"target": self.target.state_dict()} if self.target is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._saved_target = state.get("target")


# ----- shared -----------------------------------------------------------------------------------

def start_from(state, net: Optional[torch.nn.Module]) -> None:
    """The student's weights and EMA set to `net`'s (a fresh run's first step); nothing when None."""
    if net is None:
        return
    state.model.load_state_dict(net.state_dict())
    params = [p for p in state.model.parameters() if p.requires_grad]
    state.ema.shadow_params = [p.detach().clone() for p in params]


def _frozen_copy(net: torch.nn.Module) -> torch.nn.Module:
    target = copy.deepcopy(net).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def _bound(score_fn, cond: dict):
    return (lambda x, t: score_fn(x, t, **cond)) if cond else score_fn

