"""Linear SDEs of score-based generative modelling: VP (DDPM), sub-VP and VE (SMLD / NCSN).

Every SDE here is linear in x,

    dx = f(t) x dt + g(t) dw,

so the perturbation kernel is Gaussian with scalar coefficients,

    p_0t(x_t | x_0) = N(x_t; alpha(t) x_0, sigma(t)^2 I),

and every question a sampler, a loss or the likelihood asks about an SDE (its marginals, the exact
transition between two times, the discrete chain it generalises) is answered from `alpha(t)`,
`sigma(t)`, `f(t)` and `g(t)`. Nothing outside this module needs to know which SDE it holds.

Shapes: `x` is a batch `[B, ...]` of any shape (2-D points, images); `t` is a float tensor `[B]`
(or a scalar tensor) of times in `[0, T]`. Per-sample scalars broadcast with `append_dims`.
"""
from __future__ import annotations

import abc
import math
from typing import Callable, Optional, Tuple

import torch

from sde_lib.checks import check_one_of, check_positive, check_positive_int
from sde_lib.registry import Registry

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]

__all__ = ["append_dims", "SDE", "VPSDE", "subVPSDE", "VESDE", "ReverseSDE", "get_sde"]


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Reshape a per-sample tensor `[B]` (or a scalar) to `[B, 1, ..., 1]` with `ndim` dims in all."""
    if v.ndim == 0:
        return v
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def _as_time(t, like: Tensor) -> Tensor:
    """`t` as a tensor on `like`'s device; python floats become 0-dim tensors."""
    if not torch.is_tensor(t):
        t = torch.tensor(t, dtype=torch.float64)
    return t.to(like.device)


