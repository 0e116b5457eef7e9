"""Vector quantisation (VQ-VAE, van den Oord et al. 2017; VQ-GAN, Esser et al. 2021): a codebook, its
straight-through quantiser and loss (or exponential-moving-average updates), and the VQ autoencoder built on
the KL autoencoder's encoder and decoder.

    k = argmin_j ||z_e - e_j||^2 per position,   z_q = e_k (forward), dz_q / dz_e = I (backward)
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import layers
from models.autoencoder import Decoder, Encoder, check_conv_args, check_image, image_latent_shape
from sde_lib import checks

Tensor = torch.Tensor
BETA_ON = ("encoder", "codebook")


class VectorQuantizer(nn.Module):
    """Nearest-code quantiser: z_e [B, D, H, W] (or [B, D], or [B, D, ...]) -> (z_q, loss, indices).

    codebook e [K, D], K = n_codes, D = code_dim; k = argmin_j ||z_e - e_j||^2 at each position (indices
    [B, H, W] or [B]); z_q = z_e + sg(e_k - z_e): e_k forward, gradient straight through to z_e (sg = stop-gradient).

    loss (means over all elements of z_e):
      ema=False, beta_on="encoder":  ||sg(z_e) - e_k||^2 + beta ||z_e - sg(e_k)||^2   (VQ-VAE: beta weights
                                     the commitment of the encoder);
      ema=False, beta_on="codebook": beta ||sg(z_e) - e_k||^2 + ||z_e - sg(e_k)||^2   (where diffusers' VQModel
                                     puts beta by default);
      ema=True:                      beta ||z_e - sg(e_k)||^2 only; in training mode the codebook follows
                                     exponential moving averages instead of gradients (`_ema_update`).
    """

    def __init__(self, n_codes: int, code_dim: int, beta: float = 0.25, *, beta_on: str = "encoder",
                 ema: bool = False, decay: float = 0.99, eps: float = 1e-5):
        super().__init__()
        checks.check_positive_int(n_codes, "n_codes")
        checks.check_positive_int(code_dim, "code_dim")
        checks.check_nonnegative(beta, "beta")
        checks.check_one_of("beta_on", beta_on, BETA_ON)
        if ema and beta_on != "encoder":
            raise ValueError("beta_on must be 'encoder' with ema=True (an EMA codebook has no codebook loss term), "
                             f"got {beta_on!r}")
        checks.check_open_interval(decay, "decay", 0.0, 1.0)
        checks.check_positive(eps, "eps")
        # VQ-VAE's initialisation: U(-1/K, 1/K).
        init = (torch.rand(n_codes, code_dim) * 2.0 - 1.0) / n_codes
        if ema:
            self.register_buffer("codebook", init)
            # Counts start at 1 and sums at the codes themselves, so a code no input picks stays where it is.
            self.register_buffer("ema_count", torch.ones(n_codes))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self.n_codes, self.code_dim, self.beta, self.beta_on = n_codes, code_dim, float(beta), beta_on
        self.ema, self.decay, self.eps = bool(ema), float(decay), float(eps)

    def _flatten(self, z_e: Tensor) -> Tensor:
        """[B, D, *spatial] -> [N, D], N = B prod(spatial), positions in row-major order."""
        if z_e.ndim < 2 or z_e.shape[1] != self.code_dim:
            raise ValueError(f"z_e must be [B, {self.code_dim}, ...] (code_dim = {self.code_dim}), "
                             f"got {tuple(z_e.shape)}")
        return z_e.movedim(1, -1).reshape(-1, self.code_dim)

    def nearest(self, flat: Tensor) -> Tensor:
        """Indices [N] of the nearest codes to flat [N, D]: argmin_j ||z||^2 - 2 z.e_j + ||e_j||^2."""
        cb = self.codebook.to(flat.dtype)
        d = flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ cb.t() + cb.pow(2).sum(1)
        return d.argmin(1)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, idx: Tensor) -> None:
        """One EMA step from this batch's assignments: with counts n_j and sums s_j of the vectors assigned to code j,

            N_j <- decay N_j + (1 - decay) n_j,   S_j <- decay S_j + (1 - decay) s_j,
            N~_j = (N_j + eps) / (sum N + K eps) sum N   (Laplace smoothing: no division by zero),   e_j = S_j / N~_j.
        """
        onehot = F.one_hot(idx, self.n_codes).to(self.ema_sum.dtype)
        self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1.0 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.t() @ flat.to(self.ema_sum.dtype), alpha=1.0 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.n_codes * self.eps) * total
        self.codebook.copy_(self.ema_sum / smoothed[:, None])

    def forward(self, z_e: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(z_q shaped like z_e, loss [scalar], indices [B, *spatial]). In EMA training mode z_q uses the codebook
        before this batch's update."""
        flat = self._flatten(z_e)
        idx = self.nearest(flat.detach())
        e = self.codebook[idx].to(flat.dtype)
        if self.ema and self.training:
            self._ema_update(flat.detach(), idx)
        commitment = F.mse_loss(flat, e.detach())
        if self.ema:
            loss = self.beta * commitment
        else:
            codebook = F.mse_loss(flat.detach(), e)
            loss = codebook + self.beta * commitment if self.beta_on == "encoder" else self.beta * codebook + commitment
        z_q = flat + (e - flat).detach()
        spatial = (z_e.shape[0],) + tuple(z_e.shape[2:])
        return z_q.reshape(spatial + (self.code_dim,)).movedim(-1, 1), loss, idx.reshape(spatial)

    def embed(self, indices: Tensor) -> Tensor:
        """The codes of indices [B, *spatial]: [B, D, *spatial]."""
        return self.codebook[indices].movedim(-1, 1)

    def usage(self, indices: Tensor) -> Dict[str, float]:
        """{"used_fraction": the fraction of the K codes that occur in indices, "perplexity": exp(H(p)), p the
        codes' histogram, H(p) = -sum p log p (K when all codes are equally used, 1 when one code is)}."""
        counts = torch.bincount(indices.flatten().cpu(), minlength=self.n_codes).double()
        if counts.numel() != self.n_codes or not counts.sum() > 0:
            raise ValueError(f"indices must be a non-empty tensor of codes in [0, {self.n_codes}), got "
                             f"{indices.numel()} entries up to {int(indices.max()) if indices.numel() else None}")
        p = counts / counts.sum()
        entropy = -(p * torch.log(p.clamp(min=1e-300))).sum()  # 0 log 0 = 0
        return {"used_fraction": float((counts > 0).double().mean()), "perplexity": math.exp(float(entropy))}


