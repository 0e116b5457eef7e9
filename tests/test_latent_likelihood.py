"""Likelihoods of latent diffusion against an orthogonal "autoencoder" of Gaussian data, where every density
is known in closed form.

Data x ~ N(0, Sigma) in d = 4 (Sigma not diagonal), latents z = c A x with A orthogonal, so z ~ N(0, c^2 A Sigma
A^T) and log p_z(z) = log p_x(x) - d log c; the score model of w = s z is the exact Gaussian score. The VP SDE
here runs to beta_max = 40, where p_T = N(0, I + alpha_T^2 (Cov - I)) with alpha_T^2 = 2e-9: the model's prior
N(0, I) is then exact to ~1e-9 and the ODE's log-likelihood can be compared with exact densities unaltered.
"""
import math

import pytest
import torch

import likelihood
import sde_lib
from sde_lib.analytic import GaussianMixture
from tests.helpers import LIKELIHOOD_EPS as EPS

F64 = torch.float64
D, C = 4, 3.0
SDE = sde_lib.VPSDE(beta_min=0.1, beta_max=40.0)
TOL = dict(rtol=1e-6, atol=1e-6, eps=EPS)

_g = torch.Generator().manual_seed(0)
_root = torch.randn(D, D, generator=_g, dtype=F64)
SIGMA = 0.3 * _root @ _root.T + 0.2 * torch.eye(D, dtype=F64)        # eigenvalues 0.22 ... 4.1
A, _ = torch.linalg.qr(torch.randn(D, D, generator=_g, dtype=F64))  # orthogonal
PIXELS = GaussianMixture([1.0], torch.zeros(1, D), SIGMA[None])
S_UNIT = 1 / (C * SIGMA.diagonal().mean().sqrt().item())             # 1 / std of the latents


def latent_model(s: float) -> GaussianMixture:
    """The law of w = s z = s c A x: N(0, s^2 c^2 A Sigma A^T)."""
    cov = s ** 2 * C ** 2 * A @ SIGMA @ A.T
    return GaussianMixture([1.0], torch.zeros(1, D), (0.5 * (cov + cov.T))[None])


def exact_latent_cov(s: float) -> torch.Tensor:
    """Cov of z at the likelihood's eps, in z units: (alpha^2 Cov_w + sigma^2 I) / s^2."""
    alpha, sigma = (float(v) for v in SDE.marginal_coeffs(torch.tensor(EPS, dtype=F64)))
    cov_w = latent_model(s).covs[0]
    return (alpha ** 2 * cov_w + sigma ** 2 * torch.eye(D, dtype=F64)) / s ** 2


def pixels(n: int, seed: int) -> torch.Tensor:
    return PIXELS.sample(n, torch.Generator().manual_seed(seed)).double()


def to_bits(nats: torch.Tensor) -> torch.Tensor:
    return nats / (D * math.log(2))


class Posterior:
    """q(z | x) = N(mean, std^2 I). Draws are mean + std e with e ~ N(0, I) from the generator, or, given
    `points` [n, d] (a cubature rule of N(0, I)), e = points[0], points[1], ... in turn."""

    def __init__(self, mean: torch.Tensor, std: float, points=None):
        self.mean, self.std, self.points, self.draws = mean, torch.full_like(mean, std), points, 0

    def sample(self, generator):
        if self.points is None:
            e = torch.randn(self.mean.shape, generator=generator, dtype=F64)
        else:
            e = self.points[self.draws % len(self.points)].expand_as(self.mean)
        self.draws += 1
        return self.mean + self.std * e

    def log_prob(self, z):
        r = (z - self.mean) / self.std
        return -0.5 * (r ** 2).sum(1) - self.std.log().sum(1) - 0.5 * D * math.log(2 * math.pi)


def antithetic_pair() -> torch.Tensor:
    """e and -e [2, d]: the pair's average of a linear function is its expectation, 0."""
    e = torch.ones(D, dtype=F64)
    return torch.stack([e, -e])


def simplex_rule() -> torch.Tensor:
    """The d + 1 vertices [d + 1, d] of a regular simplex with mean 0 and second moment I: their average of
    any quadratic f equals E_{N(0, I)}[f(e)] exactly. The centred unit vectors of R^(d+1), written in an
    orthonormal basis of the plane they span and scaled by sqrt(d + 1)."""
    centred = torch.eye(D + 1, dtype=F64) - 1 / (D + 1)
    basis = torch.linalg.qr(centred)[0][:, :D]  # the first d columns span the centred plane
    return math.sqrt(D + 1) * centred @ basis


