"""Conditioning through the seam: a labelled Gaussian mixture (label = component) has an exact
conditional score, which every sampler and the likelihood must pass labels to untouched."""
import pytest
import torch

import likelihood
import samplers
from score_toolkit.analytic import GaussianMixture
from tests.conftest import make_sdes, mixture_2d

MIX = mixture_2d()
COMPONENTS = [GaussianMixture([1.0], MIX.means[k:k + 1], MIX.covs[k:k + 1]) for k in range(2)]


def conditional_score(sde):
    """score_fn(x, t, y): the exact score of component y[i] for sample i."""
    scores = [c.score_fn(sde) for c in COMPONENTS]

    def score_fn(x, t, y):
        out = torch.stack([s(x, t) for s in scores])          # [K, B, D]
        return out[y, torch.arange(len(y))]

    return score_fn


def labels(n):
    return torch.arange(n) % 2


def assert_components(x, y, tol_mean=0.12, tol_std=0.15):
    for k in range(2):
        xk = x[y == k].double()
        assert (xk.mean(0) - MIX.means[k]).abs().max() < tol_mean, (k, xk.mean(0))
        std = MIX.covs[k].diagonal().sqrt()
        assert ((xk.std(0) - std).abs() / std).max() < tol_std, (k, xk.std(0), std)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_pc_and_ode_reach_the_labelled_component(sde_name):
    sde, n = make_sdes()[sde_name], 1200
    y = labels(n)
    score_fn = conditional_score(sde)
    x, _ = samplers.pc_sample(sde, score_fn, (n, 2), steps=200, seed=0, y=y)
    assert_components(x, y)
    x, _ = samplers.ode_sample(sde, score_fn, (n, 2), seed=1, rtol=1e-4, atol=1e-4, y=y)
    assert_components(x, y)


def test_every_registered_sampler_passes_labels_through():
    sde, n = make_sdes()["vp"], 1000
    y = labels(n)
    score_fn = conditional_score(sde)
    for name in samplers.list_samplers():
        fn = samplers.get_sampler(name)
        kwargs = {"steps": 100} if name not in ("ode", "adaptive") else {}
        x, nfe = fn(sde, score_fn, (n, 2), seed=3, y=y, **kwargs)
        assert nfe > 0
        assert_components(x, y, tol_mean=0.15, tol_std=0.25)


def test_likelihood_of_a_labelled_batch_is_its_components_density():
    sde, n = make_sdes()["vp"], 64
    y = labels(n)
    x = torch.stack([COMPONENTS[int(k)].sample(1, torch.Generator().manual_seed(i))[0] for i, k in enumerate(y)])
    logp, z, _ = likelihood.log_likelihood(sde, conditional_score(sde), x.double(), divergence="exact", y=y)
    # The latent z meets the model's N(0, I) prior; put the component's true p_T(z) in its place
    # (the components' means survive at T as alpha(T) mu, a gap of ~0.03 nats).
    T, eps = (torch.tensor(v, dtype=torch.float64) for v in (sde.T, 1e-5))
    logp = logp - sde.prior_logp(z) + torch.where(y == 0, COMPONENTS[0].log_prob(z, sde, T), COMPONENTS[1].log_prob(z, sde, T))
    exact = torch.where(y == 0, COMPONENTS[0].log_prob(x, sde, eps), COMPONENTS[1].log_prob(x, sde, eps))
    assert (logp - exact).abs().max() < 2e-3


def test_conditioning_a_score_does_not_take_is_refused_before_any_call():
    sde, calls = make_sdes()["vp"], []

    def score_fn(x, t):
        calls.append(1)
        return -x

    for name in samplers.list_samplers():
        kwargs = {} if name in ("ode", "adaptive") else {"steps": 5}  # those two choose their own steps
        with pytest.raises(TypeError, match="conditioning argument 'y' is not taken by the score function"):
            samplers.get_sampler(name)(sde, score_fn, (4, 2), y=torch.zeros(4), **kwargs)
    with pytest.raises(TypeError, match="'y' is not taken"):
        likelihood.log_likelihood(sde, score_fn, torch.zeros(4, 2), y=torch.zeros(4))
    assert not calls
