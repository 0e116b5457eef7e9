"""Controllable generation against known answers: inpainting and colorization of correlated Gaussians
(exact conditionals by the Schur complement), RePaint's resampling closing the gap that replacement
leaves, every supported sampler reproducing the observation exactly with honest NFE counts, and
Imagen's thresholding (identity inside [-1, 1], per-sample, exact through the samplers)."""
import math
import re

import pytest
import torch

import samplers
import sde_lib
from sde_lib import append_dims
from samplers.controllable import (colorization_basis, colorize_sample, inpaint_sample, threshold_x0,
                                   thresholded_score)
from samplers.ddim import ddim_sample
from samplers.edm import heun_sample
from sde_lib.analytic import GaussianMixture
from tests.helpers import Counted, make_sdes, point_mass_score

F64 = torch.float64


def never_called(x, t):
    raise AssertionError("the score was called before the arguments were checked")


def correlated_gaussian(dim=6, seed=0):
    """Mean and SPD covariance with strong correlations (a shared factor; |corr| up to ~0.9), mean variance 1."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(dim, dim, generator=g, dtype=F64)
    v = torch.randn(dim, 1, generator=g, dtype=F64)
    C = A @ A.T / dim + 0.05 * torch.eye(dim, dtype=F64) + v @ v.T
    return torch.randn(dim, generator=g, dtype=F64), C / C.diag().mean()


def conditional(mu, C, known, y_known):
    """The exact Gaussian conditional of the unknown coordinates: mean mu_u + C_uo C_oo^-1 (y_o - mu_o),
    covariance C_uu - C_uo C_oo^-1 C_ou."""
    u = ~known
    K = C[u][:, known] @ torch.linalg.inv(C[known][:, known])
    return mu[u] + K @ (y_known - mu[known]), C[u][:, u] - K @ C[known][:, u]


def errors(samples, mean, cov):
    """(|mean error| / sqrt(tr cov), ||cov error||_F / ||cov||_F) of samples [N, d] against N(mean, cov)."""
    s = samples.double()
    return (float((s.mean(0) - mean).norm() / cov.trace().sqrt()),
            float((torch.cov(s.T) - cov).norm() / cov.norm()))


# ----- inpainting a correlated Gaussian ------------------------------------------------------------

def test_resampling_closes_the_gap_that_replacement_leaves():
    """Replacement (r = 1) conditions the unknown part on a noisy copy of y and is biased for correlated
    data; RePaint's resampling moves the samples to the exact conditional as r grows. Measured (pc,
    50 log-SNR-uniform steps, 4000 samples, seeds 0-4): mean error 0.18-0.21 / 0.06-0.10 / 0.01-0.04 and
    cov error 0.24-0.27 / 0.01-0.05 / 0.02-0.04 for r = 1 / 5 / 10; sampling noise ~0.015."""
    mu, C = correlated_gaussian()
    known = torch.arange(6) < 3
    y = torch.zeros(6, dtype=F64)
    y[known] = mu[known] + torch.tensor([1.0, -1.0, 0.5], dtype=F64)
    mean_c, cov_c = conditional(mu, C, known, y[known])
    sde = sde_lib.VPSDE(N=1000)
    score = GaussianMixture([1.0], mu[None], C[None]).score_fn(sde)
    err = {}
    for r in (1, 5, 10):
        x, nfe = inpaint_sample(sde, score, (4000, 6), y=y, mask=known, sampler="pc", steps=50, resample=r,
                                grid="uniform_log_snr", seed=0)
        assert nfe == 2 * 50 * r  # Langevin corrector + predictor per interval and pass
        assert torch.equal(x[:, known], y[known].float().expand(4000, -1))
        err[r] = errors(x[:, ~known], mean_c, cov_c)
    print({r: f"mean {m:.3f} cov {c:.3f}" for r, (m, c) in err.items()})
    (m1, c1), (m5, c5), (m10, c10) = err[1], err[5], err[10]
    assert m1 > 0.12 and c1 > 0.15                  # replacement alone is visibly off
    assert m5 < m1 - 0.06 and m10 < m5 - 0.02       # closer as r grows, by more than the sampling noise
    assert m10 < 0.3 * m1 and c5 < 0.5 * c1 and c10 < 0.3 * c1


@pytest.mark.parametrize("sampler, options, per_call", [
    ("pc", {}, 2), ("ddim", {}, 1), ("ddim", {"eta": 1.0}, 1), ("dpmpp_2m", {}, 1), ("dpmpp_3m", {}, 1),
    ("dpm_solver", {"order": 2}, 2), ("dpmpp_2s", {}, 2), ("heun", {}, 2), ("heun", {"s_churn": 2.0}, 2),
    ("ode", {"method": "rk4"}, 4), ("ode", {"method": "euler"}, 1)])
def test_every_sampler_reproduces_the_observation_and_counts_real_calls(sampler, options, per_call):
    mu, C = correlated_gaussian(4, seed=1)
    sde = sde_lib.VESDE(N=1000) if sampler == "heun" else sde_lib.VPSDE(N=1000)
    score = Counted(GaussianMixture([1.0], mu[None], C[None]).score_fn(sde))
    g = torch.Generator().manual_seed(2)
    y = torch.randn(8, 4, generator=g, dtype=F64)
    mask = torch.rand(8, 4, generator=g) < 0.5  # a different mask per sample
    steps, r, jump = 6, 2, 2
    x, nfe = inpaint_sample(sde, score, (8, 4), y=y, mask=mask, sampler=sampler, steps=steps, resample=r,
                            jump=jump, seed=3, dtype=F64, sampler_options=options, denoise=True)
    assert nfe == score.calls == per_call * steps * r + 1
    assert torch.equal(x[mask], y[mask]) and torch.isfinite(x).all()
    assert not torch.equal(x[~mask], y[~mask])


def test_replacement_with_nothing_known_is_the_sampler_itself():
    """With an empty mask, deterministic DDIM run one interval at a time is DDIM over the whole grid."""
    sde = make_sdes()["vp"]
    mu, C = correlated_gaussian(4, seed=2)
    score = GaussianMixture([1.0], mu[None], C[None]).score_fn(sde)
    x_T = sde.prior_sampling((16, 4), torch.Generator().manual_seed(0), dtype=F64)
    grid = samplers.get_grid("uniform_log_snr", sde, 12, sde.sampling_eps)
    mask = torch.zeros(16, 4, dtype=torch.bool)
    x, nfe = inpaint_sample(sde, score, (16, 4), y=torch.zeros(16, 4), mask=mask, sampler="ddim", grid=grid,
                            x_T=x_T, seed=1, dtype=F64)
    ref, ref_nfe = ddim_sample(sde, score, (16, 4), steps=12, grid=grid, x_T=x_T, dtype=F64)
    assert nfe == ref_nfe == 12 and (x - ref).abs().max() < 1e-12


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_resampling_keeps_the_marginals_of_an_exact_sampler(sde_name):
    """For a point mass, ancestral DDIM is the exact reverse transition and the noise-back the exact forward
    one, so any r and jump end at p_t = N(alpha_t mu, sigma_t^2 I) at the grid's last time (here mid-way,
    where a wrong transition would show)."""
    sde = make_sdes()[sde_name]
    mu = torch.tensor([0.7, -1.3], dtype=F64)
    grid = torch.linspace(sde.T, 0.4, 9, dtype=F64)
    x, _ = inpaint_sample(sde, point_mass_score(sde, mu), (20000, 2), y=torch.zeros(2), mask=torch.zeros(2),
                          sampler="ddim", grid=grid, resample=4, jump=2, seed=0, dtype=F64,
                          sampler_options={"eta": 1.0})
    alpha, sigma = (float(c) for c in sde.marginal_coeffs(grid[-1]))
    z = (x - alpha * mu) / sigma
    assert z.mean(0).abs().max() < 0.03 and (z.std(0) - 1).abs().max() < 0.02


def test_known_part_is_a_fresh_forward_draw_of_the_observation_at_every_step():
    """score_sde's replacement: after each interval the known part is alpha(t) y + sigma(t) z, z ~ N(0, I)."""
    sde, mu, C = make_sdes()["vp"], *correlated_gaussian(2, seed=4)
    score = GaussianMixture([1.0], mu[None], C[None]).score_fn(sde)
    y, seen = torch.tensor([1.5, 0.0], dtype=F64), []

    def callback(info):
        alpha, sigma = (float(c) for c in sde.marginal_coeffs(torch.tensor(info["t"], dtype=torch.float64)))
        seen.append(((info["x"][:, 0] - alpha * y[0]) / sigma, info["i"], info["resample"]))

    inpaint_sample(sde, score, (20000, 2), y=y, mask=torch.tensor([1, 0]), sampler="ddim", steps=4, resample=2,
                   grid=torch.tensor([1.0, 0.6, 0.3, 0.1, 0.02], dtype=F64), seed=0, dtype=F64, callback=callback)
    assert [(i, r) for _, i, r in seen] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
    for z, _, _ in seen:
        assert abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1) < 0.02