def orthogonal_autoencoder(tau: float, points=None):
    """encode(x) = N(c A x, tau^2 I) and the decoder N(A^T z / c, (tau / c)^2 I), for which
    log p(x | z) - log q(z | x) = d log c at every z."""
    def encode(x):
        return Posterior(C * x @ A.T, tau, points)

    def decoder_log_prob(x, z):
        r = (x - z @ A / C) / (tau / C)
        return -0.5 * (r ** 2).sum(1) - D * math.log(tau / C) - 0.5 * D * math.log(2 * math.pi)

    return encode, decoder_log_prob


def test_latent_bits_per_dim_is_the_pixels_plus_log2_c_whatever_the_scale():
    x = pixels(16, 1)
    z = C * x @ A.T
    pixel_bpd = -to_bits(PIXELS.log_prob(x))
    bpds = []
    for s in (0.37, S_UNIT):
        bpd, w_T, nfe = likelihood.latent_bits_per_dim(SDE, latent_model(s).score_fn(SDE), z, scale=s, **TOL)
        assert w_T.shape == z.shape and nfe > 0
        assert (bpd - (pixel_bpd + math.log2(C))).abs().max() < 1e-4  # measured 2e-5
        bpds.append(bpd)
    assert (bpds[0] - bpds[1]).abs().max() < 1e-4  # log p_model(s z) + d log s does not depend on s
    # In nats, log p(z) = log p_x(x) - d log c.
    logp_z, _, _ = likelihood.latent_log_likelihood(SDE, latent_model(0.37).score_fn(SDE), z, scale=0.37, **TOL)
    assert to_bits(logp_z - (PIXELS.log_prob(x) - D * math.log(C))).abs().max() < 1e-4


def test_the_bound_of_a_near_deterministic_posterior_is_the_pixel_likelihood():
    x = pixels(16, 2)
    encode, decoder_log_prob = orthogonal_autoencoder(1e-4, antithetic_pair())
    # The pair's term linear in tau cancels; the quadratic one is ~1e-8 nats.
    nll, parts = likelihood.image_nll_bound(SDE, latent_model(S_UNIT).score_fn(SDE), encode, decoder_log_prob,
                                            x, scale=S_UNIT, n_samples=2, **TOL)
    assert to_bits(-nll - PIXELS.log_prob(x)).abs().max() < 1e-4  # measured 3e-6
    torch.testing.assert_close(parts["reconstruction"] + parts["entropy"], torch.full_like(nll, D * math.log(C)),
                               rtol=0, atol=1e-9)
    torch.testing.assert_close(nll, -(parts["reconstruction"] + parts["prior"] + parts["entropy"]), rtol=0, atol=0)
    assert parts["nfe"] > 0


def test_the_bound_of_a_wide_posterior_is_its_closed_form_below_the_likelihood():
    """tau = 0.3: E_q[log p(x|z) + log p_z(z) - log q(z|x)] = log p_z(c A x) - tau^2 / 2 tr(Sigma_z^-1) + d log c,
    with p_z the exact latent density at eps; the simplex's d + 1 draws give that expectation exactly."""
    tau, x = 0.3, pixels(8, 3)
    encode, decoder_log_prob = orthogonal_autoencoder(tau, simplex_rule())
    nll, _ = likelihood.image_nll_bound(SDE, latent_model(S_UNIT).score_fn(SDE), encode, decoder_log_prob, x,
                                        scale=S_UNIT, n_samples=D + 1, **TOL)
    cov_z = exact_latent_cov(S_UNIT)
    p_z = GaussianMixture([1.0], torch.zeros(1, D), cov_z[None])
    closed = p_z.log_prob(C * x @ A.T) - 0.5 * tau ** 2 * torch.linalg.inv(cov_z).trace() + D * math.log(C)
    assert to_bits(-nll - closed).abs().max() < 1e-4  # measured 1e-6; the gap is 0.012 bits/dim
    gap = PIXELS.log_prob(x) - (-nll)                   # Jensen: the bound lies below log p_x(x) ...
    assert (gap > 0.9 * 0.5 * tau ** 2 * torch.linalg.inv(cov_z).trace()).all()  # ... by KL(q || p(z | x))


