"""Guidance against known answers: a labelled Gaussian mixture (label = component) has an exact
class-conditional score and an exact noise-conditional classifier p_t(y | x) at every t."""
import math
import re

import pytest
import torch

import samplers
from samplers.guidance import cfg_score, classifier_gradient, classifier_guided_score
from sde_lib.analytic import GaussianMixture
from tests.helpers import make_sdes, mixture_2d

MIX2 = mixture_2d()
# Three separated components with correlated covariances of both signs.
MIX3 = GaussianMixture([0.2, 0.5, 0.3], [[-3.0, 0.0], [3.0, -0.5], [0.0, 3.0]],
                       [[[0.3, 0.15], [0.15, 0.25]], [[0.2, -0.1], [-0.1, 0.3]], [[0.15, 0.0], [0.0, 0.4]]])
MIXTURES = {"mix2": MIX2, "mix3": MIX3}


def random_points(n, seed=0):
    """x [n, 2] spread over and beyond the mixtures, per-sample times t [n] in [1e-3, 1], labels {0, 1}."""
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = 1e-3 + (1 - 1e-3) * torch.rand(n, generator=g, dtype=torch.float64)
    return x, t, torch.randint(0, 2, (n,), generator=g)


def component_scores(mix, x, sde, t, y):
    """s_y(x, t): the score of component y[i] alone, for sample i, from one-component mixtures."""
    all_k = torch.stack([mix.component(k).score(x, sde, t) for k in range(len(mix.weights))])
    return all_k[y, torch.arange(len(y))]


def exact_classifier(mix, sde):
    return lambda x, t: mix.log_posterior(x, sde, t)


def guided(kind, mix, sde):
    """The class-conditional score of `mix` two ways: CFG at w = 0, classifier guidance at scale 1."""
    if kind == "cfg":
        return cfg_score(mix.conditional_score_fn(sde), 0.0, null_label=len(mix.weights))
    return classifier_guided_score(mix.score_fn(sde), exact_classifier(mix, sde), 1.0)


def assert_class_components(mix, x, y, tol_mean=0.1, tol_std=0.1, tol_cov=0.2):
    """Every sample of class k lies in component k (> 97%), with k's mean, stds and covariance."""
    hit = (mix.component_of(x) == y).double().mean()
    assert hit > 0.97, hit
    for k in range(len(mix.weights)):
        xk = x[y == k].double()
        assert (xk.mean(0) - mix.means[k]).abs().max() < tol_mean, (k, xk.mean(0), mix.means[k])
        std = mix.covs[k].diagonal().sqrt()
        assert ((xk.std(0) - std).abs() / std).max() < tol_std, (k, xk.std(0), std)
        cov_err = torch.linalg.matrix_norm(torch.cov(xk.T) - mix.covs[k]) / torch.linalg.matrix_norm(mix.covs[k])
        assert cov_err < tol_cov, (k, torch.cov(xk.T), mix.covs[k])


# ----------------------------------------------------------------------------- the exact answers


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_posterior_is_bayes_rule_on_the_marginal_components(sde_name):
    sde, (x, t, _) = make_sdes()[sde_name], random_points(50)
    alpha, sigma = sde.marginal_coeffs(t)
    covs = [alpha[:, None, None] ** 2 * MIX3.covs[k] + sigma[:, None, None] ** 2 * torch.eye(2) for k in range(3)]
    joint = torch.stack([math.log(MIX3.weights[k]) + torch.distributions.MultivariateNormal(
        alpha[:, None] * MIX3.means[k], covs[k]).log_prob(x) for k in range(3)], -1)
    expected = torch.softmax(joint, -1)
    assert torch.allclose(MIX3.posterior(x, sde, t), expected, rtol=1e-10, atol=1e-12)
    assert torch.allclose(MIX3.log_posterior(x, sde, t).exp(), expected, rtol=1e-10, atol=1e-12)
    assert torch.allclose(MIX3.posterior(x, sde, t).sum(-1), torch.ones(50, dtype=torch.float64))


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_conditional_score_is_the_components_score_and_the_null_label_the_mixtures(sde_name):
    sde, (x, t, y) = make_sdes()[sde_name], random_points(40)
    y = y + (torch.arange(40) % 3 == 0).long()          # labels 0, 1, 2 of MIX3
    score = MIX3.conditional_score_fn(sde)
    assert torch.allclose(score(x, t, y), component_scores(MIX3, x, sde, t, y), rtol=1e-10, atol=1e-12)
    null = torch.full_like(y, 3)
    assert torch.allclose(score(x, t, null), MIX3.score(x, sde, t), rtol=1e-10, atol=1e-12)
    # C_y^{-1} (alpha mu_y - x) at one point, written out.
    alpha, sigma = sde.marginal_coeffs(t[:1])
    C = alpha ** 2 * MIX3.covs[2] + sigma ** 2 * torch.eye(2, dtype=torch.float64)
    by_hand = torch.linalg.solve(C, alpha * MIX3.means[2] - x[0])
    assert torch.allclose(score(x[:1], t[:1], torch.tensor([2])), by_hand[None], rtol=1e-10)
    with pytest.raises(ValueError, match=r"y must be .*\[0, 3\) or 3.*\[4\]"):
        score(x[:2], t[:2], torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="null_label"):
        MIX3.conditional_score_fn(sde, null_label=1)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("w", [0.0, 0.5, 2.0])