class SDE(abc.ABC):
    """A linear SDE dx = f(t) x dt + g(t) dw on [0, T], discretised with N steps.

    Subclasses give `_log_alpha(t)`, `_sigma(t)`, `_f(t)`, `_g2(t)` (scalar functions of a time
    tensor) and `prior_std`; the rest follows from them.

    Attributes:
      N: number of discretisation steps (the length of the classic discrete chain).
      sampling_eps: the smallest time samplers integrate to (documented per SDE).
      conditioning: what a network conditions on: "time" (999 t, VP-type) or "sigma" (VE); the
        labels themselves are made in `models.precond`, the one place that reads networks.
      parametrization: what a network predicts by default: "eps" (VP-type) or "score" (VE).
    """

    sampling_eps: float = 1e-3
    conditioning: str = "time"
    parametrization: str = "eps"

    def __init__(self, N: int):
        self.N = check_positive_int(N, "N")

    # ----- what a subclass defines -----
    @property
    def T(self) -> float:
        """End time of the forward SDE."""
        return 1.0

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the Gaussian prior N(0, prior_std^2 I) at time T."""

    @abc.abstractmethod
    def _log_alpha(self, t: Tensor) -> Tensor:
        """log alpha(t), the log of the mean coefficient: E[x_t | x_0] = alpha(t) x_0."""

    @abc.abstractmethod
    def _sigma(self, t: Tensor) -> Tensor:
        """sigma(t), the standard deviation of x_t given x_0."""

    @abc.abstractmethod
    def _f(self, t: Tensor) -> Tensor:
        """The drift coefficient f(t) in dx = f(t) x dt + g(t) dw."""

    @abc.abstractmethod
    def _g2(self, t: Tensor) -> Tensor:
        """The squared diffusion coefficient g(t)^2."""

    # ----- the forward SDE and its marginals -----
    def sde(self, x: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
        """Drift `f(t) x` (shaped like x) and diffusion `g(t)` (shaped like t)."""
        t = _as_time(t, x)
        return append_dims(self._f(t).to(x.dtype), x.ndim) * x, self._g2(t).sqrt().to(x.dtype)

    def diffusion(self, t: Tensor) -> Tensor:
        """g(t), shaped like t."""
        return self._g2(t).sqrt()

    def marginal_coeffs(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        """(alpha(t), sigma(t)), each shaped like t: x_t = alpha(t) x_0 + sigma(t) z."""
        return self._log_alpha(t).exp(), self._sigma(t)

    def marginal_prob(self, x: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
        """Mean `alpha(t) x` (shaped like x) and std `sigma(t)` (shaped like t) of p_0t(x_t | x_0 = x)."""
        t = _as_time(t, x)
        alpha, sigma = self.marginal_coeffs(t)
        return append_dims(alpha.to(x.dtype), x.ndim) * x, sigma.to(x.dtype)

    def tweedie(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Tweedie's formula: E[x_0 | x_t] = (x_t + sigma(t)^2 s(x_t, t)) / alpha(t), with s the score
        at (x_t, t); t [B] (or scalar), x and score [B, ...]. The one x0-from-score formula."""
        t = _as_time(t, x)
        alpha, sigma = self.marginal_coeffs(t)
        return torch.addcmul(x, append_dims((sigma ** 2).to(x.dtype), x.ndim), score) / append_dims(alpha.to(x.dtype), x.ndim)

    # ----- log-SNR and noise-level maps (what few-step samplers and time grids work in) -----
    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(alpha(t) / sigma(t)), strictly decreasing in t; shaped like t."""
        return self._log_alpha(t) - self._sigma(t).log()

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """The time t with log_snr(t) = lam (the inverse of `log_snr`); shaped like lam.

        Subclasses give closed forms; this generic one bisects in float64 on [0, T].
        """
        return self._bisect(self.log_snr, lam, decreasing=True)

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        """The time t with marginal std sigma(t) = sigma (the inverse of sigma(t)); shaped like sigma."""
        return self._bisect(self._sigma, sigma, decreasing=False)

    def _bisect(self, fn, target: Tensor, decreasing: bool, iters: int = 200) -> Tensor:
        """Solve fn(t) = target on [0, T] for a monotone fn, elementwise, by bisection in float64."""
        y = torch.as_tensor(target, dtype=torch.float64)
        lo, hi = torch.zeros_like(y), torch.full_like(y, self.T)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            below = (fn(mid) > y) if decreasing else (fn(mid) < y)  # the root lies above mid
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (0.5 * (lo + hi)).to(torch.as_tensor(target).dtype if torch.is_tensor(target) else torch.float64)

    def transition_coeffs(self, t: Tensor, s: Tensor) -> Tuple[Tensor, Tensor]:
        """Exact forward transition from time s to time t >= s: x_t = a x_s + b z.

        a = alpha(t) / alpha(s),   b^2 = sigma(t)^2 - a^2 sigma(s)^2   (both shaped like t).
        """
        a = (self._log_alpha(t) - self._log_alpha(s)).exp()
        b2 = self._sigma(t) ** 2 - (a * self._sigma(s)) ** 2
        return a, b2.clamp_min(0).sqrt()

    def prior_sampling(self, shape, generator: Optional[torch.Generator] = None,
                       device=None, dtype=torch.float32) -> Tensor:
        """A batch `shape` = [B, ...] drawn from the prior N(0, prior_std^2 I)."""
        z = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        return z * self.prior_std

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std^2 I), summed over all but the batch dimension: shape [B]."""
        D = math.prod(z.shape[1:])
        s2 = self.prior_std ** 2
        sq = z.flatten(1).pow(2).sum(1)
        return -0.5 * D * math.log(2 * math.pi * s2) - sq / (2 * s2)

    # ----- discretisations -----
    def step_size(self) -> float:
        """The time step T / N of the classic discrete chain."""
        return self.T / self.N

    def discretize(self, x: Tensor, t: Tensor, dt: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """One exact forward step from t - dt to t, written x_t = x_{t-dt} + f + G z.

        Returns f = (a - 1) x (shaped like x) and G = b (shaped like t), with (a, b) from
        `transition_coeffs(t, t - dt)`. For VP this is a DDPM Markov chain whose betas come from the
        continuous schedule, 1 - beta = alpha(t)^2 / alpha(t - dt)^2; for VE it is SMLD's ladder
        step, G^2 = sigma(t)^2 - sigma(t - dt)^2. Being exact, it holds for any dt, so strided
        grids need no other formula.
        """
        t = _as_time(t, x)
        if dt is None:
            dt = torch.full_like(t, self.step_size())
        s = (t - dt).clamp_min(0)
        a, b = self.transition_coeffs(t, s)
        return append_dims((a - 1).to(x.dtype), x.ndim) * x, b.to(x.dtype)

    def langevin_alpha(self, t: Tensor, s: Optional[Tensor] = None) -> Tensor:
        """The factor a^2 = alpha(t)^2 / alpha(s)^2 that scales Langevin step sizes, s the next time of
        the sampler's grid (default: t - T/N, one step of the classic chain).

        This is DDPM's alpha_i = 1 - beta_i for VP-type SDEs and 1 for VE, as in Song et al. 2021.
        """
        s = self._previous_time(t) if s is None else s
        return (2 * (self._log_alpha(t) - self._log_alpha(s))).exp()

    def _previous_time(self, t: Tensor) -> Tensor:
        """t - T/N, clamped at 0: the time one step of the classic chain before t."""
        return (t - self.step_size()).clamp_min(0)

    def discrete_index(self, t: Tensor) -> Tensor:
        """The index i in {0..N-1} of the classic discrete chain nearest to t: round(t / T (N - 1))."""
        return torch.round(t / self.T * (self.N - 1)).long().clamp(0, self.N - 1)

    @abc.abstractmethod
    def discrete_coeffs(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        """(alpha_i, sigma_i) of the classic discrete chain at the index i nearest to t (each shaped like t)."""

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE, or with `probability_flow=True` the probability-flow ODE."""
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """The reverse of a forward SDE given its score s(x, t) = grad log p_t(x):

        dx = [f(t) x - c g(t)^2 s(x, t)] dt + [probability_flow ? 0 : g(t)] dw_bar,

    with c = 1/2 for the probability-flow ODE and c = 1 for the reverse SDE. Time runs from T to 0.
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        self.forward_sde, self.score_fn, self.probability_flow = sde, score_fn, probability_flow
        self.T, self.N = sde.T, sde.N
        self._c = 0.5 if probability_flow else 1.0

    def _score(self, x: Tensor, t: Tensor) -> Tensor:
        # Times stay float64 for the coefficients; the score sees them in x's dtype.
        return self.score_fn(x, _as_time(t, x).to(x.dtype))

    def sde(self, x: Tensor, t: Tensor, score: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Reverse drift (shaped like x) and diffusion (shaped like t). Pass `score` to reuse one."""
        drift, g = self.forward_sde.sde(x, t)
        if score is None:
            score = self._score(x, t)
        drift = torch.addcmul(drift, append_dims(-self._c * g ** 2, x.ndim), score)
        return drift, torch.zeros_like(g) if self.probability_flow else g

    def discretize(self, x: Tensor, t: Tensor, dt: Optional[Tensor] = None,
                   score: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Reverse of `SDE.discretize`: rev_f = f - c G^2 s, rev_G = G (0 for the ODE)."""
        f, G = self.forward_sde.discretize(x, t, dt)
        if score is None:
            score = self._score(x, t)
        rev_f = torch.addcmul(f, append_dims(-self._c * G ** 2, x.ndim), score)
        return rev_f, torch.zeros_like(G) if self.probability_flow else G


# ---------------------------------------------------------------------------------------------
# Variance-preserving SDEs: DDPM in continuous time.


class VPSDE(SDE):
    """Variance-preserving SDE dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw (DDPM, Ho et al. 2020).

    alpha(t) = exp(-1/2 B(t)) with B(t) = int_0^t beta, sigma(t)^2 = 1 - alpha(t)^2; prior N(0, I).

    schedule="linear": beta(t) = beta_min + t (beta_max - beta_min); with N = 1000, beta_min = 0.1,
      beta_max = 20 (the default) its discrete chain has DDPM's betas linspace(1e-4, 0.02, 1000).
    schedule="cosine" (Nichol & Dhariwal 2021): alpha(t)^2 = c(t) / c(0) with
      c(t) = cos^2(pi/2 (t + s) / (1 + s)), s = cosine_s, so beta(t) = pi/(1+s) tan(pi/2 (t+s)/(1+s)).
      beta grows without bound near t = 1, so the SDE ends at the T where beta(T) = beta_max
      (default 999: T ~ 0.996, where alpha(T)^2 ~ 1e-5): the continuous analogue of clipping
      DDPM's betas at 0.999.

    `sampling_eps` = 1e-3: samplers stop at t = 1e-3, where sigma ~ 1e-2 for the linear schedule.
    """

    sampling_eps = 1e-3
    conditioning = "time"
    parametrization = "eps"

    def __init__(self, beta_min: float = 0.1, beta_max: Optional[float] = None, N: int = 1000,
                 schedule: str = "linear", cosine_s: float = 0.008):
        super().__init__(N)
        check_one_of("schedule", schedule, ("linear", "cosine"))
        if beta_max is None:  # linear: beta(1); cosine: where the schedule is cut (class docstring)
            beta_max = 20.0 if schedule == "linear" else 999.0
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        check_positive(cosine_s, "cosine_s")
        self.beta_min, self.beta_max, self.schedule, self.cosine_s = beta_min, beta_max, schedule, cosine_s
        self._T = 1.0 if schedule == "linear" else self._cosine_end()

    @property
    def T(self) -> float:
        return self._T

    @property
    def prior_std(self) -> float:
        return 1.0

    def _cosine_phase(self, t: Tensor) -> Tensor:
        return math.pi / 2 * (t + self.cosine_s) / (1 + self.cosine_s)

    def _cosine_end(self) -> float:
        """The t at which the cosine schedule's beta(t) reaches beta_max."""
        s = self.cosine_s
        return (1 + s) * 2 / math.pi * math.atan(self.beta_max * (1 + s) / math.pi) - s

    def beta(self, t: Tensor) -> Tensor:
        """beta(t) = -d/dt log alpha(t)^2."""
        if self.schedule == "linear":
            return self.beta_min + t * (self.beta_max - self.beta_min)
        return math.pi / (1 + self.cosine_s) * torch.tan(self._cosine_phase(t))

    def integrated_beta(self, t: Tensor) -> Tensor:
        """B(t) = int_0^t beta(u) du = -log alpha(t)^2."""
        if self.schedule == "linear":
            return t * (self.beta_min + 0.5 * (self.beta_max - self.beta_min) * t)
        # log(c(t) / c(0)) as the log of a ratio, so that B(0) is exactly 0 (not -1e-17, which
        # would make sigma(0) = sqrt(1 - e^-B) NaN).
        return -2 * torch.log(torch.cos(self._cosine_phase(t)) / math.cos(self._cosine_phase(0.0)))

    def _log_alpha(self, t):
        return -0.5 * self.integrated_beta(t)

    def _sigma(self, t):
        return self._sigma_of(self.integrated_beta(t))

    @staticmethod
    def _sigma_of(B: Tensor) -> Tensor:
        """sigma = sqrt(1 - exp(-B)), with expm1 so that small t keeps its digits."""
        return (-torch.expm1(-B)).sqrt()

    @staticmethod
    def _transition_var(dB: Tensor, B_sum: Tensor) -> Tensor:
        """b^2 = sigma(t)^2 - a^2 sigma(s)^2 = 1 - exp(-dB), dB = B(t) - B(s), B_sum = B(t) + B(s)."""
        return -torch.expm1(-dB)

    # The closed forms below give the same values as the generic SDE methods from one
    # evaluation of B per time, and b without the cancellation of sigma(t)^2 - a^2 sigma(s)^2.
    def marginal_coeffs(self, t):
        B = self.integrated_beta(t)
        return (-0.5 * B).exp(), self._sigma_of(B)

    def transition_coeffs(self, t, s):
        B_t, B_s = self.integrated_beta(t), self.integrated_beta(s)
        dB = B_t - B_s
        return (-0.5 * dB).exp(), self._transition_var(dB, B_t + B_s).clamp_min(0).sqrt()

    def langevin_alpha(self, t, s=None):
        s = self._previous_time(t) if s is None else s
        return (self.integrated_beta(s) - self.integrated_beta(t)).exp()

    def t_from_integrated_beta(self, B: Tensor) -> Tensor:
        """The inverse of B(t). Linear: t = 2B / (beta_min + sqrt(beta_min^2 + 2 (beta_max - beta_min) B)),
        the root of beta_min t + (beta_max - beta_min) t^2 / 2 = B written without cancellation.
        Cosine: cos(phase(t)) = cos(phase(0)) exp(-B/2), solved for t."""
        if self.schedule == "linear":
            d = self.beta_max - self.beta_min
            return 2 * B / (self.beta_min + (self.beta_min ** 2 + 2 * d * B).sqrt())
        phase = torch.arccos(math.cos(self._cosine_phase(0.0)) * (-0.5 * B).exp())
        return phase * (2 * (1 + self.cosine_s) / math.pi) - self.cosine_s

    def log_snr(self, t):
        # alpha^2 / sigma^2 = e^-B / (1 - e^-B) = 1 / expm1(B)
        return -0.5 * torch.log(torch.expm1(self.integrated_beta(t)))

    @staticmethod
    def _B_from_log_snr(lam: Tensor) -> Tensor:
        """B with -1/2 log(expm1(B)) = lam: B = log1p(e^(-2 lam))."""
        return torch.log1p(torch.exp(-2 * lam))

    @staticmethod
    def _B_from_sigma(sigma: Tensor) -> Tensor:
        """B with sqrt(1 - e^-B) = sigma: B = -log1p(-sigma^2)."""
        return -torch.log1p(-sigma ** 2)

    def t_from_log_snr(self, lam):
        return self.t_from_integrated_beta(self._B_from_log_snr(lam))

    def t_from_sigma(self, sigma):
        return self.t_from_integrated_beta(self._B_from_sigma(sigma))

    def _f(self, t):
        return -0.5 * self.beta(t)

    def _g2(self, t):
        return self.beta(t)

    # ----- the classic discrete chain (DDPM) -----
    @property
    def discrete_betas(self) -> Tensor:
        """DDPM's betas [N] (float64): linspace(beta_min/N, beta_max/N, N) for the linear
        schedule, 1 - alpha_bar(t_i) / alpha_bar(t_{i-1}) on t_i = (i + 1) T / N for cosine."""
        if self.schedule == "linear":
            return torch.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N, dtype=torch.float64)
        t = torch.arange(self.N + 1, dtype=torch.float64) * (self.T / self.N)
        return -torch.expm1(-(self.integrated_beta(t[1:]) - self.integrated_beta(t[:-1])))

    @property
    def discrete_alphas_cumprod(self) -> Tensor:
        """alpha_bar_i = prod_{j <= i} (1 - beta_j), shape [N], float64."""
        return torch.cumprod(1 - self.discrete_betas, 0)

    def discrete_coeffs(self, t):
        abar = self.discrete_alphas_cumprod.to(t.device)[self.discrete_index(t)].to(t.dtype)
        return abar.sqrt(), self._discrete_std(abar)

    def _discrete_std(self, abar: Tensor) -> Tensor:
        return (1 - abar).sqrt()


class subVPSDE(VPSDE):
    """Sub-variance-preserving SDE (Song et al. 2021):

        dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw,

    alpha(t) = exp(-1/2 B(t)) as for VP, sigma(t) = 1 - exp(-B(t)) <= the VP sigma; prior N(0, I).
    Same schedules and arguments as `VPSDE`.
    """

    @staticmethod
    def _sigma_of(B: Tensor) -> Tensor:
        """sigma = 1 - exp(-B)."""
        return -torch.expm1(-B)

    @staticmethod
    def _transition_var(dB: Tensor, B_sum: Tensor) -> Tensor:
        """b^2 = (1 - e^-B(t))^2 - e^-dB (1 - e^-B(s))^2, which factors as (1 - e^-dB)(1 - e^-(B(t) + B(s)))."""
        return torch.expm1(-dB) * torch.expm1(-B_sum)

    def _g2(self, t):
        return self.beta(t) * -torch.expm1(-2 * self.integrated_beta(t))

    def log_snr(self, t):
        B = self.integrated_beta(t)
        return -0.5 * B - torch.log(-torch.expm1(-B))

    @staticmethod
    def _B_from_log_snr(lam: Tensor) -> Tensor:
        """With a = alpha = e^(-B/2), lam = log(a / (1 - a^2)), so e^lam a^2 + a - e^lam = 0 and
        a = 2 e^lam / (1 + sqrt(1 + 4 e^(2 lam))) (the positive root, free of cancellation); B = -2 log a."""
        e = torch.exp(lam)
        a = 2 * e / (1 + torch.sqrt(1 + 4 * e * e))
        return -2 * torch.log(a)

    @staticmethod
    def _B_from_sigma(sigma: Tensor) -> Tensor:
        """B with 1 - e^-B = sigma: B = -log1p(-sigma)."""
        return -torch.log1p(-sigma)

    def _discrete_std(self, abar: Tensor) -> Tensor:
        return 1 - abar


# ---------------------------------------------------------------------------------------------
# Variance-exploding SDE: SMLD / NCSN in continuous time.


class VESDE(SDE):
    """Variance-exploding SDE dx = sqrt(d sigma(t)^2 / dt) dw (SMLD / NCSN, Song & Ermon 2019),

        sigma(t) = sigma_min (sigma_max / sigma_min)^t,  g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min)).

    alpha(t) = 1 and the marginal std at time t is sigma(t), not sqrt(sigma(t)^2 - sigma_min^2):
    the data are taken to carry sigma_min of noise at t = 0, as in the reference implementation
    and NCSN's noise ladder. Prior N(0, sigma_max^2 I). Its discrete chain is the geometric ladder
    sigma_i = sigma_min (sigma_max/sigma_min)^(i/(N-1)). `sampling_eps` = 1e-5. log-SNR is -log sigma(t): EDM's noise level sigma = e^(-lambda) is the
    VE sigma itself.
    """

    sampling_eps = 1e-5
    conditioning = "sigma"
    parametrization = "score"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self._log_ratio = math.log(sigma_max / sigma_min)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def _log_alpha(self, t):
        return torch.zeros_like(t)

    def _sigma(self, t):
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def _f(self, t):
        return torch.zeros_like(t)

    def _g2(self, t):
        return self._sigma(t) ** 2 * (2 * self._log_ratio)

    # Closed forms: a = 1, and b^2 = sigma(t)^2 - sigma(s)^2 = sigma(t)^2 (1 - (sigma(s)/sigma(t))^2)
    # written with expm1, exact for small steps where the difference would cancel.
    def marginal_coeffs(self, t):
        return torch.ones_like(t), self._sigma(t)

    def transition_coeffs(self, t, s):
        b = (-torch.expm1((s - t) * (2 * self._log_ratio))).clamp_min(0).sqrt() * self._sigma(t)
        return torch.ones_like(t), b

    def langevin_alpha(self, t, s=None):
        return torch.ones_like(t)

    def log_snr(self, t):
        return -self._sigma(t).log()

    def t_from_sigma(self, sigma):
        return (torch.log(sigma) - math.log(self.sigma_min)) / self._log_ratio

    def t_from_log_snr(self, lam):
        return self.t_from_sigma(torch.exp(-lam))

    @property
    def discrete_sigmas(self) -> Tensor:
        """SMLD's noise ladder [N] (float64), increasing from sigma_min to sigma_max."""
        return torch.exp(torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N,
                                        dtype=torch.float64))

    def discrete_coeffs(self, t):
        sigma = self.discrete_sigmas.to(t.device)[self.discrete_index(t)].to(t.dtype)
        return torch.ones_like(sigma), sigma


SDES = Registry("SDE", case_insensitive=True)
for _name, _cls in (("vpsde", VPSDE), ("subvpsde", subVPSDE), ("vesde", VESDE)):
    SDES.register(_name)(_cls)


def get_sde(name: str, **kwargs) -> SDE:
    """Build an SDE by name ('vpsde', 'subvpsde', 'vesde'; case-insensitive)."""
    return SDES.get(name)(**kwargs)
