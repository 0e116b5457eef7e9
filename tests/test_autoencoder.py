"""The autoencoders of latent diffusion against known answers: the diagonal Gaussian against
torch.distributions, the decoder's discretised likelihood against high-precision CDFs, a linear KL autoencoder
against PCA, the vector quantiser against hand computations, and the GAN pieces against their formulas."""
import math

import mpmath
import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from models.autoencoder import (AutoencoderKL, DiagonalGaussian, PointAutoencoderKL, discretized_gaussian_log_prob,
                                kl_autoencoder_loss, latent_scale)
from models.discriminator import PatchDiscriminator, adaptive_weight, adopt_weight, generator_loss, hinge_d_loss
from models.vq import VectorQuantizer, VQAutoencoder, vq_autoencoder_loss

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _small_ae(**kw):
    args = dict(num_channels=1, image_size=8, nf=8, ch_mult=(1, 2), num_res_blocks=1, latent_channels=3)
    args.update(kw)
    torch.manual_seed(0)
    return AutoencoderKL(**args).double()


# ----------------------------------------------------------------------------- the diagonal Gaussian

def test_diagonal_gaussian_matches_torch_distributions():
    g = _gen(0)
    mean = torch.randn(3, 2, 4, 4, generator=g, dtype=F64)
    logvar = torch.randn(3, 2, 4, 4, generator=g, dtype=F64) * 2
    q = DiagonalGaussian(mean, logvar)
    ref = Independent(Normal(mean, torch.exp(0.5 * logvar)), 3)
    prior = Independent(Normal(torch.zeros_like(mean), torch.ones_like(mean)), 3)
    z = torch.randn(3, 2, 4, 4, generator=g, dtype=F64)
    torch.testing.assert_close(q.kl(), kl_divergence(ref, prior), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.log_prob(z), ref.log_prob(z), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.entropy(), ref.entropy(), rtol=1e-12, atol=1e-12)
    assert q.kl().shape == (3,)


def test_diagonal_gaussian_clamps_logvar_and_samples_from_the_cpu_generator():
    mean = torch.tensor([[0.5, -1.0, 2.0]], dtype=F64)
    q = DiagonalGaussian(mean, torch.tensor([[-50.0, 0.3, 30.0]], dtype=F64))
    torch.testing.assert_close(q.logvar, torch.tensor([[-30.0, 0.3, 20.0]], dtype=F64), rtol=0, atol=0)
    torch.testing.assert_close(q.std ** 2, q.var, rtol=1e-14, atol=0)
    e = torch.randn(1, 3, generator=_gen(7), dtype=F64)
    torch.testing.assert_close(q.sample(_gen(7)), mean + q.std * e, rtol=0, atol=0)
    assert q.mode() is mean
    with pytest.raises(ValueError, match="one shape"):
        DiagonalGaussian(mean, torch.zeros(1, 2, dtype=F64))


# ----------------------------------------------------------------------------- the decoder's likelihood

def _mp_log_mass(a, b):
    """log(Phi(b) - Phi(a)) in 60-digit arithmetic."""
    mpmath.mp.dps = 60
    phi = lambda u: mpmath.ncdf(mpmath.mpf(u)) if math.isfinite(u) else (mpmath.mpf(1) if u > 0 else mpmath.mpf(0))
    return float(mpmath.log(phi(b) - phi(a)))