def test_cfg_is_the_guided_formula_at_every_t(sde_name, w):
    sde, (x, t, y) = make_sdes()[sde_name], random_points(64)
    s_y, s = component_scores(MIX2, x, sde, t, y), MIX2.score(x, sde, t)
    out = cfg_score(MIX2.conditional_score_fn(sde), w, null_label=2)(x, t, y=y)
    assert torch.allclose(out, (1 + w) * s_y - w * s, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("mix_name", ["mix2", "mix3"])
def test_classifier_guidance_with_the_exact_classifier_is_the_conditional_score(sde_name, mix_name):
    """Bayes: grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x), in float64 to ~1e-10."""
    sde, mix, (x, t, y) = make_sdes()[sde_name], MIXTURES[mix_name], random_points(64)
    fn = classifier_guided_score(mix.score_fn(sde), exact_classifier(mix, sde), 1.0)
    with torch.no_grad():  # as inside a sampler: the gradient turns autograd on by itself
        out = fn(x, t, y=y)
    expected = component_scores(mix, x, sde, t, y)
    assert ((out - expected).abs().max() / expected.abs().max()) < 1e-10
    # scale c adds c times the log-posterior's gradient, s_y - s
    fn2 = classifier_guided_score(mix.score_fn(sde), exact_classifier(mix, sde), 2.5)
    s = mix.score(x, sde, t)
    assert torch.allclose(fn2(x, t, y=y), s + 2.5 * (expected - s), rtol=1e-9, atol=1e-9)
    assert torch.allclose(classifier_gradient(exact_classifier(mix, sde), x, t, y), expected - s, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("kind", ["cfg", "classifier"])
@pytest.mark.parametrize("mix_name,sde_name", [("mix2", "vp"), ("mix3", "vp"), ("mix3", "ve")])
def test_guided_samplers_reproduce_the_class_component(kind, mix_name, sde_name):
    """w = 0 CFG and scale-1 classifier guidance with the exact classifier draw p(x | y) = component y."""
    sde, mix, n = make_sdes()[sde_name], MIXTURES[mix_name], 1500
    y = torch.arange(n) % len(mix.weights)
    score_fn = guided(kind, mix, sde)
    for name, kwargs in (("pc", {"steps": 200}), ("ode", {"rtol": 1e-4, "atol": 1e-4}), ("dpmpp_2m", {"steps": 30})):
        x, nfe = samplers.get_sampler(name)(sde, score_fn, (n, 2), seed=0, cond={"y": y}, **kwargs)
        assert nfe > 0
        assert_class_components(mix, x, y)


@pytest.mark.parametrize("kind", ["cfg", "classifier"])
def test_every_registered_sampler_takes_a_guided_score(kind):
    sde, n = make_sdes()["subvp"], 400
    y = torch.arange(n) % 2
    score_fn = guided(kind, MIX2, sde)
    for name in samplers.list_samplers():
        kwargs = {"ode": {}, "adaptive": {"max_nfe": 5000}}.get(name, {"steps": 30})
        x, nfe = samplers.get_sampler(name)(sde, score_fn, (n, 2), seed=1, cond={"y": y}, **kwargs)
        assert (MIX2.component_of(x) == y).double().mean() > 0.97, name


@pytest.mark.parametrize("sampler,kwargs", [("ode", {"rtol": 1e-5, "atol": 1e-5}), ("dpmpp_2m", {"steps": 30}),
                                            ("pc", {"steps": 100})])
def test_cfg_pushes_a_class_away_from_the_other_component(sampler, kwargs):
    """(1 + w) s_0 - w s samples p(x | 0)^(1+w) / p(x)^w: class 0 moves away from component 1 as w grows."""
    sde, n = make_sdes()["vp"], 1000
    y = torch.zeros(n, dtype=torch.long)
    distance = []
    for w in (0.0, 1.0, 3.0):
        x, _ = samplers.get_sampler(sampler)(sde, cfg_score(MIX2.conditional_score_fn(sde), w, 2), (n, 2),
                                             seed=0, cond={"y": y}, **kwargs)
        distance.append(float((x.double().mean(0) - MIX2.means[1]).norm()))
    assert distance[0] < distance[1] < distance[2], distance
    assert abs(distance[0] - float((MIX2.means[0] - MIX2.means[1]).norm())) < 0.1, distance  # w = 0: component 0


class CountingScore:
    """A conditional score that records each call's batch size and labels: -x + 0.1 y."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, y):
        assert x.shape[0] == t.shape[0] == y.shape[0]
        self.calls.append(y.clone())
        return -x + 0.1 * y.to(x.dtype)[:, None]


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "pc", "ode"])
def test_one_batched_network_call_per_guided_call(sampler):
    sde, n, y = make_sdes()["vp"], 8, torch.arange(8) % 3
    kwargs = {"ode": {"method": "euler", "steps": 7}}.get(sampler, {"steps": 7})
    for w in (0.0, 2.0):
        net = CountingScore()
        _, nfe = samplers.get_sampler(sampler)(sde, cfg_score(net, w, null_label=3), (n, 2), seed=0, cond={"y": y},
                                               **kwargs)
        assert len(net.calls) == nfe > 0
        if w == 0:  # the plain conditional score: no null half
            assert all(torch.equal(c, y) for c in net.calls)
        else:       # [y; null] in one call on the doubled batch
            assert all(torch.equal(c, torch.cat([y, torch.full_like(y, 3)])) for c in net.calls)
    # (1 + w) s_y - w s_null with s = -x + 0.1 y: -x + 0.1 ((1 + w) y - w null)
    x, t = torch.randn(n, 2, dtype=torch.float64), torch.full((n,), 0.5, dtype=torch.float64)
    out = cfg_score(CountingScore(), 2.0, 3)(x, t, y=y)
    assert torch.allclose(out, -x + 0.1 * (3 * y - 2 * 3).double()[:, None])


def test_per_sample_conditioning_is_doubled_with_the_batch():
    seen = {}

    def score(x, t, y, mask, scale, extra=None):
        seen.update(x=x.shape[0], mask=mask.shape[0], scale=tuple(scale.shape), extra=extra)
        return -x * mask[:, None] * scale

    x, t, y = torch.randn(5, 2), torch.full((5,), 0.3), torch.zeros(5, dtype=torch.long)
    scale = torch.linspace(0.5, 1.5, 5)[:, None]
    out = cfg_score(score, 1.0, 2)(x, t, y=y, mask=torch.ones(5), scale=scale, extra=None)
    assert seen == {"x": 10, "mask": 10, "scale": (10, 1), "extra": None} and torch.allclose(out, -x * scale)


# ----------------------------------------------------------------------------- bad input


def test_bad_labels_and_scales_are_refused_before_any_network_call():
    sde, net = make_sdes()["vp"], CountingScore()
    for bad, shown in ((torch.tensor([0, 3, 1, 0]), "y[1] = 3"), (torch.tensor([0, -1, 1, 0]), "y[1] = -1")):
        message = r"y must be integer class labels in \[0, 3\).*null label 3.*" + re.escape(shown)
        with pytest.raises(ValueError, match=message):
            samplers.dpmpp_2m_sample(sde, cfg_score(net, 1.0, 3), (4, 2), steps=5, cond={"y": bad})
    with pytest.raises(ValueError, match=r"y must be .*\[0, 3\).*torch.float32"):
        cfg_score(net, 1.0, 3)(torch.zeros(4, 2), torch.ones(4), y=torch.zeros(4))
    with pytest.raises(ValueError, match=r"y must be .*shape \[4\].*got shape \(3,\)"):
        cfg_score(net, 1.0, 3)(torch.zeros(4, 2), torch.ones(4), y=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="y is required"):
        samplers.pc_sample(sde, cfg_score(net, 1.0, 3), (4, 2), steps=5)
    for w in (-0.5, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match=rf"guidance_scale must be a finite number >= 0, got {w!r}"):
            cfg_score(net, w, 3)
    with pytest.raises(ValueError, match="null_label must be an int >= 1"):
        cfg_score(net, 1.0, 0)
    with pytest.raises(ValueError, match=r"scale must be a finite number >= 0, got -1"):
        classifier_guided_score(net, exact_classifier(MIX2, sde), -1)
    # classifier guidance: K from the argument (checked before both networks) or from the logits
    classifier_calls = []

    def classifier(x, t):
        classifier_calls.append(1)
        return torch.zeros(x.shape[0], 2, dtype=x.dtype) + x.sum()

    for K in (2, None):
        fn = classifier_guided_score(lambda x, t: net(x, t, torch.zeros(len(x))), classifier, 1.0, num_classes=K)
        with pytest.raises(ValueError, match=r"y must be integer class labels in \[0, 2\).*y\[0\] = 2"):
            samplers.ddim_sample(sde, fn, (4, 2), steps=5, cond={"y": torch.tensor([2, 0, 0, 1])})
        assert len(classifier_calls) == (0 if K == 2 else 1)
    assert not net.calls


def test_an_unconditional_network_in_cfg_is_refused_by_name():
    def score(x, t):
        return -x

    with pytest.raises(ValueError, match=r"classifier-free guidance needs a class-conditional score_fn, but score "
                                         r"takes no conditioning \(no y\)"):
        cfg_score(score, 1.0, 2)
