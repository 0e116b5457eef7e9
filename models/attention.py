"""Cross-attention conditioning on a sequence of context tokens (latent diffusion, Rombach et al. 2022;
GLIDE, Nichol et al. 2022): the layers, and the checks of the two conditioning inputs they read.

A context-conditioned network takes, through the conditioning channel,

    context       [B, L, D] float: L tokens of width D = context_dim (e.g. a text encoder's output),
    context_mask  [B, L] bool: True where a token is real, False where it is padding (None: all real).

Padding tokens are left out of every softmax, so the output depends neither on their values nor on
the order of the tokens. A sample whose every token is padding attends to nothing: its attention
output is the zero vector, so a cross-attention layer returns its output bias b_o there.

Shapes: query tokens x [B, N, Cq]; images [B, C, H, W] (the N = H W pixels are the tokens).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from sde_lib import append_dims
from models import layers

Tensor = torch.Tensor
KEYS = ("context", "context_mask")
Context = Tuple[Tensor, Optional[Tensor]]


# ----------------------------------------------------------------------------- arguments and inputs

def _check_int(value, name: str, low: int, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}{what}, got {value!r}")
    return value


def check_context_args(context_dim: int, max_context_len: int = 0, heads: int = 1, dim_head: int = 0,
                       depth: int = 1) -> int:
    """context_dim (0: no context) if it and the attention settings are ints in range; else ValueError."""
    _check_int(context_dim, "context_dim", 0, " (0: a network without context)")
    _check_int(max_context_len, "max_context_len", 0, " (0: no limit)")
    _check_int(heads, "context_heads", 1)
    _check_int(dim_head, "context_dim_head", 0, " (0: the channels divided by context_heads)")
    _check_int(depth, "context_depth", 1)
    return context_dim


def context_levels(context_dim: int, context_resolutions: Sequence[int], pool: bool,
                   resolutions: Sequence[int]) -> List[bool]:
    """Per level of a U-Net with feature maps of `resolutions`, whether its resolution is listed in
    context_resolutions; ValueError for a resolution the U-Net does not have, for context layers without
    context_dim, or for a context_dim that no layer would read."""
    wanted = tuple(context_resolutions)
    bad = [r for r in wanted if r not in resolutions]
    if bad:
        raise ValueError(f"context_resolutions must be feature-map resolutions of this U-Net, "
                         f"{sorted(set(resolutions), reverse=True)}; got {wanted}")
    if not context_dim and (wanted or pool):
        raise ValueError(f"context_resolutions = {wanted} and context_pool = {pool!r} read a context, but "
                         "context_dim = 0 (no context); set context_dim > 0")
    if context_dim and not (wanted or pool):
        raise ValueError(f"context_dim = {context_dim} needs context_resolutions (e.g. (16, 8)) or context_pool "
                         "= True: without them no layer reads the context")
    return [r in wanted for r in resolutions]


def context_inputs(net: nn.Module, context: Tensor | None, context_mask: Tensor | None, batch: int,
                   dtype: torch.dtype) -> Context | None:
    """(context in `dtype`, mask) for a network with `net.context_dim` > 0, after checking their shapes
    (and L <= net.max_context_len where that is > 0); None for a network without context, which refuses
    them (context it cannot read would otherwise be ignored without a word)."""
    name, dim = type(net).__name__, net.context_dim
    if not dim:
        if context is not None or context_mask is not None:
            raise TypeError(f"{name} takes no context (context_dim = 0): it is not a cross-attention network")
        return None
    if context is None:
        raise ValueError(f"{name} is conditioned on a context sequence (context_dim = {dim}) and needs context "
                         f"[B, L, {dim}]; for the unconditional score pass an encoded empty caption, not None")
    if not torch.is_tensor(context) or not context.is_floating_point() or context.ndim != 3:
        got = f"{context.dtype} {tuple(context.shape)}" if torch.is_tensor(context) else type(context).__name__
        raise ValueError(f"context must be a float tensor [B, L, context_dim] = [{batch}, L, {dim}], got {got}")
    B, L, D = context.shape
    if B != batch or D != dim or L < 1:
        raise ValueError(f"context must have shape [B, L, context_dim] = [{batch}, L >= 1, {dim}] (context_dim = "
                         f"{dim}), got {tuple(context.shape)}")
    if net.max_context_len and L > net.max_context_len:
        raise ValueError(f"context has L = {L} tokens, more than max_context_len = {net.max_context_len}")
    if context_mask is not None:
        if not torch.is_tensor(context_mask) or context_mask.dtype != torch.bool or context_mask.shape != (B, L):
            got = (f"{context_mask.dtype} {tuple(context_mask.shape)}" if torch.is_tensor(context_mask)
                   else type(context_mask).__name__)
            raise ValueError(f"context_mask must be a bool tensor [B, L] = [{B}, {L}] (True: a real token), got {got}")
    return context.to(dtype), context_mask


def last_real_token(context: Tensor, mask: Tensor | None) -> Tensor:
    """The token at each sample's last real position [B, D] (GLIDE pools its caption's final token):
    context[b, max{l : mask[b, l]}], and zeros for a sample without a real token. mask None: the last."""
    if mask is None:
        return context[:, -1]
    positions = torch.arange(context.shape[1], device=context.device)
    last = torch.where(mask, positions, -1).amax(1)                       # [B], -1 where all is padding
    picked = context[torch.arange(context.shape[0], device=context.device), last.clamp(min=0)]
    return picked * append_dims((last >= 0).to(context.dtype), picked.ndim)


# ----------------------------------------------------------------------------- layers

class CrossAttention(nn.Module):
    """Multi-head attention of query tokens x [B, N, query_dim] on context tokens c [B, L, context_dim]
    (c None: on x itself, self-attention; then context_dim must equal query_dim) -> [B, N, query_dim].

    Per head h (width dim_head): Q = x W_q^h, K = c W_k^h, V = c W_v^h (no biases),
    A = softmax(Q K^T / sqrt(dim_head) + M), out = concat_h(A V) W_o + b_o,
    with M = -inf at the padding positions (mask [B, L] False) and 0 elsewhere. A row whose every
    position is masked gives A V = 0 (not NaN), so out = b_o for that sample.
    """

    def __init__(self, query_dim: int, context_dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        for name, v in (("query_dim", query_dim), ("context_dim", context_dim), ("heads", heads),
                        ("dim_head", dim_head)):
            _check_int(v, name, 1)
        inner = heads * dim_head
        self.heads, self.dim_head, self.query_dim, self.context_dim = heads, dim_head, query_dim, context_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        if context is None:
            if self.context_dim != self.query_dim:
                raise ValueError(f"self-attention (context None) needs context_dim = query_dim, got "
                                 f"{self.context_dim} and {self.query_dim}")
            context = x
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(context)), self._split(self.to_v(context))
        attn_mask, real = None, None
        if mask is not None:
            real = mask.any(1)  # [B]: samples with at least one real token
            # An all-padding sample attends everywhere (finite), then its result is zeroed below.
            attn_mask = (mask | ~real[:, None])[:, None, None, :]           # [B, 1, 1, L]
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)    # [B, heads, N, dim_head]
        h = h.transpose(1, 2).flatten(2)                                    # [B, N, heads * dim_head]
        if real is not None:
            h = h * append_dims(real.to(h.dtype), h.ndim)
        return self.to_out(h)

    def _split(self, t: Tensor) -> Tensor:
        """[B, n, heads * dim_head] -> [B, heads, n, dim_head]."""
        return t.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)


class GEGLU(nn.Module):
    """Gated GELU (Shazeer 2020): [..., dim_in] -> [..., dim_out], with [a, g] = x W + b split in halves,
    out = a * gelu(g), gelu(g) = g Phi(g) (Phi the standard normal CDF)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: Tensor) -> Tensor:
        a, g = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(g)


