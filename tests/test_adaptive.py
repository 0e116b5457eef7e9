"""The adaptive-step reverse-SDE solver: the right distribution, tolerance against cost, honest NFE."""
import pytest
import torch

import samplers
import sde_lib
from samplers.adaptive import adaptive_sample
from tests.helpers import assert_recovers, make_sdes, mixture_2d


def sliced_w1(x, ref, n_dirs=64):
    """Mean over fixed random directions u of W1(u.x, u.ref), from quantiles: 0.01-0.02 for an
    exact sample of 2,000 points of the 2-D mixture."""
    u = torch.randn(n_dirs, x.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    px = (x.double() @ u.T).sort(0).values
    q = (torch.arange(len(x), dtype=torch.float64) + 0.5) / len(x)
    return (px - torch.quantile(ref.double() @ u.T, q, dim=0)).abs().mean().item()


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_adaptive_recovers_mixture(sde_name):
    sde, gm = make_sdes()[sde_name], mixture_2d()
    x, nfe = adaptive_sample(sde, gm.score_fn(sde), (3000, 2), seed=0)
    assert_recovers(gm, x)
    assert 40 < nfe < 400 and nfe % 2 == 0


def test_looser_tolerance_fewer_calls_larger_error():
    sde, gm = sde_lib.VPSDE(), mixture_2d()
    ref = gm.sample(50_000, torch.Generator().manual_seed(5))
    nfes, errs = [], []
    for tol in (0.02, 0.2, 1.0):
        x, nfe = adaptive_sample(sde, gm.score_fn(sde), (2000, 2), rtol=tol, atol=tol / 5, seed=0)
        nfes.append(nfe)
        errs.append(sliced_w1(x, ref))
    assert nfes[0] > nfes[1] > nfes[2], nfes
    assert errs[0] < 0.05 and errs[2] > 3 * errs[0], errs


def test_nfe_is_real_calls_and_cond_reaches_score():
    sde, gm = sde_lib.VESDE(), mixture_2d()
    calls, seen = [], []

    def score(x, t, label):
        calls.append(int(label[0]))
        return gm.score_fn(sde)(x, t)

    x, nfe = adaptive_sample(sde, score, (64, 2), seed=0, cond={"label": torch.full((64,), 3)}, progress=True,
                             callback=lambda d: seen.append((torch.as_tensor(d["t"]), d["accepted"].clone())))
    assert nfe == len(calls) == 2 * len(seen) and set(calls) == {3}
    assert torch.all(seen[-1][0] == sde.sampling_eps)          # every sample lands exactly on eps
    assert any(not bool(a.all()) for _, a in seen)             # some steps are rejected (and counted)
    _, nfe_d = adaptive_sample(sde, gm.score_fn(sde), (64, 2), seed=0, denoise=True)
    assert nfe_d == nfe + 1


def test_an_accepted_step_is_the_improved_euler_step_with_one_increment():
    """Known answer: x'' = x + (K1 + K2) / 2, K1 = -h f(x, t) + g(t) sqrt(h) z,
    K2 = -h f(x + K1, t - h) + g(t - h) sqrt(h) z, with the same z (the run's first draw)."""
    sde, gm = sde_lib.VPSDE(), mixture_2d()
    x, t = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64), 1.0
    h = 1e-4  # small enough to be accepted at once
    seen = []
    with pytest.raises(RuntimeError, match="max_nfe"):
        adaptive_sample(sde, gm.score_fn(sde), x.shape, x_T=x, h_init=h, seed=3, dtype=torch.float64,
                        max_nfe=2, callback=lambda d: seen.append(d))
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rsde = sde.reverse(gm.score_fn(sde))

    def K(x, t):
        drift, g = rsde.sde(x, torch.full((8,), t, dtype=torch.float64))
        return -h * drift + g[:, None] * h ** 0.5 * z

    k1 = K(x, t)
    expected = x + 0.5 * (k1 + K(x + k1, t - h))
    assert bool(seen[0]["accepted"].all())
    assert seen[0]["t"] == pytest.approx(t - h, abs=1e-15)  # one time for the batch: a float
    torch.testing.assert_close(seen[0]["x"], expected, rtol=1e-12, atol=1e-12)


def test_same_seed_same_samples():
    sde, gm = sde_lib.VPSDE(), mixture_2d()
    a, _ = adaptive_sample(sde, gm.score_fn(sde), (16, 2), seed=7)
    b, _ = adaptive_sample(sde, gm.score_fn(sde), (16, 2), generator=torch.Generator().manual_seed(7))
    c, _ = adaptive_sample(sde, gm.score_fn(sde), (16, 2), seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert samplers.get_sampler("adaptive") is adaptive_sample


def test_per_sample_steps_do_not_depend_on_batch_mates():
    sde, gm = sde_lib.VESDE(), mixture_2d()
    z = sde.prior_sampling((8, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    z2 = z.clone()
    z2[1:] *= 0.5  # change every other sample's start
    kw = dict(seed=1, dtype=torch.float64, rtol=0.1, atol=0.02)
    a, _ = adaptive_sample(sde, gm.score_fn(sde), z.shape, x_T=z, norm="sample", **kw)
    b, _ = adaptive_sample(sde, gm.score_fn(sde), z.shape, x_T=z2, norm="sample", **kw)
    assert torch.allclose(a[0], b[0], rtol=0, atol=1e-12) and not torch.allclose(a[1:], b[1:])
    c, _ = adaptive_sample(sde, gm.score_fn(sde), z.shape, x_T=z, norm="batch", **kw)
    d, _ = adaptive_sample(sde, gm.score_fn(sde), z.shape, x_T=z2, norm="batch", **kw)
    assert not torch.allclose(c[0], d[0])  # one step size for the batch: batch-mates matter


def test_max_nfe_stops_a_run_that_would_not_end():
    sde, gm = sde_lib.VPSDE(), mixture_2d()
    with pytest.raises(RuntimeError, match="max_nfe=10"):
        adaptive_sample(sde, gm.score_fn(sde), (16, 2), seed=0, max_nfe=10)


@pytest.mark.parametrize("kwargs, match", [
    (dict(rtol=0.0), "rtol must be a finite number > 0"),
    (dict(rtol=-0.1), "rtol"),
    (dict(atol=0), "atol must be a finite number > 0"),
    (dict(h_init=float("nan")), "h_init"),
    (dict(theta=0), "theta"),
    (dict(r=-1), "r must be"),
    (dict(steps=10), "steps must be None for adaptive with its defaults: it chooses its own steps .*got 10"),
    (dict(grid="karras"), "grid must be None for adaptive"),
    (dict(grid=torch.tensor([1.0, 0.5, 1e-3])), r"grid must be None for adaptive .*got a tensor of shape \(3,\)"),
    (dict(norm="max"), r"norm must be one of \('batch', 'sample'\), got 'max'"),
    (dict(max_nfe=0), "max_nfe must be a positive integer"),
    (dict(eps=1.5), "eps must lie in"),
])
def test_bad_arguments_raise_before_any_score_call(kwargs, match):
    sde = sde_lib.VPSDE()
    calls = []
    with pytest.raises(ValueError, match=match):
        adaptive_sample(sde, lambda x, t: calls.append(1) or -x, (4, 2), **kwargs)
    assert not calls