@pytest.mark.parametrize("level, mean, log_scale", [
    (3, 0.1, -1.0),     # an interior bin near the mean
    (5, -1.0, -3.0),    # far up the right tail: z ~ 27, the masses ~ exp(-370)
    (1, 0.9, -3.5),     # far down the left tail
    (0, 0.3, -2.0),     # the first bin reaches to -inf
    (6, 2.5, -0.5),     # the last bin reaches to +inf, the mean beyond the data range
])
def test_discretized_log_prob_equals_high_precision_cdf_difference(level, mean, log_scale):
    n_bins, lo, hi = 7, -1.0, 1.0
    d = (hi - lo) / (n_bins - 1)
    x = torch.tensor([[lo + level * d]], dtype=F64)
    got = discretized_gaussian_log_prob(x, torch.tensor([[mean]], dtype=F64), torch.tensor(log_scale, dtype=F64),
                                        n_bins, (lo, hi))
    s = math.exp(log_scale)
    a = -math.inf if level == 0 else (lo + level * d - d / 2 - mean) / s
    b = math.inf if level == n_bins - 1 else (lo + level * d + d / 2 - mean) / s
    expected = _mp_log_mass(a, b)
    assert math.isfinite(got.item())
    assert abs(got.item() - expected) <= 1e-11 * max(1.0, abs(expected)), (got.item(), expected)


def test_discretized_masses_sum_to_one_and_tiny_bins_give_the_density():
    n_bins = 5
    levels = torch.linspace(-1, 1, n_bins, dtype=F64)
    for mean, log_scale in ((0.2, -1.0), (-3.0, 0.5), (0.0, -4.0)):
        logp = torch.stack([discretized_gaussian_log_prob(v.reshape(1, 1), torch.full((1, 1), mean, dtype=F64),
                                                          torch.tensor(log_scale, dtype=F64), n_bins) for v in levels])
        assert abs(torch.logsumexp(logp.flatten(), 0).item()) < 1e-12
    # 2^16 bins of width d: log P = log N(x; mean, s^2) + log d + O(d^2 / s^2) per pixel.
    n_bins, g = 2 ** 16, _gen(1)
    d = 2.0 / (n_bins - 1)
    x = (torch.randint(1, n_bins - 1, (2, 3), generator=g).to(F64)) * d - 1.0
    mean, log_scale = torch.randn(2, 3, generator=g, dtype=F64) * 0.3, torch.tensor(-1.2, dtype=F64)
    dense = Normal(mean, log_scale.exp()).log_prob(x).sum(1) + 3 * math.log(d)
    torch.testing.assert_close(discretized_gaussian_log_prob(x, mean, log_scale, n_bins), dense, rtol=1e-8, atol=0)


def test_discretized_edge_bins_have_the_analytic_gradient():
    """log P(first bin) = log Phi(u), u = (x_0 + d/2 - mean) / s: d/dmean = -phi(u) / (Phi(u) s)."""
    mean = torch.tensor([[0.1, -0.4]], dtype=F64, requires_grad=True)
    log_scale = torch.tensor(-0.7, dtype=F64, requires_grad=True)
    x = torch.tensor([[-1.0, 1.0]], dtype=F64)          # the first and the last level of 256
    discretized_gaussian_log_prob(x, mean, log_scale).sum().backward()
    s, d = math.exp(-0.7), 2.0 / 255
    u = torch.tensor([(-1.0 + d / 2 - 0.1) / s, (1.0 - d / 2 + 0.4) / s], dtype=F64)
    ratio = torch.exp(Normal(0.0, 1.0).log_prob(u) - torch.special.log_ndtr(torch.tensor([1.0, -1.0]) * u))
    torch.testing.assert_close(mean.grad[0], torch.stack([-ratio[0], ratio[1]]) / s, rtol=1e-10, atol=0)
    torch.testing.assert_close(log_scale.grad, -(ratio * u * torch.tensor([1.0, -1.0])).sum(), rtol=1e-10, atol=0)


def test_discretized_log_prob_rejects_off_grid_data_and_bad_grids():
    mean, ls = torch.zeros(1, 2, dtype=F64), torch.tensor(0.0, dtype=F64)
    with pytest.raises(ValueError, match="grid of n_bins = 256"):
        discretized_gaussian_log_prob(torch.tensor([[0.0, 0.5]], dtype=F64), mean, ls)
    with pytest.raises(ValueError, match="grid"):
        discretized_gaussian_log_prob(torch.tensor([[0.0, 1.5]], dtype=F64), mean, ls, 3)
    with pytest.raises(ValueError, match="n_bins"):
        discretized_gaussian_log_prob(mean, mean, ls, 1)
    with pytest.raises(ValueError, match="data_range"):
        discretized_gaussian_log_prob(mean, mean, ls, 3, (1.0, -1.0))


