"""SDE definitions against closed forms and against simulation of the forward SDE."""
import math

import pytest
import torch

import sde_lib
from tests.helpers import make_sdes


def _simulate(sde, x0, t_end, n_steps, g):
    """Fine Euler-Maruyama simulation of the forward SDE from 0 to t_end."""
    x, dt = x0.clone(), t_end / n_steps
    for i in range(n_steps):
        t = torch.full((x.shape[0],), i * dt, dtype=torch.float64)
        drift, diff = sde.sde(x, t)
        x = x + drift * dt + sde_lib.append_dims(diff, x.ndim) * math.sqrt(dt) * torch.randn(x.shape, generator=g, dtype=x.dtype)
    return x


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("t_end", [0.3, 1.0])
def test_marginal_prob_matches_simulation(name, t_end):
    sde = make_sdes()[name]
    g = torch.Generator().manual_seed(0)
    n = 10000
    x0 = torch.full((n, 2), 1.5, dtype=torch.float64)
    x0[:, 1] = -0.5
    start = x0
    if name == "ve":  # the VE data carry sigma_min of noise at t = 0 (see VESDE's docstring)
        start = x0 + sde.sigma_min * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    xt = _simulate(sde, start, t_end, 1000, g)
    mean, std = sde.marginal_prob(x0[:1], torch.tensor([t_end], dtype=torch.float64))
    se = std.item() / math.sqrt(n)
    assert torch.allclose(xt.mean(0), mean[0], atol=5 * se + 2e-3 * mean.abs().max().item())
    assert torch.allclose(xt.std(0), std.expand(2), rtol=0.03)  # 4 standard errors at n = 10^4


def test_shapes_any_batch_shape(sde):
    for shape in [(5, 2), (3, 1, 4, 4), (2, 3, 8, 8)]:
        x = torch.randn(shape)
        t = torch.rand(shape[0]) * 0.9 + 0.05
        drift, diff = sde.sde(x, t)
        mean, std = sde.marginal_prob(x, t)
        assert drift.shape == x.shape and mean.shape == x.shape
        assert diff.shape == (shape[0],) and std.shape == (shape[0],)
        z = sde.prior_sampling(shape)
        assert z.shape == shape and sde.prior_logp(z).shape == (shape[0],)
        f, G = sde.discretize(x, t)
        assert f.shape == x.shape and G.shape == (shape[0],)


def test_prior_logp_is_the_gaussian_density(sde):
    z = torch.randn(7, 3, 2, 2, dtype=torch.float64) * sde.prior_std
    scale = torch.tensor(sde.prior_std, dtype=torch.float64)
    ref = torch.distributions.Normal(torch.zeros((), dtype=torch.float64), scale).log_prob(z).flatten(1).sum(1)
    assert torch.allclose(sde.prior_logp(z), ref, rtol=1e-12, atol=1e-10)


def test_sde_coefficients_match_marginals(sde):
    """d log alpha / dt = f(t) and d sigma^2/dt = 2 f sigma^2 + g^2 (the linear SDE's moment ODEs)."""
    t = torch.linspace(0.05, 0.95 * sde.T, 7, dtype=torch.float64)
    h = 1e-6
    la = lambda u: torch.log(sde.marginal_coeffs(u)[0])
    s2 = lambda u: sde.marginal_coeffs(u)[1] ** 2
    f = sde.sde(torch.ones(7, 1, dtype=torch.float64), t)[0][:, 0]
    g2 = sde.diffusion(t) ** 2
    assert torch.allclose((la(t + h) - la(t - h)) / (2 * h), f, rtol=1e-6, atol=1e-8)
    assert torch.allclose((s2(t + h) - s2(t - h)) / (2 * h), 2 * f * s2(t) + g2, rtol=1e-6, atol=1e-8)


def test_transitions_compose(sde):
    """x_t = a(t,s) x_s + b(t,s) z composed with (s, r) is the transition (t, r)."""
    r, s, t = (torch.tensor([v], dtype=torch.float64) for v in (0.1, 0.4, 0.8))
    a_ts, b_ts = sde.transition_coeffs(t, s)
    a_sr, b_sr = sde.transition_coeffs(s, r)
    a_tr, b_tr = sde.transition_coeffs(t, r)
    assert torch.allclose(a_ts * a_sr, a_tr, rtol=1e-12)
    assert torch.allclose(a_ts ** 2 * b_sr ** 2 + b_ts ** 2, b_tr ** 2, rtol=1e-10)
    alpha, sigma = sde.marginal_coeffs(t)
    a0, b0 = sde.transition_coeffs(t, torch.zeros(1, dtype=torch.float64))
    assert torch.allclose(a0, alpha) and torch.allclose(b0 ** 2, sigma ** 2 - (alpha * sde.marginal_coeffs(torch.zeros(1, dtype=torch.float64))[1]) ** 2)


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.VPSDE(schedule="cosine"), sde_lib.subVPSDE(),
                                 sde_lib.subVPSDE(schedule="cosine"), sde_lib.VESDE()],
                         ids=["vp", "vp-cosine", "subvp", "subvp-cosine", "ve"])
