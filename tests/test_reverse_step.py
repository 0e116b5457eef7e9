"""One reverse step against known answers: DDPM's chain, the exact reverse kernel of Gaussian data, and
Analytic-DPM's variance from the exact score; ancestral sampling with each variance."""
import math

import pytest
import torch

import samplers
import sde_lib
from sde_lib import GaussianMixture
from sde_lib.reverse_step import learned_range_target, posterior, reverse_variance

F64 = torch.float64


def test_on_the_n_step_chain_the_posterior_is_ddpms():
    sde = sde_lib.VPSDE(N=1000)
    n = torch.arange(2, 1001, dtype=F64)
    t, s = n / 1000, (n - 1) / 1000
    abar_t, abar_s = sde.marginal_coeffs(t)[0] ** 2, sde.marginal_coeffs(s)[0] ** 2
    beta = 1 - abar_t / abar_s  # the chain's beta_n (its own rounding: 1e-12 relative where beta ~ 1e-4)
    q = posterior(sde, t, s)
    torch.testing.assert_close(q.beta, beta, rtol=1e-10, atol=0)
    torch.testing.assert_close(q.beta_tilde, beta * (1 - abar_s) / (1 - abar_t), rtol=1e-10, atol=0)
    torch.testing.assert_close(q.c_0, abar_s.sqrt() * beta / (1 - abar_t), rtol=1e-10, atol=0)
    torch.testing.assert_close(q.c_t, (1 - beta).sqrt() * (1 - abar_s) / (1 - abar_t), rtol=1e-10, atol=0)


def gaussian_truth(sde, t, s, std):
    """The reverse kernel of data N(0, std^2) per dimension: variance beta v_s / v_t, v = alpha^2 std^2 + sigma^2."""
    (a_t, g_t), (a_s, g_s) = sde.marginal_coeffs(t), sde.marginal_coeffs(s)
    v_t, v_s = a_t ** 2 * std ** 2 + g_t ** 2, a_s ** 2 * std ** 2 + g_s ** 2
    return posterior(sde, t, s).beta * v_s / v_t, g_t ** 2 / v_t  # sigma*^2, and Gamma = E||eps*||^2 / d


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.VPSDE(schedule="cosine"), sde_lib.subVPSDE(), sde_lib.VESDE()],
                         ids=["vp", "vp-cosine", "subvp", "ve"])
@pytest.mark.parametrize("std", [0.05, 0.5, 1.0, 2.0])
def test_analytic_variance_with_the_exact_gamma_is_the_true_reverse_kernels(sde, std):
    t = torch.tensor([0.9, 0.5, 0.2, 0.05], dtype=F64)
    s = t - 0.04  # a strided step
    truth, gamma = gaussian_truth(sde, t, s, std)
    got = reverse_variance(sde, t, s, "analytic", gamma=gamma, data_range=math.inf)
    torch.testing.assert_close(got, truth, rtol=1e-10, atol=0)
    # learned_range's v* reproduces it: 1 where the data are N(0, 1) under VP (sigma*^2 = beta), 0 as std -> 0
    # (beta~), above 1 for std > 1 (the optimum leaves [beta~, beta], so v is not clamped).
    v = learned_range_target(sde, t, s, truth)
    torch.testing.assert_close(reverse_variance(sde, t, s, "learned_range", v=v), truth, rtol=1e-10, atol=0)
    if isinstance(sde, sde_lib.VPSDE) and not isinstance(sde, sde_lib.subVPSDE):
        if std == 1.0:
            torch.testing.assert_close(v, torch.ones_like(v), rtol=0, atol=1e-9)
        else:
            assert bool((v > 1).all()) if std > 1 else bool((v < 1).all())


def test_the_analytic_variance_is_clipped_to_theorem_2s_bounds():
    sde = sde_lib.VPSDE()
    t, s = torch.tensor([0.5], dtype=F64), torch.tensor([0.45], dtype=F64)
    q = posterior(sde, t, s)
    assert torch.equal(reverse_variance(sde, t, s, "analytic", gamma=1.3), q.beta_tilde)  # Gamma > 1: the lower bound
    top = reverse_variance(sde, t, s, "analytic", gamma=-50.0, data_range=2.0)
    torch.testing.assert_close(top, q.beta_tilde + q.c_0 ** 2)  # data in [-1, 1]: Var(x_0 | x_t) <= 1


