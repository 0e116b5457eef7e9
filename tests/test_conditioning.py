"""Conditioning through the seam: a labelled Gaussian mixture (label = component) has an exact
conditional score, which every sampler and the likelihood must pass labels to untouched."""
import pytest
import torch

import likelihood
import samplers
from sde_lib.analytic import GaussianMixture
from tests.helpers import make_sdes, mixture_2d

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
    x, _ = samplers.pc_sample(sde, score_fn, (n, 2), steps=200, seed=0, cond={"y": y})
    assert_components(x, y)
    x, _ = samplers.ode_sample(sde, score_fn, (n, 2), seed=1, rtol=1e-4, atol=1e-4, cond={"y": y})
    assert_components(x, y)


def test_every_registered_sampler_passes_labels_through():
    sde, n = make_sdes()["vp"], 1000
    y = labels(n)
    score_fn = conditional_score(sde)
    for name in samplers.list_samplers():
        fn = samplers.get_sampler(name)
        kwargs = {"steps": 100} if name not in ("ode", "adaptive") else {}
        x, nfe = fn(sde, score_fn, (n, 2), seed=3, cond={"y": y}, **kwargs)
        assert nfe > 0
        if name == "consistency":  # on a plain score it returns posterior means, too narrow: the means only
            assert_components(x, y, tol_mean=0.15, tol_std=float("inf"))
            continue
        assert_components(x, y, tol_mean=0.15, tol_std=0.25)


def test_likelihood_of_a_labelled_batch_is_its_components_density():
    sde, n = make_sdes()["vp"], 64
    y = labels(n)
    x = torch.stack([COMPONENTS[int(k)].sample(1, torch.Generator().manual_seed(i))[0] for i, k in enumerate(y)])
    logp, z, _ = likelihood.log_likelihood(sde, conditional_score(sde), x.double(), divergence="exact", cond={"y": y})
    # The latent z meets the model's N(0, I) prior; put the component's true p_T(z) in its place
    # (the components' means survive at T as alpha(T) mu, a gap of ~0.03 nats).
    T, eps = (torch.tensor(v, dtype=torch.float64) for v in (sde.T, 1e-5))
    logp = logp - sde.prior_logp(z) + torch.where(y == 0, COMPONENTS[0].log_prob(z, sde, T), COMPONENTS[1].log_prob(z, sde, T))
    exact = torch.where(y == 0, COMPONENTS[0].log_prob(x, sde, eps), COMPONENTS[1].log_prob(x, sde, eps))
    assert (logp - exact).abs().max() < 2e-3


def test_encode_decode_and_bits_per_dim_pass_labels_through():
    """The flow of each sample's own component: decode(encode(x)) = x, and other labels give other latents."""
    sde, n = make_sdes()["vp"], 32
    y = labels(n)
    x = torch.stack([COMPONENTS[int(k)].sample(1, torch.Generator().manual_seed(i))[0] for i, k in enumerate(y)])
    score_fn = conditional_score(sde)
    z = likelihood.encode(sde, score_fn, x.double(), cond={"y": y})
    assert (likelihood.decode(sde, score_fn, z, cond={"y": y}) - x).abs().max() < 1e-3
    assert (likelihood.encode(sde, score_fn, x.double(), cond={"y": 1 - y}) - z).abs().max() > 0.5
    seen = []
    bpd, _, _ = likelihood.bits_per_dim(sde, lambda x, t, y: seen.append(y) or score_fn(x, t, y),
                                        torch.randint(0, 256, (n, 2), generator=torch.Generator().manual_seed(0)),
                                        seed=0, dtype=torch.float64, cond={"y": y})
    assert seen and all(s is y for s in seen) and torch.isfinite(bpd).all()


def test_conditioning_a_score_does_not_take_is_refused_before_any_call():
    sde, calls = make_sdes()["vp"], []

    def score_fn(x, t):
        calls.append(1)
        return -x

    refused = "conditioning 'y' is not taken by the score function score_fn; it takes no conditioning"
    for name in samplers.list_samplers():
        kwargs = {} if name in ("ode", "adaptive") else {"steps": 5}  # those two choose their own steps
        with pytest.raises(TypeError, match=refused):
            samplers.get_sampler(name)(sde, score_fn, (4, 2), cond={"y": torch.zeros(4)}, **kwargs)
    with pytest.raises(TypeError, match=refused):
        likelihood.log_likelihood(sde, score_fn, torch.zeros(4, 2), cond={"y": torch.zeros(4)})
    with pytest.raises(TypeError, match=refused):
        likelihood.encode(sde, score_fn, torch.zeros(4, 2), cond={"y": torch.zeros(4)})
    with pytest.raises(ValueError, match=r"cond\['y'\] must be a tensor with one row per sample \(shape \[4, \.\.\.\]\)"):
        likelihood.log_likelihood(sde, lambda x, t, y: calls.append(1) or -x, torch.zeros(4, 2), cond={"y": torch.zeros(3)})
    assert not calls