def test_heun_churn_is_spread_over_the_whole_grid():
    """EDM's s_churn is a total over the n steps (gamma_i = s_churn / n), so one interval per call must
    get s_churn / n: the score is asked at the raised levels nu_hat = (1 + s_churn / n) nu_i that heun over
    the whole grid asks at (the whole s_churn per call would give the cap 1 + gamma = sqrt(2) instead)."""
    sde = make_sdes()["ve"]
    grid = torch.tensor([0.9, 0.7, 0.5, 0.3, 0.1], dtype=F64)  # 1.25 nu(0.9) stays below nu(T): no cap
    score = point_mass_score(sde, torch.zeros(2, dtype=F64))
    inpainted, whole = [], []
    recorder = lambda times: (lambda x, t: times.append(float(t[0])) or score(x, t))
    _, nfe = inpaint_sample(sde, recorder(inpainted), (4, 2), y=torch.zeros(2), mask=torch.zeros(2), sampler="heun",
                            grid=grid, seed=0, dtype=F64, sampler_options={"s_churn": 1.0})
    heun_sample(sde, recorder(whole), (4, 2), grid=grid, s_churn=1.0, seed=0, dtype=F64)
    assert nfe == len(whole) == 8 and inpainted == pytest.approx(whole, rel=1e-12)
    nu = lambda u: float((-sde.log_snr(torch.tensor(u, dtype=F64))).exp())
    assert nu(whole[0]) == pytest.approx(1.25 * nu(0.9), rel=1e-9)