def test_decoder_log_prob_is_the_gaussian_around_the_decoded_mean():
    ae = _small_ae(init_log_scale=-1.3)
    g = _gen(2)
    z = torch.randn(2, 3, 4, 4, generator=g, dtype=F64)
    x = torch.randn(2, 1, 8, 8, generator=g, dtype=F64)
    with torch.no_grad():
        ref = Normal(ae.decode(z), ae.log_scale.exp()).log_prob(x).flatten(1).sum(1)
        torch.testing.assert_close(ae.decoder_log_prob(x, z), ref, rtol=1e-12, atol=0)
        k = torch.randint(0, 256, (2, 1, 8, 8), generator=g).to(F64)
        got = ae.decoder_log_prob(k / 127.5 - 1, z, kind="discretized", data_range=(-1, 1))
        torch.testing.assert_close(got, discretized_gaussian_log_prob(k / 255.0, (ae.decode(z) + 1) / 2,
                                                                      ae.log_scale - math.log(2), 256, (0, 1)),
                                   rtol=1e-12, atol=0)   # the same bins in [0, 1]: the grid's scale is honoured
    with pytest.raises(ValueError, match="kind"):
        ae.decoder_log_prob(x, z, kind="laplace")


# ----------------------------------------------------------------------------- the convolutional autoencoder

@pytest.mark.parametrize("ch_mult, num_channels", [((1,), 1), ((1, 2), 3), ((1, 2, 2), 1), ((1, 1, 2, 2), 2)])
def test_autoencoder_kl_shapes_and_factor(ch_mult, num_channels):
    ae = _small_ae(num_channels=num_channels, image_size=16, ch_mult=ch_mult, latent_channels=3)
    f = 2 ** (len(ch_mult) - 1)
    assert ae.factor == f and ae.latent_shape((num_channels, 16, 8)) == (3, 16 // f, 8 // f)
    x = torch.randn(2, num_channels, 16, 8, generator=_gen(0), dtype=F64)
    x_hat, q = ae(x, sample=False)
    assert q.mean.shape == (2,) + ae.latent_shape((num_channels, 16, 8)) and x_hat.shape == x.shape
    assert ae.last_layer() is ae.decoder.conv_out.weight and ae.last_layer().shape[0] == num_channels


def test_autoencoder_kl_forward_decodes_the_mean_or_a_seeded_sample():
    ae = _small_ae()
    x = torch.randn(2, 1, 8, 8, generator=_gen(0), dtype=F64)
    with torch.no_grad():
        q = ae.encode(x)
        torch.testing.assert_close(ae(x, sample=False)[0], ae.decode(q.mean), rtol=0, atol=0)
        e = torch.randn(q.mean.shape, generator=_gen(5), dtype=F64)
        torch.testing.assert_close(ae(x, generator=_gen(5))[0], ae.decode(q.mean + q.std * e), rtol=0, atol=0)
    # double_z=False: a learned per-channel logvar, the same for every x and position
    ae = _small_ae(double_z=False)
    with torch.no_grad():
        ae.logvar.copy_(torch.tensor([-1.0, 0.0, 2.0]))
    q = ae.encode(x)
    assert q.mean.shape == (2, 3, 4, 4)
    expected = torch.tensor([-1.0, 0.0, 2.0], dtype=F64)[None, :, None, None].expand(2, 3, 4, 4)
    torch.testing.assert_close(q.logvar, expected, rtol=0, atol=0)


def test_autoencoder_kl_rejects_bad_arguments():
    with pytest.raises(ValueError, match="image_size = 12 must be divisible .* f = .* = 8"):
        AutoencoderKL(num_channels=1, image_size=12, nf=8, ch_mult=(1, 1, 2, 2))
    with pytest.raises(ValueError, match="ch_mult"):
        AutoencoderKL(ch_mult=())
    with pytest.raises(ValueError, match="nf \\* ch_mult = 3 \\* 1"):
        AutoencoderKL(nf=3)
    with pytest.raises(ValueError, match="num_channels"):
        AutoencoderKL(num_channels=0)
    ae = _small_ae()
    with pytest.raises(ValueError, match=r"x must be \[B, 1, H, W\]"):
        ae.encode(torch.zeros(1, 1, 9, 8, dtype=F64))
    with pytest.raises(ValueError, match="image_shape"):
        ae.latent_shape((3, 8, 8))


# ----------------------------------------------------------------------------- point data: the PCA known answer

LAMBDA = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.25, 0.1], dtype=F64)


