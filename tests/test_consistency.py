"""Consistency models against the exact consistency function of Gaussian data.

For x0 ~ N(mu, s^2) (per coordinate) and any linear SDE, the probability-flow map from t to t_min is
f*(x, t) = alpha_min mu + sqrt(n_min / n_t) (x - alpha_t mu), n_t = alpha_t^2 s^2 + sigma_t^2; on VE,
f* = mu + sqrt((s^2 + sigma_min^2) / (s^2 + sigma^2)) (x - mu)."""
import math

import pytest
import torch

import models
import samplers
import sde_lib
from models.consistency import boundary_coeffs, noise_level
from score_toolkit import distillation

MU, S = 0.7, 0.4


def ve():
    return sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0)


def exact_f(sde, t_min, mu=MU, s=S):
    """f*(x, t) of the module docstring."""
    a0, s0 = (float(v) for v in sde.marginal_coeffs(torch.tensor(t_min, dtype=torch.float64)))
    n0 = a0 ** 2 * s ** 2 + s0 ** 2

    def f(x, t):
        a, sig = sde.marginal_coeffs(t.double())
        r = (n0 / (a ** 2 * s ** 2 + sig ** 2)).sqrt()[:, None]
        return a0 * mu + r * (x - a[:, None] * mu)

    return f


def score_of(sde, f, t_min):
    """The score whose Tweedie estimate is f / alpha_min (what models.ConsistencyFunction returns)."""
    a0 = float(sde.marginal_coeffs(torch.tensor(t_min, dtype=torch.float64))[0])

    def score(x, t):
        a, sig = sde.marginal_coeffs(t.double())
        return (a[:, None] / a0 * f(x, t) - x) / sig[:, None] ** 2

    return score


def gaussian_score(sde, mu=MU, s=S):
    def score(x, t):
        a, sig = sde.marginal_coeffs(t.double())
        return -(x - a[:, None] * mu) / (a[:, None] ** 2 * s ** 2 + sig[:, None] ** 2)

    return score


class _Net(torch.nn.Module):
    """A small random network of (x, c_noise), so the wrapper's algebra is tested away from any special case."""

    def __init__(self, dim=3):
        super().__init__()
        self.lin = torch.nn.Linear(dim + 1, dim).double()

    def forward(self, x, c):
        return torch.tanh(self.lin(torch.cat([x, c[:, None].log1p()], 1))) * 3


@pytest.mark.parametrize("param", ["eps", "score", "x0", "v"])
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_boundary_condition_holds_for_any_network(param, sde_name):
    sde = sde_lib.VPSDE() if sde_name == "vp" else ve()
    t_min = 1e-3 if sde_name == "vp" else 1e-5
    torch.manual_seed(0)
    f = models.ConsistencyFunction(models.Precond(sde, _Net(), param), t_min, sigma_data=0.5)
    x = torch.randn(16, 3, dtype=torch.float64) * 2
    t = torch.full((16,), t_min, dtype=torch.float64)
    torch.testing.assert_close(f.consistency(x, t), x, rtol=0, atol=1e-13)
    # Away from it, f is Song et al.'s c_skip y + c_out F~, with F~ = (D - c_skip^EDM y) / c_out^EDM.
    t = torch.rand(16, dtype=torch.float64) * 0.9 + 0.05
    nu, (alpha, _) = noise_level(sde, t), sde.marginal_coeffs(t)
    y, d = x / alpha[:, None], f.precond.denoise(x, t)
    sd = 0.5
    c_skip = sd ** 2 / ((nu - f.nu_min) ** 2 + sd ** 2)
    c_out = (nu - f.nu_min) * sd / (nu ** 2 + sd ** 2).sqrt()
    F = (d - (sd ** 2 / (nu ** 2 + sd ** 2))[:, None] * y) / (nu * sd / (nu ** 2 + sd ** 2).sqrt())[:, None]
    torch.testing.assert_close(f.consistency(x, t), f.alpha_min * (c_skip[:, None] * y + c_out[:, None] * F),
                               rtol=1e-12, atol=1e-12)
    # Its score gives f back through Tweedie's formula, which is how the consistency sampler reads it.
    torch.testing.assert_close(f.alpha_min * sde.tweedie(x, t, f(x, t)), f.consistency(x, t), rtol=1e-10, atol=1e-10)


def test_boundary_coefficients():
    nu = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    c_skip, ratio = boundary_coeffs(nu, 0.002, 0.5)
    assert float(c_skip[0]) == 1.0 and float(ratio[0]) == 0.0
    assert float(c_skip[-1]) < 1e-4 and abs(float(ratio[-1]) - 1) < 1e-4


