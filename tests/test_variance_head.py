"""The variance head against known answers on Gaussian data x0 ~ N(mu, std^2) per dimension, where the
true reverse kernel of every step t -> s is Gaussian: variance sigma*^2 = beta v_s / v_t (v = alpha^2 std^2
+ sigma^2), mean alpha_s mu + a v_s / v_t (x_t - alpha_t mu), and v* = log(sigma*^2 / beta~) / log(beta / beta~)."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import likelihood
import models
import samplers
import sde_lib
from sde_lib.reverse_step import learned_range_target, posterior, reverse_variance
from tests.helpers import GaussianHead, gaussian_step_truth as truth

F64 = torch.float64
SDES = {"linear": sde_lib.VPSDE(), "cosine": sde_lib.VPSDE(schedule="cosine")}


# DDPM's 1000-step chain (its first time at 5e-4: the cosine schedule's index 1 is at T / 999 < 1e-3) and a strided one
GRIDS = {"chain": lambda sde: samplers.ddpm_strided_grid(sde, 999, eps=5e-4),
         "strided": lambda sde: samplers.ddpm_strided_grid(sde, 25)}


@pytest.mark.parametrize("schedule", SDES)
@pytest.mark.parametrize("grid_name", GRIDS)
@pytest.mark.parametrize("std", [0.3, 1.0, 2.0])
def test_the_wrapper_fed_eps_star_and_v_star_gives_the_true_reverse_kernel(schedule, grid_name, std):
    sde, mu = SDES[schedule], 0.2
    grid = GRIDS[grid_name](sde)
    t, s = grid[:-1], grid[1:]
    model = models.Precond(sde, GaussianHead(sde, grid, mu, std))
    x = torch.randn(len(t), 3, generator=torch.Generator().manual_seed(0), dtype=F64) * 2
    x0_hat, v = model.denoise_and_v(x, t)
    optimal, v_star, (m0, m1) = truth(sde, t, s, mu, std)
    q = posterior(sde, t, s)
    torch.testing.assert_close(reverse_variance(sde, t, s, "learned_range", v=v, q=q), optimal[:, None].expand_as(x),
                               rtol=1e-9, atol=0)
    mean = q.c_t[:, None] * x + q.c_0[:, None] * x0_hat
    torch.testing.assert_close(mean, m0[:, None] + m1[:, None] * x, rtol=1e-9, atol=1e-12)
    kernel_mean, log_var = model.reverse_kernel(x, t, s, "learned_range")  # the same, from the wrapper alone
    torch.testing.assert_close(kernel_mean, mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(log_var, optimal.log()[:, None].expand_as(x), rtol=1e-9, atol=1e-12)
    if std == 1.0:  # Var(x_t) = 1 at every t: the true variance is the forward step's, v* = 1
        torch.testing.assert_close(v_star, torch.ones_like(v_star), rtol=0, atol=1e-9)
    if std > 1:     # data wider than the prior: the optimum lies outside [beta~, beta]
        assert bool((v_star > 1).all())
    if std < 1:
        assert bool(((v_star > 0) & (v_star < 1)).all())


def test_narrow_data_give_v_star_near_zero_the_posterior_variance():
    sde = SDES["linear"]
    grid = samplers.ddpm_strided_grid(sde, 50)
    _, v_star, _ = truth(sde, grid[:-1], grid[1:], 0.0, 1e-4)
    assert float(v_star.abs().max()) < 1e-3


def gauss_hermite(n):
    """Nodes and weights of E f(Z), Z ~ N(0, 1), exact for polynomials of degree < 2n."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return torch.tensor(z, dtype=F64), torch.tensor(w / w.sum(), dtype=F64)