def test_analytic_dpm_recovers_the_optimal_variance_from_the_exact_score():
    sde, std = sde_lib.VPSDE(), 0.3
    gm = GaussianMixture([1.0], [[0.0] * 8], [std ** 2])
    grid = samplers.uniform_t(sde, 10, 1e-3)
    x0 = gm.sample(20_000, torch.Generator().manual_seed(0)).double()
    gamma = samplers.estimate_gamma(sde, gm.score_fn(sde), x0, grid[:-1], batch_size=5000,
                                    generator=torch.Generator().manual_seed(1))
    truth_var, truth_gamma = gaussian_truth(sde, grid[:-1], grid[1:], std)
    torch.testing.assert_close(gamma, truth_gamma, rtol=0.01, atol=0)  # Monte Carlo over 160,000 coordinates
    got = reverse_variance(sde, grid[:-1], grid[1:], "analytic", gamma=gamma, data_range=math.inf)
    torch.testing.assert_close(got, truth_var, rtol=0.02, atol=0)


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.VESDE()], ids=["vp", "ve"])
def test_ancestral_fixed_small_is_ddim_with_eta_one(sde):
    gm = GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 1.0]], [0.25, 0.09])
    x_T = sde.prior_sampling((64, 2), torch.Generator().manual_seed(0), dtype=F64)
    a, nfe = samplers.ancestral_sample(sde, gm.score_fn(sde), x_T.shape, steps=20, x_T=x_T, seed=3, dtype=F64)
    b, _ = samplers.ddim_sample(sde, gm.score_fn(sde), x_T.shape, steps=20, eta=1.0, x_T=x_T, seed=3, dtype=F64)
    assert nfe == 20
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_ancestral_sampling_with_the_optimal_variance_samples_gaussian_data_exactly():
    # With the exact score and the exact optimal variance every step is the true reverse kernel: the
    # samples are N(0, std^2) at the last time on any grid, however few its steps.
    sde, std = sde_lib.VPSDE(), 0.3
    gm = GaussianMixture([1.0], [[0.0, 0.0]], [std ** 2])
    grid = samplers.uniform_t(sde, 5, 1e-3)
    _, gamma = gaussian_truth(sde, grid[:-1], grid[1:], std)
    x, _ = samplers.ancestral_sample(sde, gm.score_fn(sde), (200_000, 2), grid=grid, variance="analytic",
                                     gamma=gamma, data_range=math.inf, seed=0, dtype=F64)
    a, g = sde.marginal_coeffs(grid[-1])
    expected = float((a ** 2 * std ** 2 + g ** 2).sqrt())
    assert abs(float(x.std()) - expected) < 0.005 * expected
    small, _ = samplers.ancestral_sample(sde, gm.score_fn(sde), (200_000, 2), grid=grid, seed=0, dtype=F64)
    assert float(small.std()) < 0.9 * expected  # beta~ on 5 steps: too little noise (measured 0.79 of it)


def test_bad_variance_arguments_are_refused_before_any_call():
    sde = sde_lib.VPSDE()

    def never(x, t):
        raise AssertionError("called")

    with pytest.raises(ValueError, match="variance must be one of"):
        samplers.ancestral_sample(sde, never, (4, 2), steps=3, variance="learned")
    with pytest.raises(ValueError, match="'learned_range' needs a network with a variance head"):
        samplers.ancestral_sample(sde, never, (4, 2), steps=3, variance="learned_range")
    with pytest.raises(ValueError, match="variance 'analytic' needs gamma, one .* per step \\(3 for this grid"):
        samplers.ancestral_sample(sde, never, (4, 2), steps=3, variance="analytic", gamma=[0.5, 0.5])
    with pytest.raises(ValueError, match="needs v, the network's mixing output"):
        reverse_variance(sde, torch.tensor([0.5], dtype=F64), torch.tensor([0.4], dtype=F64), "learned_range")