def test_closed_form_coefficients(sde):
    """Each SDE's own marginal/transition/Langevin coefficients equal the generic formulas from
    log alpha and sigma, and keep their digits for tiny steps, where sigma(t)^2 - a^2 sigma(s)^2
    cancels: b^2 / dt there must approach the diffusion g(t)^2."""
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64) * sde.T
    s = t * torch.linspace(0.0, 0.95, 50, dtype=torch.float64)
    generic = sde_lib.SDE
    for got, want in [(sde.marginal_coeffs(t), generic.marginal_coeffs(sde, t)),
                      (sde.transition_coeffs(t, s), generic.transition_coeffs(sde, t, s)),
                      ((sde.langevin_alpha(t),), (generic.langevin_alpha(sde, t),))]:
        for g, w in zip(got, want):
            assert torch.allclose(g, w, rtol=1e-12, atol=0)
    dt = 1e-9
    b = sde.transition_coeffs(t, t - dt)[1]
    assert torch.allclose(b ** 2 / dt, sde.diffusion(t) ** 2, rtol=1e-6)


def test_vp_discrete_chain_is_ddpm():
    sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
    assert torch.allclose(sde.discrete_betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), rtol=1e-12)
    abar = torch.cumprod(1 - sde.discrete_betas, 0)
    alpha, sigma = sde.discrete_coeffs(torch.tensor([1.0], dtype=torch.float64))
    assert torch.allclose(alpha ** 2, abar[-1:]) and torch.allclose(sigma ** 2, 1 - abar[-1:])
    # The exact one-step transition is DDPM's step up to O(1/N^2) in beta.
    t = torch.tensor([0.5], dtype=torch.float64)
    a, b = sde.transition_coeffs(t, t - 1 / 1000)
    beta_dt = sde.beta(t).item() / 1000
    assert abs(b.item() ** 2 - beta_dt) < beta_dt ** 2


def test_ve_discrete_ladder_is_smld():
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=10)
    ladder = torch.tensor([0.01 * (5000 ** (i / 9)) for i in range(10)], dtype=torch.float64)
    assert torch.allclose(sde.discrete_sigmas, ladder, rtol=1e-12)
    t = torch.tensor([1.0, 5 / 9], dtype=torch.float64)
    assert torch.allclose(sde.discrete_coeffs(t)[1], ladder[[9, 5]])
    f, G = sde.discretize(torch.zeros(2, 2, dtype=torch.float64), t, torch.full((2,), 1 / 9, dtype=torch.float64))
    assert torch.allclose(G ** 2, ladder[[9, 5]] ** 2 - ladder[[8, 4]] ** 2, rtol=1e-12) and (f == 0).all()


def test_subvp_std_below_vp():
    vp, sub = sde_lib.VPSDE(), sde_lib.subVPSDE()
    t = torch.linspace(0.01, 1, 50, dtype=torch.float64)
    assert (sub.marginal_coeffs(t)[1] <= vp.marginal_coeffs(t)[1]).all()
    assert torch.allclose(sub.marginal_coeffs(t)[0], vp.marginal_coeffs(t)[0])


def test_cosine_schedule():
    sde = sde_lib.VPSDE(schedule="cosine", N=1000)
    s = 0.008
    t = torch.tensor([0.0, 0.3, 0.7], dtype=torch.float64)
    f = lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    assert torch.allclose(sde.marginal_coeffs(t)[0] ** 2, f(t) / f(torch.zeros(1, dtype=torch.float64)), rtol=1e-12)
    assert abs(sde.beta(torch.tensor(sde.T, dtype=torch.float64)).item() - 999.0) < 1e-6
    assert 0.99 < sde.T < 1.0 and sde.marginal_coeffs(torch.tensor(sde.T, dtype=torch.float64))[0] ** 2 < 1e-4
    betas = sde.discrete_betas
    assert betas.shape == (1000,) and (betas > 0).all() and (betas < 1).all()
    abar_end = torch.cumprod(1 - betas, 0)[-1]
    assert torch.allclose(abar_end, sde.marginal_coeffs(torch.tensor(sde.T, dtype=torch.float64))[0] ** 2, rtol=1e-9)


def test_reverse_sde_and_ode_drifts(sde):
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    score = lambda x, t: -x
    f, g = sde.sde(x, t)
    d_sde, g_sde = sde.reverse(score).sde(x, t)
    d_ode, g_ode = sde.reverse(score, probability_flow=True).sde(x, t)
    assert torch.allclose(d_sde, f + sde_lib.append_dims(g ** 2, 2) * x)
    assert torch.allclose(d_ode, f + 0.5 * sde_lib.append_dims(g ** 2, 2) * x)
    assert torch.equal(g_sde, g) and (g_ode == 0).all()


@pytest.mark.parametrize("ctor, kwargs, word", [
    (sde_lib.VPSDE, {"beta_min": 5.0, "beta_max": 1.0}, "beta_min"),
    (sde_lib.VPSDE, {"schedule": "quadratic"}, "schedule"),
    (sde_lib.VESDE, {"sigma_min": -1.0}, "sigma_min"),
    (sde_lib.VESDE, {"N": 0}, "N"),
])
def test_bad_arguments(ctor, kwargs, word):
    with pytest.raises(ValueError, match=word):
        ctor(**kwargs)


def test_get_sde_lists_names():
    with pytest.raises(ValueError, match="vesde"):
        sde_lib.get_sde("nope")
    assert isinstance(sde_lib.get_sde("VESDE", sigma_max=10.0), sde_lib.VESDE)
