"""DDIM against known answers: exact on point masses, the linear Gaussian map, the ancestral sampler
at eta = 1, valid samples for every eta, and DDPM's strided grid."""
import pytest
import torch

import samplers
import sde_lib
from samplers.ddim import ddim_sample, ddpm_strided_grid
from sde_lib.analytic import GaussianMixture
from tests.helpers import Counted, make_sdes, mixture_2d, point_mass_score, random_grid

F64 = torch.float64


def prior(sde, n, seed, dim=2):
    return sde.prior_sampling((n, dim), torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_eta_zero_is_exact_for_a_point_mass_on_any_grid(sde_name):
    """x0_hat = mu exactly, so x_s - alpha_s mu = sigma_s / sigma_t (x_t - alpha_t mu) at every step."""
    sde, mu = make_sdes()[sde_name], torch.tensor([0.7, -1.3], dtype=F64)
    x_T = prior(sde, 16, 0)
    for seed, n in [(1, 3), (2, 17), (3, 60)]:
        grid = random_grid(sde, n, seed)
        x, nfe = ddim_sample(sde, point_mass_score(sde, mu), x_T.shape, steps=n, grid=grid, x_T=x_T, dtype=F64)
        (a_e, s_e), (a_T, s_T) = sde.marginal_coeffs(grid[-1]), sde.marginal_coeffs(grid[0])
        expected = a_e * mu + s_e / s_T * (x_T - a_T * mu)
        assert nfe == n and (x - expected).abs().max() < 1e-12


def test_eta_zero_is_the_product_of_linear_gaussian_factors_and_converges_to_the_flow():
    """For data N(mu, c^2 I) one DDIM step maps x_t - alpha_t mu to
    (x_t - alpha_t mu) (alpha_s alpha_t c^2 + sigma_s sigma_t) / (alpha_t^2 c^2 + sigma_t^2); the flow
    itself scales it by sqrt(alpha_eps^2 c^2 + sigma_eps^2) / sqrt(alpha_T^2 c^2 + sigma_T^2)."""
    sde, mu, c2 = sde_lib.VPSDE(), torch.tensor([1.5, -0.5], dtype=F64), 0.3
    score = GaussianMixture([1.0], mu[None], [c2]).score_fn(sde)
    x_T = prior(sde, 8, 0)
    grid = random_grid(sde, 25, 4)
    x, _ = ddim_sample(sde, score, x_T.shape, steps=25, grid=grid, x_T=x_T, dtype=F64)
    alpha, sigma = sde.marginal_coeffs(grid)
    factors = (alpha[1:] * alpha[:-1] * c2 + sigma[1:] * sigma[:-1]) / (alpha[:-1] ** 2 * c2 + sigma[:-1] ** 2)
    assert (x - alpha[-1] * mu - factors.prod() * (x_T - alpha[0] * mu)).abs().max() < 1e-12

    exact = ((alpha[-1] ** 2 * c2 + sigma[-1] ** 2) / (alpha[0] ** 2 * c2 + sigma[0] ** 2)).sqrt()
    errors = []
    for n in (250, 500, 1000):
        x, _ = ddim_sample(sde, score, x_T.shape, steps=n, x_T=x_T, dtype=F64)
        errors.append((x - alpha[-1] * mu - exact * (x_T - alpha[0] * mu)).abs().max().item())
    assert errors[-1] < 2e-3 * (x_T - alpha[0] * mu).abs().max()
    assert all(1.8 < a / b < 2.2 for a, b in zip(errors, errors[1:]))  # first order: halves with the step


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_eta_one_is_the_ancestral_pc_sampler(sde_name):
    """Same prior draw, same noise draws in the same order, same Gaussian posterior step."""
    sde, gm = make_sdes()[sde_name], mixture_2d()
    for dtype, tol in [(F64, 1e-11), (torch.float32, 2e-3)]:
        x, nfe = ddim_sample(sde, gm.score_fn(sde), (200, 2), steps=30, eta=1.0, seed=3, dtype=dtype)
        y, pc_nfe = samplers.pc_sample(sde, gm.score_fn(sde), (200, 2), predictor="ancestral_sampling",
                                       corrector="none", denoise=False, steps=30, seed=3, dtype=dtype)
        assert nfe == pc_nfe == 30 and (x - y).abs().max() < tol


def test_ddpm_strided_grid_and_strided_ancestral_sampling():
    sde = sde_lib.VPSDE(N=1000)
    t = ddpm_strided_grid(sde, 9)
    index = torch.round(t[:-1] * 999).long()
    assert t[0] == sde.T and t[-1] == sde.sampling_eps and len(t) == 10
    assert torch.equal(index, torch.tensor([999, 888, 777, 666, 555, 444, 333, 222, 111]))
    assert torch.allclose(t[:-1], index.double() / 999, rtol=0, atol=1e-15)  # exactly on the chain's times
    assert torch.equal(samplers.get_grid("ddpm_strided", sde, 9, sde.sampling_eps), t)
    # eta = 1 on this grid is DDPM's strided ancestral sampler, which pc_sample runs on the same grid.
    gm = mixture_2d()
    x, nfe = ddim_sample(sde, gm.score_fn(sde), (64, 2), steps=9, eta=1.0, grid="ddpm_strided", seed=1, dtype=F64)
    y, _ = samplers.pc_sample(sde, gm.score_fn(sde), (64, 2), predictor="ancestral_sampling", corrector="none",
                              denoise=False, grid=t, seed=1, dtype=F64)
    assert nfe == 9 and (x - y).abs().max() < 1e-11
    with pytest.raises(ValueError, match="steps must be at most N - 1 = 999"):
        ddpm_strided_grid(sde, 1000)


@pytest.mark.parametrize("sde_name, eta", [("vp", 0.5), ("subvp", 0.2), ("ve", 0.8)])
def test_any_eta_samples_the_data_distribution(sde_name, eta):
    """Mean and covariance of N(mu, S) within sampling error (n = 10000) plus the O(1/steps) bias."""
    sde = make_sdes()[sde_name]
    mu, S = torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=F64)
    gauss = GaussianMixture([1.0], mu[None], S[None])
    x, _ = ddim_sample(sde, gauss.score_fn(sde), (10000, 2), steps=400, eta=eta, seed=0, dtype=F64)
    assert (x.mean(0) - mu).abs().max() < 0.03
    assert (x.T.cov() - S).abs().max() < 0.035