def test_one_step_sampling_is_the_exact_map_and_its_distribution():
    """One step from x_T = sigma_max z gives f*(x_T) exactly, so N(mu (1 - r), r^2 sigma_max^2) with
    r^2 = (s^2 + sigma_min^2) / (s^2 + sigma_max^2): the variance (s^2 + sigma_min^2) sigma_max^2 /
    (s^2 + sigma_max^2), and a mean within mu r (5.6e-3 here) of mu."""
    sde, t_min = ve(), 1e-5
    f = exact_f(sde, t_min)
    x_T = sde.prior_sampling((4000, 1), torch.Generator().manual_seed(0), dtype=torch.float64)
    x, nfe = samplers.consistency_sample(sde, score_of(sde, f, t_min), (4000, 1), steps=1, eps=t_min,
                                         x_T=x_T, dtype=torch.float64)
    assert nfe == 1
    T = torch.full((4000,), sde.T, dtype=torch.float64)
    torch.testing.assert_close(x, f(x_T, T), rtol=0, atol=1e-12)
    s_min, s_max = (float(v) for v in sde.marginal_coeffs(torch.tensor([t_min, 1.0], dtype=torch.float64))[1])
    std = math.sqrt((S ** 2 + s_min ** 2) * s_max ** 2 / (S ** 2 + s_max ** 2))  # r sigma_max
    mean = MU * (1 - std / s_max)
    assert abs(float(x.mean()) - mean) < 4 * std / math.sqrt(4000)
    assert abs(float(x.std()) / std - 1) < 4 / math.sqrt(2 * 4000)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_multistep_sampling_keeps_the_exact_marginal(sde_name):
    """With f* and x_T from the true marginal p_T, every step of Algorithm 1 returns to p_{t_min} exactly:
    re-noising by the exact transition gives p_{t_i}, and f* carries it back."""
    sde = sde_lib.VPSDE() if sde_name == "vp" else ve()
    t_min = 1e-3 if sde_name == "vp" else 1e-5
    f, n = exact_f(sde, t_min), 200_000
    g = torch.Generator().manual_seed(1)
    a_T, s_T = (float(v) for v in sde.marginal_coeffs(torch.tensor(sde.T, dtype=torch.float64)))
    x_T = a_T * MU + math.sqrt(a_T ** 2 * S ** 2 + s_T ** 2) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    x, nfe = samplers.consistency_sample(sde, score_of(sde, f, t_min), (n, 1), steps=4, eps=t_min, x_T=x_T,
                                         seed=2, dtype=torch.float64)
    assert nfe == 4
    a0, s0 = (float(v) for v in sde.marginal_coeffs(torch.tensor(t_min, dtype=torch.float64)))
    mean, std = a0 * MU, math.sqrt(a0 ** 2 * S ** 2 + s0 ** 2)
    assert abs(float(x.mean()) - mean) < 4 * std / math.sqrt(n)
    assert abs(float(x.std()) / std - 1) < 4 / math.sqrt(2 * n)


def _pair_error_sq(f, sde, method, x_hi, t_hi, t_lo, x0=None, z=None):
    """f*(x_{n+1}, t_{n+1}) - f*(x_n, t_n) with x_n from the teacher's step (CD) or the same noise (CT)."""
    if method == "cd":
        x_lo = samplers.ode_step("heun", sde, gaussian_score(sde), x_hi, t_hi, t_lo)
    else:
        alpha, sigma = sde.marginal_coeffs(t_lo)
        x_lo = alpha[:, None] * x0 + sigma[:, None] * z
    return (f(x_hi, t_hi) - f(x_lo, t_lo)) ** 2


def test_cd_loss_at_the_exact_function_vanishes_and_ct_keeps_its_bias():
    """Both losses at f*, divided by the squared boundary gap (nu_{n+1} - nu_n)^2, averaged over n, in
    closed form per n (f* and the steps are affine in (x0, z)). CD with the exact score's Heun step falls
    like N^-4 to 0; CT tends to the positive mean of r^2 s^2 / (s^2 + nu^2) (the variance of its
    one-sample estimate of df*/dnu), r^2 = (s^2 + nu_min^2) / (s^2 + nu^2)."""
    sde, t_min = ve(), 1e-5
    f = exact_f(sde, t_min)
    cd, ct = {}, {}
    for N in (20, 40, 80, 160, 320):
        times = distillation.cm_boundaries(sde, N, t_min)
        nu = noise_level(sde, times)
        t_lo, t_hi = times[:-1], times[1:]
        gap2 = (nu[1:] - nu[:-1]) ** 2
        # Closed form per n: the error is affine in (w, z), so its mean square is the sum of the squared
        # coefficients, read off by evaluating at unit inputs (f*(mu) = mu maps to itself).
        sig_hi = sde.marginal_coeffs(t_hi)[1]
        one, zero = torch.ones(N - 1, 1, dtype=torch.float64), torch.zeros(N - 1, 1, dtype=torch.float64)
        x_hi = MU + (S ** 2 + sig_hi[:, None] ** 2).sqrt() * one
        cd[N] = float((_pair_error_sq(f, sde, "cd", x_hi, t_hi, t_lo)[:, 0] / gap2).mean())
        e_x0 = _pair_error_sq(f, sde, "ct", MU + S * one + sig_hi[:, None] * zero, t_hi, t_lo, MU + S * one, zero)
        e_z = _pair_error_sq(f, sde, "ct", MU + sig_hi[:, None] * one, t_hi, t_lo, MU + zero, one)
        ct[N] = float(((e_x0 + e_z)[:, 0] / gap2).mean())
        r2 = (S ** 2 + float(nu[0]) ** 2) / (S ** 2 + nu[:-1] ** 2)
        limit = float((r2 * S ** 2 / (S ** 2 + nu[:-1] ** 2)).mean())
        assert abs(ct[N] / limit - 1) < 4.0 / N, (N, ct[N], limit)
    ratios = [cd[N] / cd[2 * N] for N in (20, 40, 80, 160)]
    assert all(r > 10 for r in ratios), ratios  # N^-4 would be 16
    assert cd[320] < 1e-7 * ct[320]
    assert min(ct.values()) > 0.2


