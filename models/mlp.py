"""A small noise-conditioned MLP for point data (2-D toys, low-dimensional mixtures)."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.attention import KEYS as CONTEXT_KEYS, TokenCrossAttention, check_context_args, context_inputs
from models.embeddings import (GaussianFourierProjection, LabelEmbedding, check_label_args, embed_labels, label_keys,
                               sinusoidal_embedding)
from models.registry import register_model
from models.variance_head import check_learn_variance, output_channels, scale_mean_by_sigma

Tensor = torch.Tensor


@register_model(name="mlp")
class ScoreMLP(nn.Module):
    """x [B, D], cond [B] (+ class labels y [B]) -> [B, D].

    h = W_in x + E(cond); then `num_layers` residual blocks h <- h + W2 SiLU(W1 SiLU(h) + E_l(cond));
    out = W_out SiLU(h). The embedding E is sinusoidal in cond (VP: cond = 999 t) or Gaussian
    Fourier features of log cond (VE: cond = sigma). With `scale_by_sigma` the output is divided
    by cond (= sigma), the NCSN parametrisation s = net / sigma. With `scale_input_by_sigma`
    (VE, where x_t grows to sigma_max) the input is x / sqrt(1 + sigma^2), which keeps it O(1)
    for data of unit scale (the input preconditioning of Karras et al. 2022).

    With `num_classes` = K > 0 the network is class-conditional: E(cond) + label_embed(y) replaces
    E(cond) everywhere, and forward takes y (int64 [B] in [0, K]; K and None mean no label), with
    each label dropped to K with probability `p_uncond` in training (`LabelEmbedding`). With K = 0
    (the default) the network takes no y (`cond_keys` = ()) and its parameters are those of the unconditional network.
    With `learn_variance` the output is [B, 2D]: the prediction, then v (`models.variance_head`).

    With `context_dim` = C > 0 the network reads a context sequence by cross-attention: forward takes
    context [B, L, C] and context_mask [B, L] (bool, True: a real token; `models.attention`), and each
    residual block is followed by h <- h + W_o attn(LN(h), context) (`TokenCrossAttention`, h the one
    query token; `context_heads` heads of width `context_dim_head`, 0: hidden // heads). Those layers start
    as the identity and are registered last, after `label_embed`. `max_context_len` > 0 refuses longer contexts.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, num_layers: int = 3, embedding_dim: int = 64,
                 embedding_type: str = "positional", fourier_scale: float = 1.0, scale_by_sigma: bool = False,
                 scale_input_by_sigma: bool = False, num_classes: int = 0, p_uncond: float = 0.0,
                 learn_variance: bool = False, context_dim: int = 0, context_heads: int = 1, context_dim_head: int = 0,
                 max_context_len: int = 0):
        super().__init__()
        check_label_args(num_classes, p_uncond)
        check_context_args(context_dim, max_context_len, context_heads, context_dim_head)
        if embedding_type not in ("positional", "fourier"):
            raise ValueError(f"embedding_type must be 'positional' or 'fourier', got {embedding_type!r}")
        for name, v in (("dim", dim), ("hidden", hidden), ("num_layers", num_layers), ("embedding_dim", embedding_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if context_dim and not context_dim_head and hidden % context_heads:
            raise ValueError(f"context_heads = {context_heads} must divide hidden = {hidden} "
                             "(or set context_dim_head > 0)")
        self.embedding_type, self.embedding_dim = embedding_type, embedding_dim
        self.scale_by_sigma, self.scale_input_by_sigma = scale_by_sigma, scale_input_by_sigma
        if embedding_type == "fourier":
            self.fourier = GaussianFourierProjection(embedding_dim // 2, fourier_scale)
        self.embed = nn.Sequential(nn.Linear(embedding_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden) for _ in range(num_layers))
        self.dim, self.learn_variance = dim, check_learn_variance(learn_variance)
        self.out = nn.Linear(hidden, output_channels(dim, learn_variance))
        nn.init.zeros_(self.out.weight)  # start at a zero score: training begins from a calm field
        nn.init.zeros_(self.out.bias)
        self.num_classes, self.cond_keys = num_classes, label_keys(num_classes)
        if num_classes:
            # Registered (and drawn) last: the other parameters, their order and initial values are
            # those of the unconditional network.
            self.label_embed = LabelEmbedding(num_classes, hidden, p_uncond)
        self.context_dim, self.max_context_len = context_dim, max_context_len
        if context_dim:  # registered last, for the same reason
            self.cross_attn = nn.ModuleList(TokenCrossAttention(hidden, context_dim, context_heads, context_dim_head)
                                            for _ in range(num_layers))
            self.cond_keys = self.cond_keys + CONTEXT_KEYS

    def forward(self, x: Tensor, cond: Tensor, y: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        """x [B, D], cond [B], class labels y [B] (None: the null label), and for a context network context
        [B, L, context_dim] and context_mask [B, L] (bool, None: every token real) -> [B, D]."""
        ctx = context_inputs(self, context, context_mask, x.shape[0], self.inp.weight.dtype)
        if self.embedding_type == "fourier":
            e = self.fourier(torch.log(cond).to(self.fourier.W.dtype))
        else:
            e = sinusoidal_embedding(cond, self.embedding_dim)
        e = self.embed(e.to(self.inp.weight.dtype))
        label = embed_labels(self, y, x.shape[0])
        if label is not None:
            e = e + label
        if self.scale_input_by_sigma:
            x = x * torch.rsqrt(1 + cond.to(x.dtype)[:, None] ** 2)
        h = self.inp(x) + e
        for i, block in enumerate(self.blocks):
            h = block(h, e)
            if ctx is not None:
                h = self.cross_attn[i](h, *ctx)
        out = self.out(nn.functional.silu(h))
        return scale_mean_by_sigma(out, cond, self.dim) if self.scale_by_sigma else out


class _Block(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.emb = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        return h + self.fc2(nn.functional.silu(self.fc1(nn.functional.silu(h)) + self.emb(e)))
