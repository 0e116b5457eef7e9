"""The particle posterior sampler against exact posteriors: its weighted particles converge to p(x_eps | y)
at the Monte Carlo rate (a fitted slope of the error against the particle count), for a Gaussian prior
(where the chain with Analytic-DPM's exact variance is exact, so nothing but Monte Carlo error is left) and
for Gaussian mixtures (noiseless inpainting and 2x average pooling on VP and VE, a noisy random A on VE)."""
import math

import pytest
import torch

import sde_lib
from samplers.observations import AveragePooling, Inpainting, MatrixObservation
from samplers.particle import particle_posterior_sample
from sde_lib import GaussianMixture

F64 = torch.float64


def weighted(info):
    """The particles' weighted mean [B, D] and the particles [B, N, D], weights [B, N]."""
    P, W = info["particles"], info["weights"]
    return (W[..., None] * P).sum(1), P, W


def slope(ns, errors):
    """The least-squares slope of log error against log N."""
    x, y = torch.log(torch.tensor(ns, dtype=F64)), torch.log(torch.tensor(errors, dtype=F64))
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def gaussian_problem():
    """Isotropic Gaussian data, a random 2 x 3 A, sigma_y = 0.2; the grid and the exact Gamma for which the
    chain's kernels (Analytic-DPM's) are the true reverse kernels."""
    sde, s, eps, sigma_y = sde_lib.VPSDE(), 0.7, 1e-3, 0.2
    prior = GaussianMixture([1.0], [[0.3, -0.2, 0.5]], [s ** 2])
    A = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    y = torch.tensor([[0.4, -0.9]], dtype=F64)
    grid = torch.linspace(1, eps, 41, dtype=F64)
    alpha, sigma = sde.marginal_coeffs(grid[:-1])
    gamma = (sigma ** 2 / (alpha ** 2 * s ** 2 + sigma ** 2)).tolist()  # E||eps*||^2 / d
    exact = prior.at(sde, eps).condition(A, y[0], sigma_y)

    def run(n, B, seed):
        _, info = particle_posterior_sample(sde, prior.score_fn(sde), (B, 3), MatrixObservation(A), y.expand(B, 2),
                                            sigma_y=sigma_y, particles=n, grid=grid, variance="analytic", gamma=gamma,
                                            data_range=math.inf, seed=seed, dtype=F64, return_particles=True)
        return info

    return exact, run


def test_on_gaussian_data_the_particles_have_the_exact_posteriors_moments():
    exact, run = gaussian_problem()
    info = run(1024, 8, 0)
    mean, P, W = weighted(info)
    torch.testing.assert_close(mean.mean(0), exact.mean(), rtol=0, atol=0.04)  # measured within 0.01
    cov = (W[..., None, None] * (P - mean[:, None])[..., :, None] * (P - mean[:, None])[..., None, :]).sum(1).mean(0)
    torch.testing.assert_close(cov, exact.covariance(), rtol=0, atol=0.03)
    assert info["network_evaluations_per_sample"] == 40 * 1024 and info["network_calls"] == 40


@pytest.mark.slow
def test_on_gaussian_data_the_error_falls_at_a_fitted_monte_carlo_rate():
    """Nothing but Monte Carlo error is left (the chain is exact), so the weighted mean's error over 64 runs
    falls like N^-1/2 as the particles grow (measured: 0.16, 0.10, 0.058 at 64, 256, 1024; slope -0.4,
    approaching -1/2 as N grows)."""
    exact, run = gaussian_problem()
    ns, errors = [64, 256, 1024], []
    for n in ns:
        mean, _, _ = weighted(run(n, 64, n))
        errors.append(float((mean - exact.mean()).pow(2).sum(1).mean().sqrt()))
    assert -0.65 < slope(ns, errors) < -0.3, errors
    assert errors[-1] < 0.08, errors


def two_modes():
    """Two elongated components that overlap where x_0 = 0.3 is observed."""
    return GaussianMixture([0.5, 0.5], [[-1.0, -1.0], [1.0, 1.0]], [[[1.0, 0.9], [0.9, 1.0]], [[1.0, -0.9], [-0.9, 1.0]]])


