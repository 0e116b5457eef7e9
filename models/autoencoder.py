"""The KL-regularised autoencoders of latent diffusion (Rombach et al. 2022): a convolutional encoder and
decoder, the diagonal-Gaussian posterior, a point-data counterpart, the decoder's likelihood and the loss.

    encode: x [B, C, H, W] -> q(z | x) = N(mean, diag exp(logvar)),  z [B, c, H/f, W/f],  f = 2^(len(ch_mult) - 1)
    decode: z -> x_hat [B, C, H, W],   p(x | z) = N(x_hat, exp(2 log_scale) I)
    loss per sample = rec(x, decode(z)) + kl_weight KL(q(z | x) || N(0, I)),   z ~ q(z | x)

A latent diffusion model is then a score model whose data are z * latent_scale(z of the training set).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from models import layers
from sde_lib import checks

Tensor = torch.Tensor
LOGVAR_RANGE = (-30.0, 20.0)  # latent diffusion's clamp: std in [3e-7, 2.2e4]
DECODER_KINDS = ("gaussian", "discretized")
REC_LOSSES = ("l1", "l2", "nll")
_LOG_2PI = math.log(2.0 * math.pi)


def _per_sample_sum(v: Tensor) -> Tensor:
    """[B, ...] -> [B], summed over every non-batch dimension."""
    return v.flatten(1).sum(1)


class DiagonalGaussian:
    """q(z) = N(mean, diag(var)), var = exp(logvar), for mean and logvar [B, ...] of one shape; logvar is clamped
    to [-30, 20]. The per-sample quantities ([B]) sum over every non-batch dimension."""

    def __init__(self, mean: Tensor, logvar: Tensor):
        if mean.shape != logvar.shape:
            raise ValueError(f"mean and logvar must have one shape, got {tuple(mean.shape)} and {tuple(logvar.shape)}")
        self.mean = mean
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: Optional[torch.Generator] = None) -> Tensor:
        """z = mean + std * e, e ~ N(0, I) [B, ...]. e is drawn on the CPU (with `generator`, a CPU generator) and
        then moved to mean's device, so one seed gives one z on every device."""
        e = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype)
        return self.mean + self.std * e.to(self.mean.device)

    def mode(self) -> Tensor:
        """The most likely z: mean [B, ...]."""
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) = 1/2 sum(mean^2 + var - 1 - logvar)  [B]."""
        return _per_sample_sum(0.5 * (self.mean ** 2 + self.var - 1.0 - self.logvar))

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z) = -1/2 sum((z - mean)^2 / var + logvar + log(2 pi))  [B], for z shaped like mean."""
        return _per_sample_sum(-0.5 * ((z - self.mean) ** 2 / self.var + self.logvar + _LOG_2PI))

    def entropy(self) -> Tensor:
        """H(q) = 1/2 sum(1 + log(2 pi) + logvar)  [B]."""
        return _per_sample_sum(0.5 * (1.0 + _LOG_2PI + self.logvar))


# ----------------------------------------------------------------------------- the decoder's likelihood

