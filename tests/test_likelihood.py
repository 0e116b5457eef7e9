"""Likelihood by the probability-flow ODE against closed-form Gaussian-mixture densities."""
import math

import pytest
import torch

import likelihood
import sde_lib
from sde_lib.analytic import GaussianMixture
from tests.helpers import LIKELIHOOD_EPS as EPS
from tests.helpers import exact_check, make_sdes, random_mixture

@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("dim, n", [(2, 100), (16, 32)])
def test_exact_divergence_matches_analytic(sde_name, dim, n):
    sde, gm = make_sdes()[sde_name], random_mixture(dim)
    x = gm.sample(n, torch.Generator().manual_seed(0)).double()
    err, _, nfe = exact_check(sde, gm, x)
    assert err.abs().max() < 5e-3, f"max |error| {err.abs().max():.2e} bits/dim"
    assert abs(err.mean()) < 5e-4


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_model_likelihood_with_its_prior(sde_name):
    """End to end, with the model's own prior: a centred mixture, whose p_T is nearly the prior."""
    sde = make_sdes()[sde_name]
    gm = GaussianMixture([0.5, 0.5], [[-1.0] * 4, [1.0] * 4], [0.3, 0.2])
    x = gm.sample(64, torch.Generator().manual_seed(0)).double()
    logp, _, _ = likelihood.log_likelihood(sde, gm.score_fn(sde), x, eps=EPS)
    err = (logp - gm.log_prob(x, sde, torch.tensor(EPS))) / (4 * math.log(2))
    assert err.abs().max() < 5e-3


def test_tighter_tolerance_converges():
    sde, gm = sde_lib.VPSDE(), random_mixture(2)
    x = gm.sample(50, torch.Generator().manual_seed(1)).double()
    err, _, _ = exact_check(sde, gm, x, rtol=1e-8, atol=1e-8)
    assert err.abs().max() < 1e-5


@pytest.mark.parametrize("divergence, sde_name", [("rademacher", "vp"), ("gaussian", "vp"), ("rademacher", "ve")])
def test_stochastic_estimators_are_unbiased(divergence, sde_name):
    sde, gm = make_sdes()[sde_name], random_mixture(8)
    x = gm.sample(400, torch.Generator().manual_seed(2))
    err, _, _ = exact_check(sde, gm, x, divergence=divergence, seed=0)
    se = err.std() / math.sqrt(len(err))
    assert err.std() > 1e-3  # the estimator is noisy...
    assert abs(err.mean()) < 3 * se + 1e-3  # ...and unbiased


def test_more_probes_less_variance():
    sde, gm = sde_lib.VPSDE(), random_mixture(8)
    x = gm.sample(200, torch.Generator().manual_seed(2))
    e1, _, _ = exact_check(sde, gm, x, divergence="rademacher", seed=0)
    e8, _, _ = exact_check(sde, gm, x, divergence="rademacher", n_probes=8, seed=0)
    assert e8.std() < 0.5 * e1.std()


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_encode_decode_roundtrip(sde_name):
    sde, gm = make_sdes()[sde_name], random_mixture(2)
    x = gm.sample(64, torch.Generator().manual_seed(3))
    z = likelihood.encode(sde, gm.score_fn(sde), x)
    assert z.std() > 0.3 * sde.prior_std  # z is a latent, not x
    x_back = likelihood.decode(sde, gm.score_fn(sde), z)
    assert (x_back - x).abs().max() < 1e-3


def test_bits_per_dim_of_dequantized_data():
    """bpd = -(log p_x(x) + D log a) / (D ln 2) + log2(256) with x = 2 (k + u)/256 - 1."""
    sde = sde_lib.VPSDE()
    gm = GaussianMixture([1.0], torch.zeros(1, 6), [0.4])
    k = torch.randint(0, 256, (16, 6), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    bpd, z, nfe = likelihood.bits_per_dim(sde, gm.score_fn(sde), k, seed=5, dtype=torch.float64, eps=EPS)
    u = torch.rand(k.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x = 2 * (k + u) / 256 - 1
    expected = -(gm.log_prob(x, sde, torch.tensor(EPS)) + 6 * math.log(2)) / (6 * math.log(2)) + 8
    assert (bpd - expected).abs().max() < 5e-3
    # Not centred: x = y in [0, 1], no Jacobian term.
    bpd01, _, _ = likelihood.bits_per_dim(sde, gm.score_fn(sde), k, seed=5, centered=False,
                                          dtype=torch.float64, eps=EPS)
    expected01 = -gm.log_prob((k + u) / 256, sde, torch.tensor(EPS)) / (6 * math.log(2)) + 8
    assert (bpd01 - expected01).abs().max() < 5e-3


def test_bad_arguments():
    sde, gm = sde_lib.VPSDE(), random_mixture(2)
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="divergence must be one of"):
        likelihood.log_likelihood(sde, gm.score_fn(sde), x, divergence="skilling")
    with pytest.raises(ValueError, match="eps must lie in"):
        likelihood.log_likelihood(sde, gm.score_fn(sde), x, eps=0.0)
    with pytest.raises(ValueError, match="n_probes"):
        likelihood.log_likelihood(sde, gm.score_fn(sde), x, divergence="gaussian", n_probes=0)
    with pytest.raises(ValueError, match=r"k must lie in \{0, ..., 255\}"):
        likelihood.bits_per_dim(sde, gm.score_fn(sde), torch.tensor([[0, 256]]))