class _Exact(torch.nn.Module):
    """A stand-in student whose consistency function is f* (for the loss's own sampling of pairs)."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def consistency(self, x, t):
        return self.f(x, t)


@pytest.mark.parametrize("solver", ["euler", "heun", "ddim"])
def test_cd_loss_at_the_exact_function_is_far_below_ct_and_shrinks_with_n(solver):
    """The losses as training computes them (pairs drawn per sample), at f*: CD's falls with N, and at
    N = 80 it is a small fraction of CT's on the same draws."""
    sde, t_min = ve(), 1e-5
    f = _Exact(exact_f(sde, t_min))
    x0 = MU + S * torch.randn(4096, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def loss(method, N):
        fn = distillation.ConsistencyLoss(sde, method, 100, t_min, schedule="improved", s0=N - 1, s1=N - 1,
                                          solver=solver)
        fn.attach(gaussian_score(sde))
        return float(fn(f, x0, torch.Generator().manual_seed(4)))

    cd = [loss("consistency_distillation", N) for N in (10, 20, 40, 80)]
    assert all(a > b for a, b in zip(cd, cd[1:])), cd
    assert cd[-1] < 0.05 * loss("consistency_training", 80)


def test_schedules():
    assert distillation.cm_schedule("fixed", 5, 100, 2, 18, 0.95) == (18, 0.95)
    N0, mu0 = distillation.cm_schedule("song", 0, 100, 2, 150, 0.9)
    N1, _ = distillation.cm_schedule("song", 100, 100, 2, 150, 0.9)
    assert (N0, N1) == (2, 151) and abs(mu0 - 0.9) < 1e-12
    # improved: N = min(s0 2^floor(k / K'), s1) + 1 with K' = floor(K / (log2 floor(s1 / s0) + 1))
    K = 400_000
    k_prime = math.floor(K / (math.log2(1280 // 10) + 1))
    assert distillation.cm_schedule("improved", 0, K, 10, 1280, 0)[0] == 11
    assert distillation.cm_schedule("improved", 3 * k_prime, K, 10, 1280, 0)[0] == 81
    assert distillation.cm_schedule("improved", K, K, 10, 1280, 0)[0] == 1281


def test_pseudo_huber_keeps_its_digits():
    a = torch.zeros(2, 3, dtype=torch.float64)
    b = torch.tensor([[1e-9, 0, 0], [3.0, 4.0, 0]], dtype=torch.float64)
    got = distillation.pseudo_huber(a, b, 0.01)
    torch.testing.assert_close(got, torch.tensor([1e-18 / 0.02, math.sqrt(25 + 1e-4) - 0.01], dtype=torch.float64),
                               rtol=1e-12, atol=0)


def test_ode_steps_match_their_closed_forms_per_sample():
    """ode_step with a different time per sample equals the same step taken sample by sample, and the
    ddim step is exact for a point mass (the probability flow of a delta at mu is x_s = alpha_s mu +
    (sigma_s / sigma_t)(x_t - alpha_t mu))."""
    sde = sde_lib.VPSDE()
    mu = 0.3
    point = lambda x, t: -(x - sde.marginal_coeffs(t.double())[0][:, None] * mu) / sde.marginal_coeffs(t.double())[1][:, None] ** 2  # noqa: E731
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.tensor([0.9, 0.7, 0.5, 0.3, 0.1], dtype=torch.float64)
    s = t - 0.05
    for method in samplers.ODE_STEPS:
        batched = samplers.ode_step(method, sde, gaussian_score(sde), x, t, s)
        single = torch.cat([samplers.ode_step(method, sde, gaussian_score(sde), x[i:i + 1], t[i:i + 1], s[i:i + 1])
                            for i in range(5)])
        torch.testing.assert_close(batched, single, rtol=0, atol=1e-14)
    (a_t, s_t), (a_s, s_s) = sde.marginal_coeffs(t), sde.marginal_coeffs(s)
    exact = a_s[:, None] * mu + (s_s / s_t)[:, None] * (x - a_t[:, None] * mu)
    torch.testing.assert_close(samplers.ode_step("ddim", sde, point, x, t, s), exact, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="method must be one of"):
        samplers.ode_step("rk4", sde, point, x, t, s)
