"""Cascaded sampling against a Gaussian toy whose every model is exact: x ~ N(mu, S) in 4-D, the low
resolution y = D x (the means of pairs), the base model the exact score of D x and the super-resolution
model the exact conditional score given c = alpha(sT) y + sigma(sT) e (`GaussianMixture.
super_resolution_score_fn`). A cascade then reproduces the joint distribution; level 0 gives D x = y;
truncated and non-truncated augmentation agree; with a base whose covariance is off by (1 + delta), the
KL of the result to the truth falls monotonically in the augmentation level."""

import pytest
import torch

import samplers
import sde_lib
from samplers import Stage
from sde_lib import GaussianMixture

F64 = torch.float64


def toy():
    g = torch.Generator().manual_seed(0)
    L = torch.randn(4, 4, generator=g, dtype=F64) * 0.5
    S = L @ L.T + 0.2 * torch.eye(4, dtype=F64)
    mu = torch.tensor([0.3, -0.2, 0.1, 0.4], dtype=F64)
    D = torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]], dtype=F64)
    return GaussianMixture([1.0], mu[None], S[None]), mu, S, D


def stages(sde, base, sr, level, truncated=False, steps=60, denoise=True):
    return [Stage(sde, base.score_fn(sde), (2,), sampler="dpmpp_2m", steps=steps),
            Stage(sde, sr, (4,), sampler="dpmpp_2m", steps=steps, options={"denoise": denoise}, aug_level=level,
                  truncated=truncated)]


def cascade_cov(S, D, sde, level, delta):
    """The covariance of the cascade's output (exact sampling) when the base's covariance is (1 + delta)
    D S D^T and the super-resolution model is exact: S + delta a^2 G P G^T (the mean stays mu)."""
    a, sa = (float(v) for v in sde.marginal_coeffs(torch.tensor([level * sde.T], dtype=F64)))
    P = D @ S @ D.T
    G = a * S @ D.T @ torch.linalg.inv(a ** 2 * P + sa ** 2 * torch.eye(2, dtype=F64))
    return S + delta * a ** 2 * G @ P @ G.T


def gaussian_kl(cov_p, cov_q):
    """KL(N(m, cov_p) || N(m, cov_q)) for equal means."""
    d = len(cov_p)
    return 0.5 * float(torch.trace(torch.linalg.solve(cov_q, cov_p)) - d + torch.logdet(cov_q) - torch.logdet(cov_p))


@pytest.mark.parametrize("level, truncated", [(0.3, False), (0.3, True), (0.7, True)])
def test_an_exact_cascade_reproduces_the_joint_distribution(level, truncated):
    prior, mu, S, D = toy()
    sde, n = sde_lib.VPSDE(), 20000
    xs, info = samplers.cascade_sample(stages(sde, prior.project(D), prior.super_resolution_score_fn(sde, D), level,
                                              truncated), n, seed=0, dtype=F64)
    x = xs[1]
    # measured: mean errors 0.018-0.025, covariance errors 0.028-0.044 (Monte Carlo: about 0.01 and 0.03)
    assert float((x.mean(0) - mu).norm()) < 0.045
    assert float((torch.cov(x.T) - S).norm()) < 0.08
    assert info[1]["aug_level"] == level and info[1]["truncated"] is truncated and info[0]["nfe"] == 60
    if truncated:
        assert torch.equal(info[1]["low_res"], xs[0])  # the base's x at s T is passed on as it is


def test_level_zero_reproduces_the_low_resolution_sample():
    prior, _, _, D = toy()
    sde = sde_lib.VPSDE()
    xs, info = samplers.cascade_sample(stages(sde, prior.project(D), prior.super_resolution_score_fn(sde, D), 0.0),
                                       500, seed=1, dtype=F64)
    torch.testing.assert_close(xs[1] @ D.T, xs[0], rtol=0, atol=1e-9)   # D x = y: the model's Tweedie step
    assert torch.equal(info[1]["low_res"], xs[0])


def test_truncated_and_non_truncated_agree_with_an_exact_base():
    prior, _, S, D = toy()
    sde, n = sde_lib.VPSDE(), 40000
    covs = []
    for truncated in (False, True):
        xs, _ = samplers.cascade_sample(stages(sde, prior.project(D), prior.super_resolution_score_fn(sde, D), 0.5,
                                               truncated), n, seed=2, dtype=F64)
        covs.append(torch.cov(xs[1].T))
    assert float((covs[0] - covs[1]).norm()) < 0.06 and float((covs[1] - S).norm()) < 0.06


def test_with_an_inexact_base_the_kl_falls_with_the_augmentation_level():
    prior, mu, S, D = toy()
    sde, delta = sde_lib.VPSDE(), 0.5
    levels = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
    kls = [gaussian_kl(cascade_cov(S, D, sde, s, delta), S) for s in levels]
    assert all(a > b for a, b in zip(kls, kls[1:])) and kls[-1] < 1e-3 * kls[0], kls
    # the sampler follows the closed form: a base 50% too wide, corrected at level 0.3
    wide = GaussianMixture([1.0], (D @ mu)[None], ((1 + delta) * D @ S @ D.T)[None])
    xs, _ = samplers.cascade_sample(stages(sde, wide, prior.super_resolution_score_fn(sde, D), 0.3), 40000, seed=3,
                                    dtype=F64)
    torch.testing.assert_close(torch.cov(xs[1].T), cascade_cov(S, D, sde, 0.3, delta), rtol=0, atol=0.06)


def never(x, t, low_res=None, aug_level=None):
    raise AssertionError("the network was called")


def test_bad_cascades_are_refused_before_any_call():
    sde = sde_lib.VPSDE()
    img = lambda shape, **kw: Stage(sde, never, shape, steps=4, **kw)
    for bad, match in (([img((1, 8, 8)), img((3, 16, 16))], "do not chain onto stage 0's"),
                       ([img((1, 8, 8)), img((1, 12, 12))], "do not chain onto stage 0's"),
                       ([img((1, 8, 8)), img((1, 16, 16), aug_level=1.5)], r"aug_level must be a number in \[0, 1\]"),
                       ([img((1, 8, 8)), Stage(sde_lib.VESDE(), never, (1, 16, 16), steps=4, truncated=True,
                                               aug_level=0.2)], "need the same SDE"),
                       ([img((1, 8, 8)), img((1, 16, 16), sampler="nope")], "stage 1 \\(nope\\)"),
                       ([img((1, 8, 8)), img((1, 16, 16), options={"etaa": 1})], "stage 1 \\(ddim\\): .*unknown option")):
        with pytest.raises((ValueError, TypeError), match=match):
            samplers.cascade_sample(bad, 2)
    with pytest.raises(TypeError, match="conditioning 'low_res' is not taken"):
        samplers.cascade_sample([img((1, 8, 8)), Stage(sde, lambda x, t: x, (1, 16, 16), steps=4)], 2)
    with pytest.raises(TypeError, match="non-empty sequence"):
        samplers.cascade_sample([], 2)