class FeedForward(nn.Module):
    """The transformer's MLP [..., dim] -> [..., dim]: out = W_2 GEGLU(x) + b_2, hidden width mult * dim."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.geglu = GEGLU(dim, mult * dim)
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.geglu(x))


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block on tokens x [B, N, dim] with context [B, L, context_dim] -> [B, N, dim]:
    x <- x + SelfAttn(LN_1(x)); x <- x + CrossAttn(LN_2(x), context, mask); x <- x + FF(LN_3(x))."""

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), CrossAttention(dim, dim, heads, dim_head)
        self.norm2, self.attn2 = nn.LayerNorm(dim), CrossAttention(dim, context_dim, heads, dim_head)
        self.norm3, self.ff = nn.LayerNorm(dim), FeedForward(dim)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context, mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Latent diffusion's transformer on an image x [B, C, H, W] with context [B, L, context_dim]:
    h = proj_in(GroupNorm(x)) (1x1 conv C -> C' = heads dim_head), its H W pixels as tokens [B, HW, C'],
    `depth` BasicTransformerBlocks with the context, back to [B, C', H, W], out = x + proj_out(h).
    proj_out (1x1 conv C' -> C) starts at zero, so a new layer is exactly the identity."""

    def __init__(self, channels: int, context_dim: int, heads: int, dim_head: int, depth: int = 1):
        super().__init__()
        _check_int(depth, "depth", 1)
        inner = heads * dim_head
        self.norm = layers.group_norm(channels)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.blocks = nn.ModuleList(BasicTransformerBlock(inner, context_dim, heads, dim_head) for _ in range(depth))
        self.proj_out = nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        b, _, hh, ww = x.shape
        h = self.proj_in(self.norm(x))
        tokens = h.flatten(2).transpose(1, 2)                               # [B, HW, C']
        for block in self.blocks:
            tokens = block(tokens, context, mask)
        h = tokens.transpose(1, 2).reshape(b, -1, hh, ww)
        return x + self.proj_out(h)


class TokenCrossAttention(nn.Module):
    """Cross-attention for point data: the hidden state h [B, hidden] as one query token on the context
    [B, L, context_dim]: out = h + W_o attn(LN(h), context, mask) + b_o -> [B, hidden]. W_o and b_o start
    at zero, so a new layer is exactly the identity."""

    def __init__(self, hidden: int, context_dim: int, heads: int = 1, dim_head: int = 0):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.attn = CrossAttention(hidden, context_dim, heads, dim_head or hidden // heads)
        nn.init.zeros_(self.attn.to_out.weight)
        nn.init.zeros_(self.attn.to_out.bias)

    def forward(self, h: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        return h + self.attn(self.norm(h)[:, None], context, mask)[:, 0]


class ContextConditioning(nn.Module):
    """The context layers of a U-Net, kept apart from its other modules: a SpatialTransformer at each
    named place (`channels`: {place: channels there}, in forward order) and, with `pool`, GLIDE's pooled
    caption embedding temb <- temb + W_p c_last + b_p (c_last = `last_real_token`; W_p, b_p start at zero)."""

    def __init__(self, context_dim: int, channels: Dict[str, int], heads: int, dim_head: int, depth: int,
                 temb_dim: int, pool: bool):
        super().__init__()
        for place, c in channels.items():
            if not dim_head and c % heads:
                raise ValueError(f"context_heads = {heads} must divide the {c} channels at {place} "
                                 "(or set context_dim_head > 0)")
        self.transformers = nn.ModuleDict({place: SpatialTransformer(c, context_dim, heads, dim_head or c // heads,
                                                                     depth) for place, c in channels.items()})
        if pool:
            self.pool = nn.Linear(context_dim, temb_dim)
            nn.init.zeros_(self.pool.weight)
            nn.init.zeros_(self.pool.bias)

    def embed(self, temb: Tensor | None, context: Tensor, mask: Tensor | None) -> Tensor | None:
        """temb [B, temb_dim] plus the pooled caption's embedding (temb unchanged without `pool`)."""
        if not hasattr(self, "pool"):
            return temb
        pooled = self.pool(last_real_token(context, mask))
        return pooled if temb is None else temb + pooled

    def forward(self, place: str, h: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        """The SpatialTransformer at `place` applied to h [B, C, H, W]; h itself where there is none."""
        return self.transformers[place](h, context, mask) if place in self.transformers else h