class VQAutoencoder(nn.Module):
    """The VQ autoencoder (VQ-GAN's generator): x [B, C, H, W] -> z_e = quant_conv(Encoder(x)) [B, code_dim, H/f,
    W/f] -> z_q (VectorQuantizer) -> x_hat = Decoder(post_quant_conv(z_q)), with the KL autoencoder's Encoder and
    Decoder, f = 2^(len(ch_mult) - 1)."""

    def __init__(self, num_channels: int = 3, image_size: int = 32, nf: int = 64, ch_mult: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 1, n_codes: int = 512, code_dim: int = 4, beta: float = 0.25,
                 ema: bool = False, dropout: float = 0.0, beta_on: str = "encoder", decay: float = 0.99):
        super().__init__()
        self._factor = check_conv_args(num_channels, image_size, nf, ch_mult, num_res_blocks, dropout)
        checks.check_positive_int(code_dim, "code_dim")
        self.encoder = Encoder(num_channels, nf, ch_mult, num_res_blocks, code_dim, dropout)
        self.quant_conv = layers.conv1x1(code_dim, code_dim)
        self.quantizer = VectorQuantizer(n_codes, code_dim, beta, beta_on=beta_on, ema=ema, decay=decay)
        self.post_quant_conv = layers.conv1x1(code_dim, code_dim)
        self.decoder = Decoder(num_channels, nf, ch_mult, num_res_blocks, code_dim, dropout)
        self.num_channels, self.image_size, self.code_dim = num_channels, image_size, code_dim

    @property
    def factor(self) -> int:
        """The downsampling factor f."""
        return self._factor

    def latent_shape(self, image_shape: Sequence[int]) -> Tuple[int, int, int]:
        """(C, H, W) -> (code_dim, H / f, W / f)."""
        return image_latent_shape(image_shape, self.num_channels, self._factor, self.code_dim)

    def encode(self, x: Tensor) -> Tensor:
        """z_e [B, code_dim, H / f, W / f], before quantisation, for x [B, C, H, W]."""
        return self.quant_conv(self.encoder(check_image(x, self.num_channels, self._factor)))

    def quantize(self, z_e: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(z_q, vq loss, indices [B, H / f, W / f]): `VectorQuantizer.forward`."""
        return self.quantizer(z_e)

    def decode(self, z: Tensor) -> Tensor:
        """x_hat [B, C, f h, f w] for z [B, code_dim, h, w] (quantised or not: a latent model's samples)."""
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(x_hat, vq loss, indices)."""
        z_q, loss, indices = self.quantize(self.encode(x))
        return self.decode(z_q), loss, indices

    def last_layer(self) -> nn.Parameter:
        """The decoder's final conv weight, where the adaptive GAN weight compares gradients."""
        return self.decoder.conv_out.weight


def vq_autoencoder_loss(ae: VQAutoencoder, x: Tensor, *, rec: str = "l1",
                        codebook_weight: float = 1.0, return_recon: bool = False):
    """(loss, logs) = mean over all elements of |x - x_hat| ("l1") or (x - x_hat)^2 ("l2") + codebook_weight *
    vq loss, as VQ-GAN normalises it (means over elements, unlike the KL loss's per-sample sums). logs: loss,
    rec, vq, and the codes' used_fraction and perplexity in this batch. Returns (loss, logs), or
    (loss, logs, x_hat) with `return_recon`."""
    checks.check_one_of("rec", rec, ("l1", "l2"))
    checks.check_nonnegative(codebook_weight, "codebook_weight")
    x_hat, vq_loss, indices = ae(x)
    rec_loss = F.l1_loss(x_hat, x) if rec == "l1" else F.mse_loss(x_hat, x)
    loss = rec_loss + codebook_weight * vq_loss
    logs = {"loss": float(loss.detach()), "rec": float(rec_loss.detach()), "vq": float(vq_loss.detach())}
    logs.update(ae.quantizer.usage(indices))
    return (loss, logs, x_hat) if return_recon else (loss, logs)