@pytest.mark.parametrize("k", [2, 1])
def test_linear_kl_autoencoder_reaches_the_pca_error(k):
    """x ~ N(0, diag(lambda)): a linear autoencoder with k latents, l2 loss and kl_weight -> 0 learns the top-k
    principal subspace, whose error is sum_{i > k} lambda_i (1.85 for k = 2, 3.85 for k = 1: fewer latents
    cannot reach the k = 2 answer)."""
    torch.manual_seed(0)
    g = _gen(1)
    ae = PointAutoencoderKL(dim=6, latent_dim=k, hidden=()).double()
    x = torch.randn(2048, 6, generator=g, dtype=F64) * LAMBDA.sqrt()
    opt = torch.optim.Adam(ae.parameters(), lr=3e-2)
    for _ in range(250):
        loss, _ = kl_autoencoder_loss(ae, x, g, kl_weight=1e-8, rec="l2")
        opt.zero_grad()
        loss.backward()
        opt.step()
    x_test = torch.randn(100_000, 6, generator=g, dtype=F64) * LAMBDA.sqrt()
    with torch.no_grad():
        err = ((x_test - ae(x_test, sample=False)[0]) ** 2).sum(1).mean().item()
    pca = LAMBDA[k:].sum().item()
    assert abs(err - pca) < 0.02 * pca, (err, pca)
    w = ae.last_layer().detach()                      # [6, k]: its columns span the top-k axes
    assert (w[k:].norm() / w.norm()).item() < 0.1      # sampling noise of 2048 points: ~0.03


def test_point_autoencoder_shapes_and_checks():
    ae = PointAutoencoderKL(dim=5, latent_dim=2, hidden=(16, 8)).double()
    x = torch.randn(4, 5, generator=_gen(0), dtype=F64)
    x_hat, q = ae(x, generator=_gen(1))
    assert ae.latent_shape((5,)) == (2,) and q.mean.shape == (4, 2) and q.logvar.shape == (4, 2)
    assert x_hat.shape == (4, 5) and ae.last_layer().shape == (5, 16)
    with pytest.raises(ValueError, match=r"x must be \[B, 5\]"):
        ae.encode(torch.zeros(4, 3, dtype=F64))
    with pytest.raises(ValueError, match="hidden"):
        PointAutoencoderKL(hidden=(4, 0))
    with pytest.raises(ValueError, match="data_shape"):
        ae.latent_shape((4,))


# ----------------------------------------------------------------------------- the loss, the latent scale