@pytest.mark.parametrize("schedule", SDES)
@pytest.mark.parametrize("grid_name", GRIDS)
@pytest.mark.parametrize("variance", ["learned_range", "fixed_small", "fixed_large"])
def test_expected_step_terms_are_their_closed_form_through_the_wrapper(schedule, grid_name, variance):
    """E over x0 and x_t of step_kl, by Gauss-Hermite quadrature (the KL is quadratic in both, so 3 nodes
    each are exact), equals 1/2 log(sigma*^2 / beta~) + 1/2 (r - 1 - log r), r = sigma*^2 / sigma^2."""
    sde, mu, std = SDES[schedule], 0.1, 0.45
    grid = GRIDS[grid_name](sde)
    n, (z, w) = len(grid) - 1, gauss_hermite(3)
    model = models.Precond(sde, GaussianHead(sde, grid, mu, std))
    # every (step, x0 node, z node) at once: [n * 9, 1]
    i, a, b = torch.meshgrid(torch.arange(n), torch.arange(3), torch.arange(3), indexing="ij")
    i, a, b = i.reshape(-1), a.reshape(-1), b.reshape(-1)
    t, s = grid[i], grid[i + 1]
    x0 = (mu + std * z[a])[:, None]
    alpha, sigma = sde.marginal_coeffs(t)
    x_t = alpha[:, None] * x0 + sigma[:, None] * z[b][:, None]
    x0_hat, v = model.denoise_and_v(x_t, t)
    q = posterior(sde, t, s)
    var = reverse_variance(sde, t, s, variance, v=v if variance == "learned_range" else None, q=q)
    kl = likelihood.step_kl(q, x0, x0_hat, var)
    expected = (kl * w[a] * w[b]).reshape(n, 9).sum(1)
    optimal = truth(sde, grid[:-1], grid[1:], mu, std)[0]
    qs = posterior(sde, grid[:-1], grid[1:])
    r = optimal / reverse_variance(sde, grid[:-1], grid[1:], variance, v=learned_range_target(
        sde, grid[:-1], grid[1:], optimal), q=qs)
    closed = 0.5 * (optimal / qs.beta_tilde).log() + 0.5 * (r - 1 - r.log())
    torch.testing.assert_close(expected, closed, rtol=1e-9, atol=1e-12)
    if variance == "learned_range":  # r = 1: the optimal model's term is 1/2 log(sigma*^2 / beta~) alone
        torch.testing.assert_close(r, torch.ones_like(r), rtol=1e-10, atol=0)


def test_the_bound_with_a_variance_head_needs_and_uses_it():
    sde = SDES["linear"]
    grid = samplers.ddpm_strided_grid(sde, 10)
    model = models.Precond(sde, GaussianHead(sde, grid, 0.0, 0.5))
    k = torch.randint(0, 256, (64, 2), generator=torch.Generator().manual_seed(0))
    learned = likelihood.vlb_terms(sde, model, k, grid, variance="learned_range", seed=1, dtype=F64)
    small = likelihood.vlb_terms(sde, model, k, grid, variance="fixed_small", seed=1, dtype=F64)
    assert learned["nfe"] == len(grid)
    # the same draws: the prior is shared, and the exact v* beats beta~ at every step on average
    torch.testing.assert_close(learned["prior"], small["prior"])
    assert bool((learned["steps"].mean(0) <= small["steps"].mean(0) + 1e-9).all())
    plain = GaussianHead(sde, grid, 0.0, 0.5)
    plain.learn_variance = False
    with pytest.raises(ValueError, match="variance head"):
        likelihood.vlb_terms(sde, models.Precond(sde, plain), k, grid, variance="learned_range")


def test_ancestral_sampling_with_learned_v_star_samples_gaussian_data_exactly():
    """With the true reverse kernels at every step, the chain's x_eps has the marginal of q at eps."""
    sde, mu, std = SDES["linear"], 0.3, 0.5
    grid = samplers.ddpm_strided_grid(sde, 20)
    model = models.Precond(sde, GaussianHead(sde, grid, mu, std))
    x, nfe = samplers.ancestral_sample(sde, model, (40_000, 1), grid=grid, variance="learned_range", seed=0,
                                       denoise=False, dtype=F64)
    a, g = (float(c) for c in sde.marginal_coeffs(grid[-1]))
    assert nfe == 20
    assert abs(float(x.mean()) - a * mu) < 4 * math.sqrt(a ** 2 * std ** 2 + g ** 2) / 200
    assert abs(float(x.var()) / (a ** 2 * std ** 2 + g ** 2) - 1) < 0.03
    with pytest.raises(ValueError, match="variance head"):
        samplers.ancestral_sample(sde, sde_lib.GaussianMixture([1.0], [[0.0]], [0.25]).score_fn(sde), (4, 1),
                                  grid=grid, variance="learned_range", seed=0)


def test_every_network_grows_a_variance_head_of_its_channels():
    for name, kwargs in (("ddpmpp", {}), ("ncsnpp", {"progressive": "output_skip"}), ("ddpm", {"num_groups": 8})):
        net = models.get_model(name)(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), num_channels=3,
                                     image_size=8, learn_variance=True, **kwargs)
        out = net(torch.randn(2, 3, 8, 8), torch.rand(2) + 0.1)
        assert out.shape == (2, 6, 8, 8), name
    mlp = models.get_model("mlp")(dim=3, learn_variance=True, scale_by_sigma=True)
    nn.init.normal_(mlp.out.weight)
    x, cond = torch.randn(2, 3), torch.tensor([0.5, 2.0])
    scaled = mlp(x, cond)
    mlp.scale_by_sigma = False
    raw = mlp(x, cond)
    assert scaled.shape == (2, 6)
    torch.testing.assert_close(scaled[:, :3], raw[:, :3] / cond[:, None])  # the prediction is divided by sigma,
    torch.testing.assert_close(scaled[:, 3:], raw[:, 3:])                  # v is left as it is
    with pytest.raises(ValueError, match="learn_variance must be True or False"):
        models.get_model("mlp")(learn_variance=1)
