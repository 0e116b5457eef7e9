"""The adversarial part of the autoencoders' training (pix2pix's PatchGAN, as latent diffusion and VQ-GAN use
it): a patch discriminator, the hinge and generator losses, and the adaptive weight that balances the GAN
gradient against the reconstruction gradient at the decoder's last layer."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import layers
from sde_lib import checks

Tensor = torch.Tensor


def _conv(in_ch: int, out_ch: int, stride: int, bias: bool = True) -> nn.Conv2d:
    """4x4 conv, padding 1, pix2pix's N(0, 0.02) weights and zero bias."""
    conv = nn.Conv2d(in_ch, out_ch, 4, stride=stride, padding=1, bias=bias)
    nn.init.normal_(conv.weight, 0.0, 0.02)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def _norm(ch: int) -> nn.GroupNorm:
    """GroupNorm with pix2pix's N(1, 0.02) scales and zero shifts."""
    norm = layers.group_norm(ch)
    nn.init.normal_(norm.weight, 1.0, 0.02)
    nn.init.zeros_(norm.bias)
    return norm


class PatchDiscriminator(nn.Module):
    """x [B, num_channels, H, W] -> logits [B, 1, H', W'], one per (overlapping) patch.

    conv(4, stride 2) + LeakyReLU(0.2); n_layers - 1 times conv(4, stride 2) + norm + LeakyReLU; conv(4, stride 1)
    + norm + LeakyReLU; conv(4, stride 1) to 1 channel; widths nf * min(2^n, 8). So n_layers convs halve the
    size (pix2pix's count) and, all with padding 1, H' = floor(H / 2^n_layers) - 2 (floors applied per halving):
    32 -> 2, 64 -> 6, 256 -> 30 for n_layers = 3, whose patches are 70 x 70 pixels.

    The norm is GroupNorm, not pix2pix's BatchNorm: a sample's logits then depend on that sample alone, so real
    and fake batches (passed separately, as the losses do) are normalised alike, and any batch size works.
    """

    def __init__(self, num_channels: int = 3, nf: int = 64, n_layers: int = 3):
        super().__init__()
        checks.check_positive_int(num_channels, "num_channels")
        checks.check_positive_int(nf, "nf")
        checks.check_positive_int(n_layers, "n_layers")
        for n in range(1, n_layers + 1):
            width = nf * min(2 ** n, 8)
            if width % max(min(width // 4, 32), 1) or width < 4:
                raise ValueError(f"nf = {nf} gives {width} channels at layer {n}, which GroupNorm cannot split: "
                                 "use nf >= 2 with nf * min(2^n, 8) divisible by min(width // 4, 32) (e.g. nf = 64)")
        parts, ch = [_conv(num_channels, nf, 2), nn.LeakyReLU(0.2)], nf
        for n in range(1, n_layers + 1):
            width = nf * min(2 ** n, 8)
            parts += [_conv(ch, width, 2 if n < n_layers else 1, bias=False), _norm(width), nn.LeakyReLU(0.2)]
            ch = width
        parts.append(_conv(ch, 1, 1))
        self.main = nn.Sequential(*parts)
        self.n_layers = n_layers

    def output_size(self, size: int) -> int:
        """H' for an input of height (or width) `size`."""
        for _ in range(self.n_layers):
            size //= 2
        return size - 2

    def forward(self, x: Tensor) -> Tensor:
        smallest = min(x.shape[-2:]) if x.ndim == 4 else 0
        if x.ndim != 4 or self.output_size(smallest) < 1:
            raise ValueError(f"x must be [B, C, H, W] with H, W >= {3 * 2 ** self.n_layers} for n_layers = "
                             f"{self.n_layers} (else the logit map is empty), got {tuple(x.shape)}")
        return self.main(x)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """The discriminator's hinge loss 1/2 (mean relu(1 - D(real)) + mean relu(1 + D(fake)))  [scalar]."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: Tensor) -> Tensor:
    """The generator's loss -mean D(fake)  [scalar]."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4,
                    delta: float = 1e-4) -> Tensor:
    """lambda = ||grad_W rec_loss|| / (||grad_W g_loss|| + delta), clamped to [0, max_weight] and detached, W the
    decoder's last layer: the GAN term then pulls on W as hard as the reconstruction does (VQ-GAN's eq. 7).
    Both losses keep their graphs, for the backward pass that follows."""
    checks.check_positive(max_weight, "max_weight")
    checks.check_positive(delta, "delta")
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    weight = rec_grad.norm() / (g_grad.norm() + delta)
    return weight.clamp(0.0, max_weight).detach()


def adopt_weight(weight: float, step: int, start: int) -> float:
    """`weight` from step `start` on, 0 before it (the GAN term is switched on late in training)."""
    return weight if step >= start else 0.0