@pytest.mark.parametrize("rec", ["l1", "l2", "nll"])
def test_kl_autoencoder_loss_equals_its_formula(rec):
    torch.manual_seed(0)
    ae = PointAutoencoderKL(dim=4, latent_dim=2, hidden=(8,), init_log_scale=-0.4).double()
    x = torch.randn(5, 4, generator=_gen(0), dtype=F64)
    loss, logs = kl_autoencoder_loss(ae, x, _gen(3), kl_weight=0.1, rec=rec)
    q = ae.encode(x)
    x_hat = ae.decode(q.mean + q.std * torch.randn(5, 2, generator=_gen(3), dtype=F64))
    r = {"l1": (x - x_hat).abs().sum(1), "l2": ((x - x_hat) ** 2).sum(1),
         "nll": -Normal(x_hat, ae.log_scale.exp()).log_prob(x).sum(1)}[rec]
    kl = 0.5 * (q.mean ** 2 + q.var - 1 - q.logvar).sum(1)
    torch.testing.assert_close(loss, (r + 0.1 * kl).mean(), rtol=1e-12, atol=0)
    assert logs["rec"] == pytest.approx(r.mean().item(), rel=1e-12)
    assert logs["kl"] == pytest.approx(kl.mean().item(), rel=1e-12)
    total, _ = kl_autoencoder_loss(ae, x, _gen(3), kl_weight=0.1, rec=rec, reduce="sum")
    torch.testing.assert_close(total, 5 * loss, rtol=1e-12, atol=0)
    *_, recon = kl_autoencoder_loss(ae, x, _gen(3), rec=rec, return_recon=True)
    torch.testing.assert_close(recon, x_hat, rtol=0, atol=0)        # the same draw: the reconstruction used


def test_only_the_nll_loss_trains_log_scale_and_bad_options_are_refused():
    ae = PointAutoencoderKL(dim=3, latent_dim=1, hidden=()).double()
    x = torch.randn(8, 3, generator=_gen(0), dtype=F64)
    for rec, moves in (("l2", False), ("nll", True)):
        ae.zero_grad()
        kl_autoencoder_loss(ae, x, _gen(1), rec=rec)[0].backward()
        assert (ae.log_scale.grad is not None and ae.log_scale.grad.abs().item() > 0) == moves
    with pytest.raises(ValueError, match="rec must be one of"):
        kl_autoencoder_loss(ae, x, rec="l3")
    with pytest.raises(ValueError, match="reduce"):
        kl_autoencoder_loss(ae, x, reduce="max")


def test_latent_scale_gives_unit_std():
    z = torch.randn(16, 4, 8, 8, generator=_gen(0), dtype=F64) * 5.3 + 0.7
    s = latent_scale(z)
    assert abs((z * s).std().item() - 1.0) < 1e-12
    assert s == pytest.approx(1 / z.flatten().std().item(), rel=1e-14)
    with pytest.raises(ValueError, match="std > 0"):
        latent_scale(torch.ones(4, 3))


# ----------------------------------------------------------------------------- vector quantisation

def test_a_codebook_of_the_data_reconstructs_them_exactly():
    vq = VectorQuantizer(8, 3).double()
    codes = torch.randn(8, 3, generator=_gen(0), dtype=F64)
    with torch.no_grad():
        vq.codebook.copy_(codes)
    idx = torch.randint(0, 8, (2, 2, 5), generator=_gen(1))
    z_e = codes[idx].movedim(-1, 1)                                  # [2, 3, 2, 5]
    z_q, loss, indices = vq(z_e)
    assert torch.equal(indices, idx) and torch.equal(z_q, z_e) and loss.item() == 0.0
    z_q, _, indices = vq(codes[[3, 1, 3]])                            # points [B, D]
    assert indices.tolist() == [3, 1, 3] and torch.equal(z_q, codes[[3, 1, 3]])
    assert torch.equal(vq.embed(idx), z_e)


def test_straight_through_gradient_is_the_identity():
    vq = VectorQuantizer(6, 4).double()
    z_e = torch.randn(3, 4, 2, 2, generator=_gen(0), dtype=F64, requires_grad=True)
    upstream = torch.randn(3, 4, 2, 2, generator=_gen(1), dtype=F64)
    z_q, _, indices = vq(z_e)
    (grad,) = torch.autograd.grad(z_q, z_e, upstream)
    assert torch.equal(grad, upstream)
    torch.testing.assert_close(z_q, vq.embed(indices), rtol=0, atol=1e-15)