def test_image_bits_with_the_discretized_decoder_by_hand():
    """4 levels: bpd = -(log P(k | z) + log p_z(z) - log q(z | x)) / (d ln 2) at x = 2 k / 3 - 1, no
    dequantization terms; P(k | z) integrates N(A^T z / c, 0.2^2) over k's bin (the end bins unbounded)."""
    n_bins, tau, sd, seed = 4, 0.3, 0.2, 7
    k = torch.tensor([[0, 1, 2, 3], [3, 3, 0, 1], [2, 0, 1, 1]])
    half = 1 / 3  # half a bin: a / (2 (n_bins - 1))

    def encode(x):
        return Posterior(C * x @ A.T, tau)

    def decoder_log_prob(x, z):
        mean = z @ A / C
        upper = torch.where(x > 1 - half, math.inf, (x + half - mean) / sd)
        lower = torch.where(x < -1 + half, -math.inf, (x - half - mean) / sd)
        return torch.log(torch.special.ndtr(upper) - torch.special.ndtr(lower)).sum(1)

    bpd, parts = likelihood.image_bits_per_dim_bound(
        SDE, latent_model(S_UNIT).score_fn(SDE), encode, decoder_log_prob, k, decoder="discretized",
        n_bins=n_bins, scale=S_UNIT, seed=seed, dtype=F64, **TOL)
    x = 2 * k.double() / 3 - 1
    z = C * x @ A.T + tau * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    p_z = GaussianMixture([1.0], torch.zeros(1, D), exact_latent_cov(S_UNIT)[None])
    bound = decoder_log_prob(x, z) + p_z.log_prob(z) - Posterior(C * x @ A.T, tau).log_prob(z)
    assert (bpd - -to_bits(bound)).abs().max() < 1e-4
    torch.testing.assert_close(parts["reconstruction"], decoder_log_prob(x, z), rtol=0, atol=1e-12)


def test_image_bits_with_the_gaussian_decoder_are_the_pixel_models_bits_per_dim():
    """The same seed dequantizes k to the same x in both; the near-deterministic autoencoder's bound is then
    log p_x(x) and both apply bpd = -(log p_x + D log a) / (D ln 2) + log2(256)."""
    k = torch.randint(0, 256, (12, D), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    encode, decoder_log_prob = orthogonal_autoencoder(1e-6)
    bound_bpd, _ = likelihood.image_bits_per_dim_bound(
        SDE, latent_model(S_UNIT).score_fn(SDE), encode, decoder_log_prob, k, scale=S_UNIT, seed=5, dtype=F64, **TOL)
    pixel_bpd, _, _ = likelihood.bits_per_dim(SDE, PIXELS.score_fn(SDE), k, seed=5, dtype=F64, **TOL)
    assert (bound_bpd - pixel_bpd).abs().max() < 1e-4  # measured 4e-6 (another seed: 9e-3)
    u = torch.rand(k.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    expected = -(PIXELS.log_prob(2 * (k + u) / 256 - 1) + D * math.log(2)) / (D * math.log(2)) + 8
    assert (bound_bpd - expected).abs().max() < 1e-4


def _never(x, t):
    raise AssertionError("a refused argument must not reach the ODE")


def test_bad_arguments_are_refused_by_name():
    x, k = pixels(3, 4), torch.zeros(3, D, dtype=torch.long)
    encode, decoder_log_prob = orthogonal_autoencoder(0.1)

    def bound(**kw):
        return likelihood.image_nll_bound(SDE, _never, kw.pop("encode", encode),
                                          kw.pop("decoder_log_prob", decoder_log_prob), x, **kw)

    for n in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="n_samples must be a positive integer"):
            bound(n_samples=n)
    for s in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"scale must lie in \(0, inf\)"):
            bound(scale=s)
        with pytest.raises(ValueError, match="scale must lie in"):
            likelihood.latent_log_likelihood(SDE, _never, x, scale=s)
    with pytest.raises(TypeError, match="encode must be callable"):
        bound(encode=None)
    with pytest.raises(ValueError, match=r"decoder_log_prob\(x, z\) must return one value per sample"):
        bound(decoder_log_prob=lambda x, z: (x - z) ** 2)
    with pytest.raises(ValueError, match=r"posterior.sample\(generator\) must return 3 latents"):
        bound(encode=lambda x: Posterior(C * x[:2] @ A.T, 0.1))
    with pytest.raises(ValueError, match="z must be a batch"):
        likelihood.latent_bits_per_dim(SDE, _never, torch.zeros(3))

    def image_bound(k, **kw):
        return likelihood.image_bits_per_dim_bound(SDE, _never, encode, decoder_log_prob, k, **kw)

    with pytest.raises(ValueError, match="decoder must be one of"):
        image_bound(k, decoder="bernoulli")
    with pytest.raises(ValueError, match=r"k must lie in \{0, ..., 3\}"):
        image_bound(k + 4, n_bins=4, decoder="discretized")
    with pytest.raises(ValueError, match="n_bins must be an integer >= 2"):
        image_bound(k, n_bins=1)
