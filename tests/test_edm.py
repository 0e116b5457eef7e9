"""EDM's Heun sampler: second order against a tight dopri5 solve, the ODE limit, churn, the calling convention."""
import math

import pytest
import torch

import samplers
import sde_lib
from samplers.edm import heun_sample
from tests.helpers import assert_recovers, flow_reference, make_sdes, mixture_2d


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_heun_converges_with_order_two(sde_name):
    sde, gm = make_sdes()[sde_name], mixture_2d()
    z, ref = flow_reference(sde_name)
    steps = [16, 32, 64, 128]
    errs = []
    for n in steps:
        x, nfe = heun_sample(sde, gm.score_fn(sde), z.shape, steps=n, x_T=z, dtype=torch.float64)
        assert nfe == 2 * n  # the grid ends at eps > 0: every step takes its correction
        errs.append((x - ref).pow(2).sum(1).mean().sqrt().item())
    # Least-squares slope of log error against log step count: -2 for a second-order method
    # (Euler alone gives -1; a wrong correction time or level breaks the cancellation).
    lx, ly = torch.tensor(steps, dtype=torch.float64).log(), torch.tensor(errs).log()
    slope = ((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum()
    assert -2.3 < slope < -1.85, f"slope {slope:.3f}, errors {errs}"
    assert errs[-1] < 1e-3


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_deterministic_heun_is_the_ode_limit(sde_name):
    sde, gm = make_sdes()[sde_name], mixture_2d()
    z, ref = flow_reference(sde_name)
    a, _ = heun_sample(sde, gm.score_fn(sde), z.shape, steps=400, x_T=z, dtype=torch.float64, seed=1)
    b, _ = heun_sample(sde, gm.score_fn(sde), z.shape, steps=400, x_T=z, dtype=torch.float64, seed=2)
    assert torch.equal(a, b)                    # s_churn = 0 draws no noise: the seed does not matter
    assert (a - ref).abs().max() < 3e-4         # ~1e-4 at 400 steps, 4x that at 200 (second order)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_stochastic_heun_recovers_mixture(sde_name):
    sde, gm = make_sdes()[sde_name], mixture_2d()
    x, nfe = heun_sample(sde, gm.score_fn(sde), (3000, 2), steps=50, s_churn=20, seed=0)
    assert_recovers(gm, x)
    assert nfe == 100


def test_churn_draws_noise_and_follows_its_window():
    sde, gm = sde_lib.VESDE(), mixture_2d()
    z = sde.prior_sampling((32, 2), torch.Generator().manual_seed(0))
    det, _ = heun_sample(sde, gm.score_fn(sde), z.shape, steps=10, x_T=z)
    a, _ = heun_sample(sde, gm.score_fn(sde), z.shape, steps=10, x_T=z, s_churn=5, seed=3)
    b, _ = heun_sample(sde, gm.score_fn(sde), z.shape, steps=10, x_T=z, s_churn=5, seed=3)
    c, _ = heun_sample(sde, gm.score_fn(sde), z.shape, steps=10, x_T=z, s_churn=5, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, det)
    # A churn window [s_tmin, s_tmax] holding none of the grid's levels (0.01 .. 50) churns nothing,
    # and s_noise = 0 raises the level without adding noise: neither is the deterministic sampler.
    off, _ = heun_sample(sde, gm.score_fn(sde), z.shape, steps=10, x_T=z, s_churn=5, s_tmin=60, seed=3)
    assert torch.equal(off, det)
    quiet, _ = heun_sample(sde, gm.score_fn(sde), z.shape, steps=10, x_T=z, s_churn=5, s_noise=0, seed=3)
    assert not torch.equal(quiet, det)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_churn_never_asks_the_score_past_T(sde_name):
    """gamma raises nu_i to (1 + gamma) nu_i; near T that would pass nu(T), so it is capped there."""
    sde, gm = make_sdes()[sde_name], mixture_2d()
    times = []

    def score(x, t):
        times.append(t.double())
        return gm.score_fn(sde)(x, t)

    # Step 1 starts at 0.99 T, whose level raised by 1 + gamma = sqrt(2) would pass nu(T).
    grid = torch.tensor([sde.T, 0.99 * sde.T, 0.5, sde.sampling_eps], dtype=torch.float64)
    heun_sample(sde, score, (8, 2), steps=3, grid=grid, s_churn=10, seed=0, dtype=torch.float64)
    t = torch.stack([u[0] for u in times])
    assert float(t.max()) <= sde.T and float(t.min()) == sde.sampling_eps
    assert abs(float(t[2]) - sde.T) < 1e-9                    # step 1's churned level: capped at nu(T)
    nu = lambda u: float((-sde.log_snr(u)).exp())
    assert nu(t[4]) == pytest.approx(math.sqrt(2) * nu(grid[2]), rel=1e-9)  # step 2: raised by 1 + gamma


def test_nfe_counts_calls_and_cond_reaches_score():
    sde, gm = sde_lib.VPSDE(), mixture_2d()
    calls = []

    def score(x, t, label):
        calls.append(label)
        return gm.score_fn(sde)(x, t)

    seen, label = [], torch.arange(4)
    x, nfe = heun_sample(sde, score, (4, 2), steps=7, seed=0, cond={"label": label}, progress=True,
                         callback=lambda d: seen.append((d["i"], d["t"], d["denoised"].shape)))
    assert nfe == len(calls) == 14 and all(c is label for c in calls)
    assert [i for i, _, _ in seen] == list(range(7)) and seen[-1][1] == sde.sampling_eps
    assert all(shape == (4, 2) for _, _, shape in seen)


def test_same_seed_same_samples():
    sde, gm = sde_lib.VESDE(), mixture_2d()
    a, _ = heun_sample(sde, gm.score_fn(sde), (16, 2), steps=5, seed=7)
    b, _ = heun_sample(sde, gm.score_fn(sde), (16, 2), steps=5, generator=torch.Generator().manual_seed(7))
    c, _ = heun_sample(sde, gm.score_fn(sde), (16, 2), steps=5, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert "heun" in samplers.list_samplers() and samplers.get_sampler("heun") is heun_sample


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps must be a positive integer"),
    (dict(steps=2.5), "steps"),
    (dict(steps=5, s_churn=-1.0), "s_churn must be a finite number >= 0"),
    (dict(steps=5, s_churn=math.inf), "s_churn"),
    (dict(steps=5, s_tmin=2.0, s_tmax=1.0), "s_tmin and s_tmax"),
    (dict(steps=5, s_noise=-0.5), "s_noise"),
    (dict(steps=5, grid=torch.tensor([1.5, 0.5, 1e-3], dtype=torch.float64)), r"grid must lie in \(0, T\]"),
    (dict(steps=5, grid=torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)), r"grid must lie in \(0, T\]"),
    (dict(steps=5, eps=0.0), "eps must lie in"),
])
def test_bad_arguments_raise_before_any_score_call(kwargs, match):
    sde = sde_lib.VPSDE()
    calls = []
    with pytest.raises(ValueError, match=match):
        heun_sample(sde, lambda x, t: calls.append(1) or -x, (4, 2), **kwargs)
    assert not calls