@pytest.mark.parametrize("beta_on", ["encoder", "codebook"])
def test_vq_loss_and_its_gradients_follow_the_formula(beta_on):
    """loss = c_cb mean(sg(z) - e)^2 + c_enc mean(z - sg(e))^2: its value is (c_cb + c_enc) mean(z - e)^2, its
    gradient c_enc 2 (z - e) / n on z and c_cb 2 (e - z) / n summed over a code's positions on the code."""
    beta, g = 0.3, _gen(0)
    vq = VectorQuantizer(5, 2, beta, beta_on=beta_on).double()
    with torch.no_grad():
        vq.codebook.copy_(torch.randn(5, 2, generator=g, dtype=F64))
    z_e = torch.randn(4, 2, 3, generator=g, dtype=F64, requires_grad=True)
    _, loss, indices = vq(z_e)
    flat = z_e.detach().movedim(1, -1).reshape(-1, 2)
    nearest = torch.cdist(flat, vq.codebook.detach()).argmin(1)
    assert torch.equal(indices.flatten(), nearest)
    diff, n = flat - vq.codebook.detach()[nearest], flat.numel()
    c_enc, c_cb = (beta, 1.0) if beta_on == "encoder" else (1.0, beta)
    torch.testing.assert_close(loss, (c_enc + c_cb) * (diff ** 2).mean(), rtol=1e-13, atol=0)
    g_z, g_cb = torch.autograd.grad(loss, (z_e, vq.codebook))
    torch.testing.assert_close(g_z.movedim(1, -1).reshape(-1, 2), c_enc * 2 * diff / n, rtol=1e-13, atol=0)
    expected_cb = torch.zeros(5, 2, dtype=F64).index_add_(0, nearest, -c_cb * 2 * diff / n)
    torch.testing.assert_close(g_cb, expected_cb, rtol=1e-13, atol=1e-18)


def test_ema_codebook_update_equals_a_hand_computation():
    vq = VectorQuantizer(3, 2, 0.25, ema=True, decay=0.5, eps=0.1).double()
    old = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=F64)
    vq.codebook.copy_(old)
    vq.ema_sum.copy_(old)
    z = torch.tensor([[0.1, 0.1], [0.9, 0.2], [1.1, -0.2], [0.2, 0.8]], dtype=F64)
    vq.eval()
    vq(z)
    assert torch.equal(vq.codebook, old)                              # no update outside training
    vq.train()
    z_q, loss, indices = vq(z)
    assert indices.tolist() == [0, 1, 1, 2] and torch.equal(z_q, old[[0, 1, 1, 2]])   # quantised by the old codes
    # loss: beta mean(z - e)^2 = 0.25 * 0.2 / 8
    assert loss.item() == pytest.approx(0.00625, rel=1e-13)
    # N = 0.5 [1, 1, 1] + 0.5 [1, 2, 1] = [1, 1.5, 1], sum 3.5; S = 0.5 old + 0.5 [[.1, .1], [2, 0], [.2, .8]];
    # N~ = (N + 0.1) / (3.5 + 0.3) * 3.5
    n_smooth = torch.tensor([1.1, 1.6, 1.1], dtype=F64) * 3.5 / 3.8
    s = torch.tensor([[0.05, 0.05], [1.5, 0.0], [0.1, 0.9]], dtype=F64)
    torch.testing.assert_close(vq.ema_count, torch.tensor([1.0, 1.5, 1.0], dtype=F64), rtol=1e-15, atol=0)
    torch.testing.assert_close(vq.codebook, s / n_smooth[:, None], rtol=1e-14, atol=0)
    assert not any(p.requires_grad for p in vq.parameters())          # the codebook is a buffer


def test_codebook_usage_and_perplexity():
    vq = VectorQuantizer(4, 2)
    assert vq.usage(torch.tensor([0, 0, 1, 1])) == pytest.approx({"used_fraction": 0.5, "perplexity": 2.0}, rel=1e-14)
    uniform = vq.usage(torch.tensor([[0, 1], [2, 3]]))
    assert uniform == pytest.approx({"used_fraction": 1.0, "perplexity": 4.0}, rel=1e-14)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert vq.usage(torch.tensor([2, 2, 2, 0]))["perplexity"] == pytest.approx(math.exp(h), rel=1e-14)
    with pytest.raises(ValueError, match="beta_on"):
        VectorQuantizer(4, 2, beta_on="codebook", ema=True)