def test_seed_fixes_the_samples_and_leaves_the_global_generator_alone():
    sde, mu, C = make_sdes()["vp"], *correlated_gaussian(4, seed=3)
    score = GaussianMixture([1.0], mu[None], C[None]).score_fn(sde)
    kw = dict(y=torch.ones(4), mask=torch.tensor([1, 0, 1, 0]), sampler="pc", steps=5, resample=2)
    torch.manual_seed(0)
    a, _ = inpaint_sample(sde, score, (32, 4), seed=7, **kw)
    after = torch.randn(3)
    torch.manual_seed(0)
    b, _ = inpaint_sample(sde, score, (32, 4), seed=7, **kw)
    c, _ = inpaint_sample(sde, score, (32, 4), seed=8, **kw)
    assert torch.equal(a, b) and torch.equal(after, torch.randn(3)) and not torch.equal(a, c)


# ----- colorization -----------------------------------------------------------------------------------

def test_colorization_basis_is_score_sdes_orthogonal_matrix():
    Q = colorization_basis()
    reference = torch.tensor([[5.7735014e-01, -8.1649649e-01, 4.7008697e-08],  # score_sde's M
                              [5.7735026e-01, 4.0824834e-01, 7.0710671e-01],
                              [5.7735026e-01, 4.0824822e-01, -7.0710683e-01]], dtype=F64)
    assert (Q.T @ Q - torch.eye(3, dtype=F64)).abs().max() < 1e-15 and (Q - reference).abs().max() < 3e-7


def test_colorization_of_a_correlated_gaussian_matches_the_exact_conditional():
    """RGB x ~ N(mu, C) with channel correlations 0.3-0.8, gray level observed 1.5 std above its mean.
    In u = Q^T x the gray level is u_0 = sqrt(3) gray; the colors u_1, u_2 given u_0 follow the Schur
    complement. Measured (4000 samples): r = 1 mean / cov error 0.07 / 0.08, r = 5 0.010 / 0.017."""
    mu = torch.tensor([0.3, -0.2, 0.5], dtype=F64)
    A = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.5, -0.3, 0.4]], dtype=F64)
    C = 0.5 * A @ A.T
    Q = colorization_basis()
    mu_u, C_u = Q.T @ mu, Q.T @ C @ Q
    gray = mu.mean() + 1.5 * C_u[0, 0].sqrt() / math.sqrt(3)
    mean_c, cov_c = conditional(mu_u, C_u, torch.tensor([True, False, False]), math.sqrt(3) * gray.reshape(1))
    sde = sde_lib.VPSDE(N=1000)
    score = GaussianMixture([1.0], mu[None], C[None]).score_fn(sde)
    err = {}
    for r in (1, 5):
        x, nfe = colorize_sample(sde, score, (4000, 3), gray=gray.reshape(1), sampler="pc", steps=50, resample=r,
                                 grid="uniform_log_snr", seed=0)
        assert nfe == 100 * r and (x.double().mean(1) - gray).abs().max() < 1e-6
        err[r] = errors((x.double() @ Q)[:, 1:], mean_c, cov_c)
    print(err)
    assert err[5][0] < 0.04 and err[5][1] < 0.05
    assert err[5][0] < 0.5 * err[1][0] and err[5][1] < 0.5 * err[1][1]


