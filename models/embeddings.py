"""Noise-level and class-label embeddings shared by the networks."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

Tensor = torch.Tensor


def sinusoidal_embedding(cond: Tensor, dim: int, max_positions: int = 10000) -> Tensor:
    """Transformer-style embedding of a per-sample scalar [B] -> [B, dim] (DDPM):
    [sin(c w_k), cos(c w_k)], w_k = max_positions^(-k / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_positions) * torch.arange(half, device=cond.device, dtype=torch.float32)
                      / (half - 1))
    args = cond.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar [B] -> [B, 2 * embedding_size]:
    [sin(2 pi c W), cos(2 pi c W)], W ~ N(0, scale^2) fixed (Tancik et al. 2020)."""

    def __init__(self, embedding_size: int = 256, scale: float = 1.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, c: Tensor) -> Tensor:
        proj = c[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


def check_label_args(num_classes: int, p_uncond: float) -> None:
    """Raise ValueError unless num_classes is an int >= 0 and p_uncond lies in [0, 1) (0 without labels)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0 (0: an unconditional network), got {num_classes!r}")
    if isinstance(p_uncond, bool) or not isinstance(p_uncond, (int, float)) or not 0.0 <= p_uncond < 1.0:
        raise ValueError(f"p_uncond must be a number in [0, 1), got {p_uncond!r}")
    if p_uncond and not num_classes:
        raise ValueError(f"p_uncond = {p_uncond!r} drops class labels, but num_classes = 0 (no labels); "
                         "set num_classes > 0 or p_uncond = 0")


def label_keys(num_classes: int) -> tuple:
    """The conditioning a network with `num_classes` classes takes: ("y",), or () when it has none."""
    return ("y",) if num_classes else ()


def embed_labels(net: nn.Module, y: Tensor | None, batch: int) -> Tensor | None:
    """net.label_embed(y) [batch, dim] for a class-conditional net; None for an unconditional one,
    which refuses labels (a label it cannot read would otherwise be dropped without a word)."""
    if net.num_classes:
        return net.label_embed(y, batch)
    if y is not None:
        raise TypeError(f"{type(net).__name__} is unconditional (num_classes = 0) and takes no class labels y")
    return None


class LabelEmbedding(nn.Embedding):
    """Class labels y [B] -> vectors [B, dim], added to the noise embedding (Dhariwal & Nichol 2021):
    emb = time_emb(c_noise) + label_emb(y).

    Labels lie in [0, num_classes]: label num_classes is the null label, which stands for "no
    label" (the unconditional score of classifier-free guidance, Ho & Salimans 2022); y=None means
    the null label for every sample. In training mode each label is replaced by the null label with
    probability p_uncond (u < p_uncond, u ~ U[0, 1) from `torch.rand` on the labels' device: the
    global RNG that dropout draws from too, whose states a checkpoint saves, so a resumed run drops
    the same labels). In eval mode labels pass unchanged. Weight: [num_classes + 1, dim], N(0, 1).
    """

    def __init__(self, num_classes: int, dim: int, p_uncond: float = 0.0):
        check_label_args(num_classes, p_uncond)
        if num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1 for a label embedding, got {num_classes!r}")
        super().__init__(num_classes + 1, dim)
        self.num_classes, self.p_uncond = num_classes, float(p_uncond)

    def forward(self, y: Tensor | None, batch: int) -> Tensor:
        """y: labels [batch] of an integer dtype, or None -> [batch, dim]."""
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=self.weight.device)
        y = self.check_labels(y, batch)
        if self.training and self.p_uncond > 0:
            drop = torch.rand(y.shape, device=y.device) < self.p_uncond
            y = y.masked_fill(drop, self.num_classes)
        return super().forward(y)

    def check_labels(self, y: Tensor, batch: int) -> Tensor:
        """y as int64 [batch] if every label lies in [0, num_classes]; else ValueError naming `y`."""
        allowed = f"class labels in [0, {self.num_classes}] ({self.num_classes}: the null label), shape [{batch}]"
        if not torch.is_tensor(y) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            got = y.dtype if torch.is_tensor(y) else type(y).__name__
            raise ValueError(f"y must be an integer tensor of {allowed}; got {got}")
        if tuple(y.shape) != (batch,):
            raise ValueError(f"y must be {allowed}; got shape {tuple(y.shape)}")
        lo, hi = torch.stack(y.aminmax()).tolist() if batch else (0, 0)  # min and max: one device sync
        if lo < 0 or hi > self.num_classes:
            raise ValueError(f"y must be {allowed}; got label {lo if lo < 0 else hi}")
        return y.long()