def test_vq_autoencoder_quantises_its_encoding_and_loss_follows():
    torch.manual_seed(0)
    ae = VQAutoencoder(num_channels=2, image_size=8, nf=8, ch_mult=(1, 2), n_codes=6, code_dim=3).double()
    x = torch.randn(2, 2, 8, 8, generator=_gen(0), dtype=F64)
    x_hat, vq_loss, indices = ae(x)
    z_q, loss_again, idx_again = ae.quantize(ae.encode(x))
    assert ae.factor == 2 and ae.latent_shape((2, 8, 8)) == (3, 4, 4) and indices.shape == (2, 4, 4)
    assert torch.equal(indices, idx_again) and torch.equal(x_hat, ae.decode(z_q))
    torch.testing.assert_close(z_q, ae.quantizer.embed(indices), rtol=0, atol=1e-15)
    loss, logs = vq_autoencoder_loss(ae, x, rec="l2", codebook_weight=0.7)
    torch.testing.assert_close(loss, ((x - x_hat) ** 2).mean() + 0.7 * vq_loss, rtol=1e-12, atol=0)
    assert logs["used_fraction"] == ae.quantizer.usage(indices)["used_fraction"]
    assert torch.equal(vq_autoencoder_loss(ae, x, return_recon=True)[2], x_hat)
    assert ae.last_layer() is ae.decoder.conv_out.weight


# ----------------------------------------------------------------------------- the adversarial pieces

def test_patch_discriminator_map_size_and_per_sample_logits():
    torch.manual_seed(0)
    disc = PatchDiscriminator(3, nf=16, n_layers=3).double()
    x = torch.randn(3, 3, 32, 32, generator=_gen(0), dtype=F64)
    out = disc(x)
    assert out.shape == (3, 1, 2, 2) and disc.output_size(64) == 6 and disc.output_size(256) == 30
    assert disc(torch.zeros(1, 3, 64, 40, dtype=F64)).shape == (1, 1, 6, 3)
    # GroupNorm: a sample's logits do not depend on the rest of its batch, in training mode too
    torch.testing.assert_close(out[1:2], disc(x[1:2]), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="H, W >= 24"):
        disc(torch.zeros(1, 3, 16, 16, dtype=F64))


def test_hinge_and_generator_losses():
    real = torch.tensor([2.0, 0.5, -1.0], dtype=F64)
    fake = torch.tensor([-2.0, 0.0, 1.0], dtype=F64)
    # relu(1 - real) = [0, .5, 2], mean 5/6; relu(1 + fake) = [0, 1, 2], mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1), rel=1e-15)
    assert generator_loss(fake).item() == pytest.approx(1 / 3, rel=1e-15)


def test_adaptive_weight_equals_the_gradient_norm_ratio():
    """W [1, 2], y = W x: rec = (y - 1)^2 has gradient 2 (y - 1) x, g = -3 y has -3 x."""
    w = torch.tensor([[0.5, -2.0]], dtype=F64, requires_grad=True)
    x = torch.tensor([3.0, 4.0], dtype=F64)                  # ||x|| = 5, y = -6.5
    y = (w @ x).sum()
    weight = adaptive_weight((y - 1) ** 2, -3 * y, w, delta=1e-4)
    assert weight.item() == pytest.approx(2 * 7.5 * 5 / (3 * 5 + 1e-4), rel=1e-14) and not weight.requires_grad
    assert adaptive_weight((y - 1) ** 2, -3 * y, w, max_weight=0.25).item() == 0.25
    assert adopt_weight(0.8, 9, 10) == 0.0 and adopt_weight(0.8, 10, 10) == 0.8