def test_nfe_counts_real_calls_and_denoise_adds_one_tweedie_step():
    sde, gm = sde_lib.VPSDE(), mixture_2d()
    x_T = prior(sde, 32, 0)
    for steps, denoise in [(1, False), (7, False), (7, True)]:
        score = Counted(gm.score_fn(sde))
        x, nfe = ddim_sample(sde, score, x_T.shape, steps=steps, x_T=x_T, denoise=denoise, dtype=F64)
        assert nfe == score.calls == steps + denoise
    plain, _ = ddim_sample(sde, gm.score_fn(sde), x_T.shape, steps=7, x_T=x_T, dtype=F64)
    t = torch.full((32,), sde.sampling_eps, dtype=F64)
    assert (x - sde.tweedie(plain, t, gm.score_fn(sde)(plain, t))).abs().max() < 1e-12
    score = Counted(gm.score_fn(sde))  # explicit times: their number of steps, which steps may not contradict
    assert ddim_sample(sde, score, x_T.shape, grid=random_grid(sde, 5, 0), x_T=x_T)[1] == score.calls == 5
    with pytest.raises(ValueError, match=r"steps = 1 contradicts the grid of 6 times \(5 steps\)"):
        ddim_sample(sde, score, x_T.shape, steps=1, grid=random_grid(sde, 5, 0), x_T=x_T)
    assert score.calls == 5


def test_same_seed_same_samples_and_callback_sees_every_step():
    sde, gm = sde_lib.VESDE(), mixture_2d()
    a, _ = ddim_sample(sde, gm.score_fn(sde), (16, 2), steps=10, eta=0.5, seed=7)
    b, _ = ddim_sample(sde, gm.score_fn(sde), (16, 2), steps=10, eta=0.5, generator=torch.Generator().manual_seed(7))
    c, _ = ddim_sample(sde, gm.score_fn(sde), (16, 2), steps=10, eta=0.5, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    seen = []
    ddim_sample(sde, gm.score_fn(sde), (4, 2), steps=6, seed=0, progress=True,
                callback=lambda d: seen.append((d["i"], d["t"], d["denoised"].shape)))
    assert [i for i, _, _ in seen] == list(range(6)) and seen[-1][1] == sde.sampling_eps and seen[0][2] == (4, 2)


def test_conditioning_reaches_the_score():
    sde, gm = sde_lib.VPSDE(), mixture_2d()
    labels = torch.arange(8)
    got = []

    def score(x, t, y=None):
        got.append(y)
        return gm.score_fn(sde)(x, t)

    _, nfe = ddim_sample(sde, score, (8, 2), steps=4, eta=0.3, denoise=True, seed=0, cond={"y": labels})
    assert nfe == 5 and len(got) == 5 and all(y is labels for y in got)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps must be a positive integer"),
    ({"steps": 5, "eta": -0.1}, "eta must be a finite number >= 0"),
    ({"steps": 5, "eta": float("nan")}, "eta"),
    ({"steps": 5, "eta": 50.0}, r"eta must be at most 1\.\d* on this grid"),
    ({"steps": 5, "grid": torch.tensor([1.0, 0.5, 0.0])}, r"grid must lie in \(0, T\]"),
    ({"steps": 5, "grid": torch.tensor([1.5, 0.5, 0.1])}, r"grid must lie in \(0, T\]"),
    ({"steps": 5, "grid": torch.tensor([1.0, 0.2, 0.5, 0.1])}, "grid must be strictly decreasing"),
    ({"steps": 5, "eps": 0.0}, r"eps must lie in \(0, T\)"),
    ({"steps": 5, "grid": "nope"}, "uniform_t"),
])
def test_bad_arguments_refused_before_any_score_call(kwargs, match):
    sde = sde_lib.VPSDE()
    score = Counted(lambda x, t: -x)
    with pytest.raises(ValueError, match=match):
        ddim_sample(sde, score, (4, 2), **kwargs)
    assert score.calls == 0


def test_registered():
    assert samplers.get_sampler("ddim") is ddim_sample and "ddpm_strided" in samplers.list_grids()