def test_colorization_of_images_keeps_the_gray_level_per_pixel():
    sde = make_sdes()["ve"]
    gray = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    score = point_mass_score(sde, torch.zeros(3, 4, 4))
    x, nfe = colorize_sample(sde, score, (2, 3, 4, 4), gray=gray, sampler="dpmpp_2m", steps=4, seed=0)
    assert nfe == 4 and (x.mean(1, keepdim=True) - gray).abs().max() < 1e-6
    # The point mass at 0 puts the colors at 0 too: every channel near its gray level.
    assert (x - gray).abs().max() < 0.05


# ----- bad input, refused before any score call --------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(mask=torch.ones(4, 3)), r"mask .*\(4, 2\).*got shape \(4, 3\)"),
    (dict(y=torch.ones(5)), r"y .*\(4, 2\).*got shape \(5,\)"),
    (dict(mask=torch.full((4, 2), 0.5)), r"mask must hold 0 / 1.*0\.5"),
    (dict(resample=0), r"resample must be a positive integer, got 0"),
    (dict(jump=1.5), r"jump must be a positive integer, got 1.5"),
    (dict(steps=None), r"steps"),
    (dict(sampler="nope"), r"unknown sampler 'nope'; registered samplers: .*ddim.*pc"),
    (dict(sampler="adaptive"), r"'adaptive' with its defaults chooses its own times, so it cannot run one grid "
                               r"interval at a time; use a fixed-step sampler"),
    (dict(sampler="ode"), r"'ode' with its defaults chooses its own times.*sampler_options=\{'method': 'rk4'\}"),
    (dict(sampler="ode", sampler_options={"method": "dopri8"}), r"'ode' with \{'method': 'dopri8'\} chooses its own"),
    (dict(sampler_options={"steps": 3}), r"sampler_options must not set 'steps'"),
])
def test_bad_input_is_refused_before_any_score_call(kwargs, match):
    args = dict(y=torch.zeros(4, 2), mask=torch.ones(2), steps=3)
    with pytest.raises(ValueError, match=match):
        inpaint_sample(make_sdes()["vp"], never_called, (4, 2), **{**args, **kwargs})


def test_a_misspelled_sampler_option_is_refused_before_any_score_call():
    with pytest.raises(TypeError, match=r"pc_sample got an unknown option 'nsteps'; did you mean 'n_steps'\?"):
        inpaint_sample(make_sdes()["vp"], never_called, (4, 2), y=torch.zeros(4, 2), mask=torch.ones(2), steps=3,
                       sampler_options={"nsteps": 3})


def test_colorization_refuses_bad_shapes():
    sde = make_sdes()["vp"]
    with pytest.raises(ValueError, match=r"shape must be \[B, 3, \.\.\.\].*\(4, 2\)"):
        colorize_sample(sde, never_called, (4, 2), gray=torch.zeros(4, 1), steps=2)
    with pytest.raises(ValueError, match=r"gray must be .*\(4, 1, 8, 8\).*\(1, 8, 8\).*got \(4, 3, 8, 8\)"):
        colorize_sample(sde, never_called, (4, 3, 8, 8), gray=torch.zeros(4, 3, 8, 8), steps=2)


# ----- thresholding -------------------------------------------------------------------------------------

def score_for(sde, x, t, x0):
    """The score whose Tweedie estimate at (x, t) is x0: (alpha x0 - x) / sigma^2."""
    alpha, sigma = sde.marginal_coeffs(t)
    return (append_dims(alpha, x.ndim) * x0 - x) / append_dims(sigma ** 2, x.ndim)


@pytest.mark.parametrize("static", [False, True])
def test_threshold_leaves_an_estimate_inside_the_range_untouched(static):
    sde, g = make_sdes()["vp"], torch.Generator().manual_seed(0)
    x, t = torch.randn(8, 3, 4, 4, generator=g, dtype=F64), torch.rand(8, generator=g, dtype=F64) * 0.9 + 0.05
    s = score_for(sde, x, t, torch.rand(8, 3, 4, 4, generator=g, dtype=F64) * 1.9 - 0.95)
    out = thresholded_score(sde, lambda x, t: s, static=static)(x, t)
    assert ((out - s).abs() / s.abs()).max() < 1e-6