def gaussian_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log N(x; mean, s^2 I) = -sum(1/2 ((x - mean) / s)^2 + log s + 1/2 log(2 pi))  [B], s = exp(log_scale) a
    scalar, x and mean [B, ...]."""
    u = (x - mean) * torch.exp(-log_scale)
    return _per_sample_sum(-0.5 * u ** 2 - log_scale - 0.5 * _LOG_2PI)


def _log_normal_mass(lower: Tensor, upper: Tensor) -> Tensor:
    """log(Phi(upper) - Phi(lower)) for standardised edges lower < upper (+-inf allowed), elementwise.

    A bin above 0 is mirrored to [-upper, -lower] (same mass), so both CDF values lie in the lower tail where
    log_ndtr keeps full precision; then log(Phi(b) - Phi(a)) = log Phi(b) + log(-expm1(log Phi(a) - log Phi(b))),
    which neither cancels nor underflows far out in a tail."""
    mirror = lower > 0
    a, b = torch.where(mirror, -upper, lower), torch.where(mirror, -lower, upper)
    log_a, log_b = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return log_b + torch.log(-torch.expm1(log_a - log_b))


def _check_grid(n_bins: int, data_range: Sequence[float]) -> Tuple[float, float]:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
        raise ValueError(f"n_bins must be an int >= 2, got {n_bins!r}")
    if len(data_range) != 2 or not float(data_range[0]) < float(data_range[1]):
        raise ValueError(f"data_range must be (lo, hi) with lo < hi, got {data_range!r}")
    return float(data_range[0]), float(data_range[1])


def discretized_gaussian_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor, n_bins: int = 256,
                                  data_range: Sequence[float] = (-1.0, 1.0)) -> Tensor:
    """log P(x) [B]: the mass N(mean, exp(2 log_scale)) gives x's bin, summed over every non-batch dimension.

    x [B, ...] must lie on the grid of n_bins levels x_k = lo + k d, d = (hi - lo) / (n_bins - 1); level k's bin is
    [x_k - d/2, x_k + d/2], except that the first reaches to -inf and the last to +inf (DDPM's decoder), so
    the n_bins masses sum to 1."""
    lo, hi = _check_grid(n_bins, data_range)
    d = (hi - lo) / (n_bins - 1)
    k = torch.round((x - lo) / d)
    off = (x - (lo + k * d)).abs().max() if x.numel() else 0.0
    if x.numel() and (float(k.min()) < 0 or float(k.max()) > n_bins - 1 or float(off) > 1e-3 * d):
        raise ValueError(f"x must lie on the grid of n_bins = {n_bins} levels spanning data_range = {(lo, hi)}, got "
                         f"values in [{float(x.min()):g}, {float(x.max()):g}] up to {float(off):.3g} off the grid")
    centre, inv_s = lo + k * d, torch.exp(-log_scale)
    inf = torch.full_like(centre, math.inf)
    upper = torch.where(k == n_bins - 1, inf, (centre + d / 2 - mean) * inv_s)
    lower = torch.where(k == 0, -inf, (centre - d / 2 - mean) * inv_s)
    return _per_sample_sum(_log_normal_mass(lower, upper))


class _KLAutoencoder(nn.Module):
    """What the image and point autoencoders share: the decoder's scale, forward and log p(x | z).
    Subclasses give `encode(x) -> DiagonalGaussian` and `decode(z) -> x_hat`."""

    def _init_log_scale(self, init_log_scale: float) -> None:
        if isinstance(init_log_scale, bool) or not isinstance(init_log_scale, (int, float)) \
                or not math.isfinite(init_log_scale):
            raise ValueError(f"init_log_scale must be a finite number, got {init_log_scale!r}")
        # log of the decoder's per-pixel std: learned by the "nll" loss, fixed in effect by "l1" / "l2".
        self.log_scale = nn.Parameter(torch.tensor(float(init_log_scale)))

    def forward(self, x: Tensor, sample: bool = True,
                generator: Optional[torch.Generator] = None) -> Tuple[Tensor, DiagonalGaussian]:
        """(x_hat [B, ...], q(z | x)): x_hat = decode(z), z drawn from q (`sample`) or its mean."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior

    def decoder_log_prob(self, x: Tensor, z: Tensor, kind: str = "gaussian", n_bins: int = 256,
                         data_range: Sequence[float] = (-1.0, 1.0)) -> Tensor:
        """log p(x | z) [B], summed over pixels: "gaussian" the density N(x; decode(z), exp(2 log_scale) I),
        "discretized" the probability of x's bin (`discretized_gaussian_log_prob`), x on the n_bins grid."""
        checks.check_one_of("kind", kind, DECODER_KINDS)
        mean = self.decode(z)
        if kind == "gaussian":
            return gaussian_log_prob(x, mean, self.log_scale)
        return discretized_gaussian_log_prob(x, mean, self.log_scale, n_bins, data_range)


# ----------------------------------------------------------------------------- convolutional encoder / decoder

def check_conv_args(num_channels: int, image_size: int, nf: int, ch_mult: Sequence[int], num_res_blocks: int,
                    dropout: float) -> int:
    """The downsampling factor f = 2^(len(ch_mult) - 1), if the arguments describe a buildable network."""
    for name, v in (("num_channels", num_channels), ("image_size", image_size), ("nf", nf),
                    ("num_res_blocks", num_res_blocks)):
        checks.check_positive_int(v, name)
    if not isinstance(ch_mult, (tuple, list)) or not ch_mult \
            or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in ch_mult):
        raise ValueError(f"ch_mult must be a non-empty tuple of positive ints (m + 1 entries give the downsampling "
                         f"factor 2^m), got {ch_mult!r}")
    for m in ch_mult:
        width, groups = nf * m, min(nf * m // 4, 32)
        if groups < 1 or width % groups:
            raise ValueError(f"nf * ch_mult = {nf} * {m} = {width} channels cannot be group-normalised: each width "
                             "must be >= 4 and divisible by min(width // 4, 32) (e.g. nf a multiple of 32)")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    factor = 2 ** (len(ch_mult) - 1)
    if image_size % factor:
        raise ValueError(f"image_size = {image_size} must be divisible by the downsampling factor "
                         f"f = 2^(len(ch_mult) - 1) = {factor} (ch_mult = {tuple(ch_mult)})")
    return factor


def check_image(x: Tensor, num_channels: int, factor: int) -> Tensor:
    """x if it is [B, num_channels, H, W] with H and W divisible by `factor`."""
    if x.ndim != 4 or x.shape[1] != num_channels or x.shape[2] % factor or x.shape[3] % factor:
        raise ValueError(f"x must be [B, {num_channels}, H, W] with H and W divisible by f = {factor}, "
                         f"got {tuple(x.shape)}")
    return x


def image_latent_shape(image_shape: Sequence[int], num_channels: int, factor: int,
                       latent_channels: int) -> Tuple[int, int, int]:
    """(C, H, W) -> (latent_channels, H / f, W / f)."""
    if len(image_shape) != 3 or image_shape[0] != num_channels or image_shape[1] % factor or image_shape[2] % factor:
        raise ValueError(f"image_shape must be (C, H, W) = ({num_channels}, H, W) with H and W divisible by "
                         f"f = {factor}, got {tuple(image_shape)!r}")
    return latent_channels, image_shape[1] // factor, image_shape[2] // factor


def _res_block(in_ch: int, out_ch: int, dropout: float) -> nn.Module:
    # DDPM's block without a time embedding; its second conv starts near zero, so each block starts near the identity.
    return layers.ResnetBlockDDPM(nn.SiLU(), in_ch, out_ch, temb_dim=None, dropout=dropout)


def _middle(ch: int, dropout: float) -> nn.Sequential:
    """Res block, self-attention over all positions, res block (latent diffusion's middle)."""
    return nn.Sequential(_res_block(ch, ch, dropout), layers.AttnBlock(ch), _res_block(ch, ch, dropout))


class Encoder(nn.Module):
    """x [B, C, H, W] -> h [B, out_channels, H / f, W / f], f = 2^(len(ch_mult) - 1).

    conv_in (C -> nf); level i: num_res_blocks res blocks to nf * ch_mult[i] channels, then, except on the
    last level, a stride-2 3x3 conv; the middle (res, attention, res); GroupNorm, SiLU, 3x3 conv_out."""

    def __init__(self, num_channels: int, nf: int, ch_mult: Sequence[int], num_res_blocks: int, out_channels: int,
                 dropout: float = 0.0):
        super().__init__()
        self.conv_in = layers.conv3x3(num_channels, nf)
        blocks, ch = [], nf
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                blocks.append(_res_block(ch, nf * mult, dropout))
                ch = nf * mult
            if level < len(ch_mult) - 1:
                blocks.append(layers.Downsample(ch, with_conv=True))
        self.down = nn.Sequential(*blocks)
        self.mid = _middle(ch, dropout)
        self.norm_out, self.act = layers.group_norm(ch), nn.SiLU()
        self.conv_out = layers.conv3x3(ch, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(self.act(self.norm_out(h)))


class Decoder(nn.Module):
    """z [B, in_channels, h, w] -> x_hat [B, num_channels, f h, f w], the Encoder's mirror image.

    conv_in (in_channels -> nf * ch_mult[-1]); the middle; levels from the last to the first: num_res_blocks + 1
    res blocks to nf * ch_mult[i] channels, then, except on the first level, nearest 2x upsampling and a 3x3
    conv; GroupNorm, SiLU, 3x3 conv_out to num_channels."""

    def __init__(self, num_channels: int, nf: int, ch_mult: Sequence[int], num_res_blocks: int, in_channels: int,
                 dropout: float = 0.0):
        super().__init__()
        ch = nf * ch_mult[-1]
        self.conv_in = layers.conv3x3(in_channels, ch)
        self.mid = _middle(ch, dropout)
        blocks = []
        for level in reversed(range(len(ch_mult))):
            for _ in range(num_res_blocks + 1):
                blocks.append(_res_block(ch, nf * ch_mult[level], dropout))
                ch = nf * ch_mult[level]
            if level > 0:
                blocks.append(layers.Upsample(ch, with_conv=True))
        self.up = nn.Sequential(*blocks)
        self.norm_out, self.act = layers.group_norm(ch), nn.SiLU()
        self.conv_out = layers.conv3x3(ch, num_channels)

    def forward(self, z: Tensor) -> Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(self.act(self.norm_out(h)))


class AutoencoderKL(_KLAutoencoder):
    """The KL-regularised convolutional autoencoder: images [B, num_channels, H, W] <-> latents
    [B, latent_channels, H / f, W / f], f = 2^(len(ch_mult) - 1) (ch_mult of length 1..4: f = 1, 2, 4, 8).

    encode: [mean, logvar] = quant_conv(Encoder(x)) (1x1 conv), q(z | x) = N(mean, diag exp(logvar)); with
    double_z=False the encoder gives the mean only and logvar is a learned per-channel parameter, the same at
    every position and for every x. decode: x_hat = Decoder(post_quant_conv(z)) (1x1 conv).
    p(x | z) = N(x_hat, exp(2 log_scale) I), log_scale a learned scalar."""

    def __init__(self, num_channels: int = 3, image_size: int = 32, nf: int = 64, ch_mult: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 1, latent_channels: int = 4, dropout: float = 0.0, double_z: bool = True,
                 init_log_scale: float = 0.0):
        super().__init__()
        self._factor = check_conv_args(num_channels, image_size, nf, ch_mult, num_res_blocks, dropout)
        checks.check_positive_int(latent_channels, "latent_channels")
        moments = 2 * latent_channels if double_z else latent_channels
        self.encoder = Encoder(num_channels, nf, ch_mult, num_res_blocks, moments, dropout)
        self.quant_conv = layers.conv1x1(moments, moments)
        self.post_quant_conv = layers.conv1x1(latent_channels, latent_channels)
        self.decoder = Decoder(num_channels, nf, ch_mult, num_res_blocks, latent_channels, dropout)
        if not double_z:
            self.logvar = nn.Parameter(torch.zeros(latent_channels))
        self._init_log_scale(init_log_scale)
        self.num_channels, self.image_size, self.latent_channels, self.double_z = (num_channels, image_size,
                                                                                    latent_channels, bool(double_z))

    @property
    def factor(self) -> int:
        """The downsampling factor f: latents are f times smaller than images in height and width."""
        return self._factor

    def latent_shape(self, image_shape: Sequence[int]) -> Tuple[int, int, int]:
        """(C, H, W) -> (latent_channels, H / f, W / f)."""
        return image_latent_shape(image_shape, self.num_channels, self._factor, self.latent_channels)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """q(z | x) for x [B, C, H, W]; its mean and logvar are [B, latent_channels, H / f, W / f]."""
        h = self.quant_conv(self.encoder(check_image(x, self.num_channels, self._factor)))
        if self.double_z:
            return DiagonalGaussian(*h.chunk(2, dim=1))
        return DiagonalGaussian(h, self.logvar[:, None, None].expand_as(h))

    def decode(self, z: Tensor) -> Tensor:
        """x_hat [B, C, f h, f w], the decoder's mean, for z [B, latent_channels, h, w]."""
        return self.decoder(self.post_quant_conv(z))

    def last_layer(self) -> nn.Parameter:
        """The decoder's final conv weight, where the adaptive GAN weight compares gradients."""
        return self.decoder.conv_out.weight


# ----------------------------------------------------------------------------- point data

def _mlp(widths: Sequence[int]) -> nn.Sequential:
    """Linear layers through `widths` with SiLU between them (none after the last): one layer is linear."""
    parts = []
    for i in range(len(widths) - 1):
        parts += [layers.dense(widths[i], widths[i + 1])] + ([nn.SiLU()] if i < len(widths) - 2 else [])
    return nn.Sequential(*parts)


class PointAutoencoderKL(_KLAutoencoder):
    """The KL autoencoder for points x [B, dim] <-> z [B, latent_dim], MLPs through `hidden` widths.

    encode: [mean, logvar] = MLP(x) through dim, *hidden, 2 latent_dim; with hidden=() the encoder is linear,
    mean = W x + b, and logvar a learned per-latent parameter independent of x (then the model is linear-Gaussian:
    with rec="l2" and kl_weight -> 0 its optimum is PCA, the decoder spanning the top latent_dim principal
    directions). decode: MLP through latent_dim, *reversed(hidden), dim (linear with hidden=()).
    p(x | z) = N(decode(z), exp(2 log_scale) I)."""

    def __init__(self, dim: int = 2, latent_dim: int = 2, hidden: Sequence[int] = (128, 128),
                 init_log_scale: float = 0.0):
        super().__init__()
        checks.check_positive_int(dim, "dim")
        checks.check_positive_int(latent_dim, "latent_dim")
        if not isinstance(hidden, (tuple, list)) or not all(
                isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
            raise ValueError(f"hidden must be a tuple of positive ints (() for a linear autoencoder), got {hidden!r}")
        hidden = tuple(hidden)
        self.linear = not hidden
        self.encoder = _mlp((dim,) + hidden + (latent_dim if self.linear else 2 * latent_dim,))
        if self.linear:
            self.logvar = nn.Parameter(torch.zeros(latent_dim))
        self.decoder = _mlp((latent_dim,) + hidden[::-1] + (dim,))
        self._init_log_scale(init_log_scale)
        self.dim, self.latent_dim = dim, latent_dim

    def latent_shape(self, data_shape: Sequence[int]) -> Tuple[int]:
        """(dim,) -> (latent_dim,)."""
        if tuple(data_shape) != (self.dim,):
            raise ValueError(f"data_shape must be ({self.dim},), got {tuple(data_shape)!r}")
        return (self.latent_dim,)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """q(z | x) for x [B, dim]; mean and logvar [B, latent_dim]."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be [B, {self.dim}], got {tuple(x.shape)}")
        h = self.encoder(x)
        if self.linear:
            return DiagonalGaussian(h, self.logvar.expand_as(h))
        return DiagonalGaussian(*h.chunk(2, dim=1))

    def decode(self, z: Tensor) -> Tensor:
        """x_hat [B, dim] for z [B, latent_dim]."""
        return self.decoder(z)

    def last_layer(self) -> nn.Parameter:
        """The decoder's final weight."""
        return self.decoder[-1].weight


# ----------------------------------------------------------------------------- training objective, latent scale

def kl_autoencoder_loss(ae: _KLAutoencoder, x: Tensor, generator: Optional[torch.Generator] = None, *,
                        kl_weight: float = 1e-6, rec: str = "l1", reduce: str = "mean", return_recon: bool = False):
    """(loss, logs) of the KL autoencoder on x [B, ...], normalised as latent diffusion does: per sample

        L_b = rec_b + kl_weight KL_b,

    rec_b summed over pixels of |x - x_hat| ("l1"), (x - x_hat)^2 ("l2") or -log N(x; x_hat, exp(2 log_scale))
    ("nll", which learns log_scale), x_hat = decode(z), z ~ q(z | x) drawn with `generator`; KL_b summed over
    latents. loss = mean of L_b over the batch ("mean") or their sum ("sum"). logs: loss and batch means of
    rec and kl, and log_scale. Returns (loss, logs), or (loss, logs, x_hat) with `return_recon`."""
    checks.check_one_of("rec", rec, REC_LOSSES)
    checks.check_one_of("reduce", reduce, ("mean", "sum"))
    checks.check_nonnegative(kl_weight, "kl_weight")
    x_hat, posterior = ae(x, sample=True, generator=generator)
    if rec == "nll":
        rec_b = -gaussian_log_prob(x, x_hat, ae.log_scale)
    else:
        rec_b = _per_sample_sum((x - x_hat).abs() if rec == "l1" else (x - x_hat) ** 2)
    kl_b = posterior.kl()
    total = rec_b + kl_weight * kl_b
    logs = {"rec": float(rec_b.detach().mean()), "kl": float(kl_b.detach().mean()),
            "log_scale": float(ae.log_scale.detach())}
    loss = total.mean() if reduce == "mean" else total.sum()
    logs["loss"] = float(loss.detach())
    return (loss, logs, x_hat) if return_recon else (loss, logs)


def latent_scale(latents: Tensor) -> float:
    """1 / std of all entries of a batch of latents (latent diffusion's scale_by_std; std with Bessel's correction,
    as torch.std): the factor that gives the diffusion model latents of unit variance."""
    if latents.numel() < 2:
        raise ValueError(f"latents must hold at least 2 entries, got shape {tuple(latents.shape)}")
    std = float(latents.detach().double().std())
    if not std > 0 or not math.isfinite(std):
        raise ValueError(f"latents must have a finite std > 0, got {std!r}")
    return 1.0 / std