SDES = {"vp": (sde_lib.VPSDE(), None), "ve": (sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0), "uniform_log_snr")}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_noiseless_inpainting_of_a_mixture_converges_and_keeps_the_observation(kind):
    (sde, grid), eps = SDES[kind], 1e-3
    gm, op, y = two_modes(), Inpainting(torch.tensor([True, False])), torch.tensor([[0.3]], dtype=F64)
    exact = gm.at(sde, eps).condition(op.matrix(), y[0], 0.0)   # mode weights 0.354 / 0.646
    ns, errors, B = [16, 64, 256], [], 48
    for n in ns:
        _, info = particle_posterior_sample(sde, gm.score_fn(sde), (B, 2), op, y.expand(B, 1), particles=n, steps=100,
                                            grid=grid, seed=n, dtype=F64, return_particles=True)
        _, P, W = weighted(info)
        assert float((P[..., 0] - 0.3).abs().max()) < 1e-12  # the observed coordinate is y, in every particle
        resp = gm.posterior(P.reshape(-1, 2), sde, torch.tensor(eps)).reshape(B, n, -1)
        w0 = (W * resp[..., 0]).sum(1)
        errors.append(float((w0 - exact.weights[0]).pow(2).mean().sqrt()))
    # measured: VP 0.23, 0.13, 0.06; VE 0.22, 0.12, 0.058 (slopes -0.6 and -0.48)
    assert -0.9 < slope(ns, errors) < -0.35, errors
    assert errors[-1] < 0.09


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_super_resolution_by_pooling_of_a_mixture_converges(kind):
    """2x average pooling of 2 x 2 images from a two-component mixture, sigma_y = 0.05: the weighted mean's
    and the mode weight's errors over 48 runs fall at a fitted rate (measured: VP mean 0.39, 0.20, 0.14,
    weight 0.135, 0.077, 0.050; VE mean 0.41, 0.27, 0.12, weight 0.146, 0.098, 0.041 at 16, 64, 256)."""
    (sde, grid), eps, sigma_y = SDES[kind], 1e-3, 0.05
    gm = GaussianMixture([0.3, 0.7], [[0.8, -0.4, 0.2, 0.6], [-0.5, 0.3, -0.6, 0.1]], [0.2, 0.35])
    op, y = AveragePooling((1, 2, 2), 2), torch.tensor([[0.05]], dtype=F64)
    exact = gm.at(sde, eps).condition(op.matrix(), y[0], sigma_y)
    score = gm.score_fn(sde)
    ns, mean_err, weight_err, B = [16, 64, 256], [], [], 48
    for n in ns:
        _, info = particle_posterior_sample(sde, lambda x, t: score(x.reshape(len(x), -1), t).reshape(x.shape),
                                            (B, 1, 2, 2), op, y.expand(B, 1), sigma_y=sigma_y, particles=n, steps=200,
                                            grid=grid, seed=n, dtype=F64, return_particles=True)
        P, W = info["particles"].reshape(B, n, 4), info["weights"]
        mean_err.append(float(((W[..., None] * P).sum(1) - exact.mean()).pow(2).sum(1).mean().sqrt()))
        resp = gm.posterior(P.reshape(-1, 4), sde, torch.tensor(eps)).reshape(B, n, -1)
        weight_err.append(float(((W * resp[..., 0]).sum(1) - exact.weights[0]).pow(2).mean().sqrt()))
    for errors, last in ((mean_err, 0.2), (weight_err, 0.07)):
        assert -0.75 < slope(ns, errors) < -0.25 and errors[-1] < last, (mean_err, weight_err)


@pytest.mark.slow
def test_a_noisy_random_observation_on_ve_converges():
    sde, eps, sigma_y = sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0), 1e-3, 0.3
    gm = GaussianMixture([0.4, 0.6], [[-1.0, 0.5, 0.0], [1.0, -0.5, 0.5]], [0.3, 0.2])
    A = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    op, y = MatrixObservation(A), torch.tensor([[0.5, -0.3]], dtype=F64)
    exact = gm.at(sde, eps).condition(A, y[0], sigma_y)
    errors, B = [], 48
    for n in (16, 256):
        _, info = particle_posterior_sample(sde, gm.score_fn(sde), (B, 3), op, y.expand(B, 2), sigma_y=sigma_y,
                                            particles=n, steps=200, grid="uniform_log_snr", seed=n, dtype=F64,
                                            return_particles=True)
        mean, _, _ = weighted(info)
        errors.append(float((mean - exact.mean()).pow(2).sum(1).mean().sqrt()))
    # measured: 0.28 -> 0.13 (Monte Carlo alone would give 0.25 x; 200 steps of the chain leave a bias of
    # about 0.08 in the mean, which 800 steps take below 0.02: 0.050 at 2,048 particles)
    assert errors[1] < 0.55 * errors[0], errors


def test_super_resolution_shapes_and_reproducibility():
    sde = sde_lib.VPSDE()
    op = AveragePooling((1, 4, 4), 2)
    prior = GaussianMixture([1.0], [[0.0] * 16], [0.25])
    y = torch.zeros(2, 4)
    run = lambda: particle_posterior_sample(sde, lambda x, t: prior.score_fn(sde)(x.reshape(len(x), -1), t).reshape(x.shape),
                                            (2, 1, 4, 4), op, y, sigma_y=0.05, particles=8, steps=10, seed=3)
    (a, info), (b, _) = run(), run()
    assert a.shape == (2, 1, 4, 4) and torch.equal(a, b) and info["network_calls"] == 10
    assert len(info["ess"]) == 10 and all(1 <= e <= 8 + 1e-9 for e in info["ess"])


def test_bad_input_is_refused_before_any_call():
    sde = sde_lib.VPSDE()

    def never(x, t):
        raise AssertionError("called")

    op = Inpainting(torch.tensor([True, False]))
    y = torch.zeros(4, 1)
    for kwargs, match in (({"y": torch.zeros(4, 2)}, "y must be \\[B, m\\] = \\[4, 1\\]"),
                          ({"sigma_y": -1.0}, "sigma_y must be a finite number >= 0"),
                          ({"particles": 0}, "particles must be an integer >= 1"),
                          ({"variance": "learned_range"}, "variance must be one of"),
                          ({"variance": "analytic"}, "variance 'analytic' needs gamma"),
                          ({"ess_threshold": 2.0}, "ess_threshold must lie in")):
        args = {"y": y, **kwargs}
        with pytest.raises(ValueError, match=match):
            particle_posterior_sample(sde, never, (4, 2), op, args.pop("y"), steps=5, **args)
    with pytest.raises(ValueError, match="does not match the observation"):
        particle_posterior_sample(sde, never, (4, 3), op, y, steps=5)
    with pytest.raises(TypeError, match="LinearObservation"):
        particle_posterior_sample(sde, never, (4, 2), torch.ones(1, 2), y, steps=5)