def test_dynamic_threshold_maps_into_the_range_per_sample():
    """x0' = clip(x0, -s, s) / s with s = max(1, p-quantile of |x0|) per sample, the score implies x0'."""
    sde, g = make_sdes()["ve"], torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 2, 8, 8, generator=g, dtype=F64) * torch.tensor([0.2, 0.3, 1.0, 2.0, 4.0, 8.0],
                                                                       dtype=F64).reshape(6, 1, 1, 1)
    x, t = torch.randn(6, 2, 8, 8, generator=g, dtype=F64), torch.full((6,), 0.3, dtype=F64)
    score = thresholded_score(sde, lambda x, t: score_for(sde, x, t, x0), percentile=0.9)
    out = sde.tweedie(x, t, score(x, t))
    s = torch.quantile(x0.abs().flatten(1), 0.9, dim=1).clamp_min(1).reshape(6, 1, 1, 1)
    assert (out - torch.maximum(torch.minimum(x0, s), -s) / s).abs().max() < 1e-10
    assert out.abs().max() <= 1 + 1e-10 and s[-1] > 5 and s[0] == 1
    # A sample's result does not depend on its batch-mates.
    alone = threshold_x0(x0[3:4], 0.9)
    assert torch.equal(alone, threshold_x0(x0, 0.9)[3:4])
    assert torch.equal(alone, threshold_x0(torch.cat([x0[3:4], 100 * x0[:2]]), 0.9)[:1])


def test_static_threshold_clips():
    x0 = torch.tensor([[-3.0, -0.5, 0.2, 1.5]], dtype=F64)
    assert torch.equal(threshold_x0(x0, static=True), torch.tensor([[-1.0, -0.5, 0.2, 1.0]], dtype=F64))


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "heun", "pc"])
@pytest.mark.parametrize("static", [False, True])
def test_thresholded_point_mass_lands_on_the_thresholded_point(sampler, static):
    """A point mass at mu has x0_hat = mu at every step, so the thresholded score's data estimate is the
    constant mu' = threshold(mu), and exponential-integrator samplers follow the flow towards mu' exactly:
    x_eps = alpha_eps mu' + (sigma_eps / sigma_T) (x_T - alpha_T mu')."""
    sde = make_sdes()["vp"]
    mu = torch.tensor([[0.5, -3.0, 2.0, 0.8]], dtype=F64)
    mu_t = threshold_x0(mu, 0.75, static)
    score = thresholded_score(sde, point_mass_score(sde, mu), percentile=0.75, static=static)
    x_T = sde.prior_sampling((5, 4), torch.Generator().manual_seed(0), dtype=F64)
    options = {"corrector": "none", "denoise": True} if sampler == "pc" else {}
    x, _ = samplers.get_sampler(sampler)(sde, score, (5, 4), steps=8, x_T=x_T, dtype=F64, seed=0, **options)
    if sampler == "pc":  # stochastic: the final Tweedie step returns the data estimate itself
        assert (x - mu_t).abs().max() < 1e-10
        return
    (a_e, s_e), (a_T, s_T) = (sde.marginal_coeffs(torch.tensor(v, dtype=F64)) for v in (sde.sampling_eps, sde.T))
    assert (x - (a_e * mu_t + s_e / s_T * (x_T - a_T * mu_t))).abs().max() < 1e-9


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, True, "0.9", float("nan")])
def test_bad_percentile_is_refused(bad):
    allowed = r"percentile must be a quantile level in \(0, 1\].*got "
    with pytest.raises(ValueError, match=allowed + re.escape(repr(bad))):
        thresholded_score(make_sdes()["vp"], never_called, percentile=bad)


def test_thresholded_score_keeps_the_conditioning_check():
    def labelled(x, t, y):
        return torch.zeros_like(x)
    wrapped = thresholded_score(make_sdes()["vp"], labelled)
    assert wrapped.cond_keys == ("y",)
    with pytest.raises(TypeError, match=r"conditioning 'z' is not taken by the score function .*it takes \['y'\]"):
        samplers.get_sampler("ddim")(make_sdes()["vp"], wrapped, (2, 2), steps=2, cond={"z": torch.ones(2)})
