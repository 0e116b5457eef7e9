"""Noise-level embeddings shared by the networks."""
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
