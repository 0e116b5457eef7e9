"""Building blocks of the U-Net score networks (NCSN++, DDPM++, DDPM).

Submodule and parameter names (`Conv_0`, `GroupNorm_0`, `Dense_0`, `NIN_0`, `W`, `b`, ...) and the
order in which each block registers them follow score_sde_pytorch, so its checkpoints (including
the EMA's `shadow_params`, a list in `model.parameters()` order) load unchanged.

Shapes: images [B, C, H, W]; embeddings [B, D].
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import up_or_down_sampling as updown

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
ACTIVATIONS = ("swish", "elu", "relu", "lrelu")


def get_act(name: str) -> nn.Module:
    """The activation called `name` (config key `nonlinearity`); swish is x * sigmoid(x)."""
    table = {"swish": nn.SiLU, "elu": nn.ELU, "relu": nn.ReLU, "lrelu": lambda: nn.LeakyReLU(0.2)}
    if name.lower() not in table:
        raise ValueError(f"nonlinearity must be one of {ACTIVATIONS}, got {name!r}")
    return table[name.lower()]()


# ----------------------------------------------------------------------------- initialisation

def variance_scaling(scale: float, mode: str, distribution: str, in_axis: int = 1,
                     out_axis: int = 0) -> Callable[[Sequence[int]], torch.Tensor]:
    """JAX's variance-scaling initialiser: draws with Var = scale / fan.

    fan_in = shape[in_axis] * receptive field, fan_out = shape[out_axis] * receptive field,
    fan = fan_in, fan_out or their mean (mode "fan_in", "fan_out", "fan_avg"). "uniform" draws
    from U(-sqrt(3 Var), sqrt(3 Var)), "normal" from N(0, Var).
    """
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"mode must be 'fan_in', 'fan_out' or 'fan_avg', got {mode!r}")
    if distribution not in ("uniform", "normal"):
        raise ValueError(f"distribution must be 'uniform' or 'normal', got {distribution!r}")

    def init(shape: Sequence[int]) -> torch.Tensor:
        receptive = float(np.prod(shape)) / shape[in_axis] / shape[out_axis]
        fan_in, fan_out = shape[in_axis] * receptive, shape[out_axis] * receptive
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        var = scale / fan
        if distribution == "normal":
            return torch.randn(*shape) * math.sqrt(var)
        return (torch.rand(*shape) * 2.0 - 1.0) * math.sqrt(3.0 * var)

    return init


def default_init(scale: float = 1.0) -> Callable[[Sequence[int]], torch.Tensor]:
    """DDPM's initialiser: fan_avg uniform variance scaling with Var = scale / fan_avg. A scale of 0
    becomes 1e-10, so a layer with init_scale=0 starts as almost (not exactly) the zero map."""
    return variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True, dilation: int = 1,
            init_scale: float = 1.0, padding: int = 1) -> nn.Conv2d:
    """3x3 convolution with `default_init(init_scale)` weights and zero bias."""
    conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=padding, dilation=dilation, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(default_init(init_scale)(conv.weight.shape))
        if bias:
            conv.bias.zero_()
    return conv


def conv1x1(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True, init_scale: float = 1.0,
            padding: int = 0) -> nn.Conv2d:
    """1x1 convolution with `default_init(init_scale)` weights and zero bias."""
    conv = nn.Conv2d(in_ch, out_ch, 1, stride=stride, padding=padding, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(default_init(init_scale)(conv.weight.shape))
        if bias:
            conv.bias.zero_()
    return conv


def dense(in_dim: int, out_dim: int) -> nn.Linear:
    """Linear layer with `default_init()` weights and zero bias."""
    lin = nn.Linear(in_dim, out_dim)
    with torch.no_grad():
        lin.weight.copy_(default_init()(lin.weight.shape))
        lin.bias.zero_()
    return lin


def group_norm(channels: int, num_groups: int | None = None) -> nn.GroupNorm:
    """GroupNorm(eps=1e-6) with `num_groups` groups, by default min(channels // 4, 32)."""
    groups = min(channels // 4, 32) if num_groups is None else num_groups
    if groups < 1 or channels % groups:
        raise ValueError(f"GroupNorm: {channels} channels cannot be split into {groups} groups; "
                         "use channel counts that are >= 4 and divisible by the group count")
    return nn.GroupNorm(groups, channels, eps=1e-6)


class Dropout(nn.Dropout):
    """Inverted dropout: in training, y = x * keep / (1 - p) with keep = [u >= p], u ~ U[0, 1) per element.

    Same law as nn.Dropout. On CPU the keep mask comes from one `rand_like` and a comparison,
    about 40% faster than `bernoulli_`, the op nn.Dropout spends most of its time in; other
    devices use the fused kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return F.dropout(x, self.p, self.training)
        if self.p == 1.0:
            return x * 0.0
        return x * torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))


class NIN(nn.Module):
    """Per-pixel linear map ("network in network"): y[b, o, h, w] = sum_c x[b, c, h, w] W[c, o] + b[o].

    W: [in_dim, num_units], initialised with `default_init(init_scale)`; b: zeros.
    """

    def __init__(self, in_dim: int, num_units: int, init_scale: float = 0.1):
        super().__init__()
        self.W = nn.Parameter(default_init(init_scale)((in_dim, num_units)))
        self.b = nn.Parameter(torch.zeros(num_units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A 1x1 convolution keeps NCHW layout, so no permute copies before or after.
        return F.conv2d(x, self.W.t()[:, :, None, None], self.b)


# ----------------------------------------------------------------------------- attention, resampling

class AttnBlock(nn.Module):
    """Self-attention over the H*W pixels of [B, C, H, W], one head of width C, plus a residual.

    h = GroupNorm(x); q, k, v = NIN_0(h), NIN_1(h), NIN_2(h);
    out = x + NIN_3(softmax(q k^T / sqrt(C)) v), divided by sqrt(2) if `skip_rescale`.
    """

    def __init__(self, channels: int, skip_rescale: bool = False, init_scale: float = 0.0,
                 num_groups: int | None = None):
        super().__init__()
        self.GroupNorm_0 = group_norm(channels, num_groups)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        tokens = self.GroupNorm_0(x).flatten(2).transpose(1, 2)  # [B, HW, C], a view
        # One matmul for q, k and v together.
        w_qkv = torch.cat([self.NIN_0.W, self.NIN_1.W, self.NIN_2.W], dim=1)
        b_qkv = torch.cat([self.NIN_0.b, self.NIN_1.b, self.NIN_2.b])
        # A head axis makes the [B, 1, HW, C] inputs eligible for the fused CPU (flash) kernel;
        # 3-D inputs fall back to the unfused path, several times slower in the backward pass.
        q, k, v = F.linear(tokens, w_qkv.t(), b_qkv).unsqueeze(1).chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        h = F.linear(h, self.NIN_3.W.t(), self.NIN_3.b).transpose(1, 2).reshape(b, c, hh, ww)
        out = x + h
        return out.mul_(_INV_SQRT2) if self.skip_rescale else out


class Upsample(nn.Module):
    """2x upsampling [B, in_ch, H, W] -> [B, out_ch, 2H, 2W].

    fir=False: nearest neighbour, then a 3x3 conv (`Conv_0`) if `with_conv`.
    fir=True: FIR upsampling, or with `with_conv` the fused FIR-upsample-conv (`Conv2d_0`).
    """

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv: bool = False, fir: bool = False,
                 fir_kernel: Sequence[float] = updown.DEFAULT_FIR_KERNEL):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv and not fir:
            self.Conv_0 = conv3x3(in_ch, out_ch)
        elif with_conv:
            self.Conv2d_0 = updown.Conv2d(in_ch, out_ch, kernel=3, up=True, resample_kernel=fir_kernel,
                                          kernel_init=default_init())
        if not with_conv and out_ch != in_ch:
            raise ValueError(f"Upsample: out_ch={out_ch} differs from in_ch={in_ch}, which needs with_conv=True")
        self.fir, self.with_conv = fir, with_conv
        self.register_buffer("fir_kernel", updown.fir_kernel_1d(fir_kernel), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fir:
            return self.Conv2d_0(x) if self.with_conv else updown.upsample_2d(x, self.fir_kernel)
        h = updown.naive_upsample_2d(x)
        return self.Conv_0(h) if self.with_conv else h


class Downsample(nn.Module):
    """2x downsampling [B, in_ch, H, W] -> [B, out_ch, H/2, W/2].

    fir=False: a stride-2 3x3 conv (`Conv_0`) on the input zero-padded at the bottom and right
    (TensorFlow's 'SAME'), or 2x2 average pooling. fir=True: FIR downsampling, or with
    `with_conv` the fused FIR-conv-downsample (`Conv2d_0`).
    """

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv: bool = False, fir: bool = False,
                 fir_kernel: Sequence[float] = updown.DEFAULT_FIR_KERNEL):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv and not fir:
            self.Conv_0 = conv3x3(in_ch, out_ch, stride=2, padding=0)
        elif with_conv:
            self.Conv2d_0 = updown.Conv2d(in_ch, out_ch, kernel=3, down=True, resample_kernel=fir_kernel,
                                          kernel_init=default_init())
        if not with_conv and out_ch != in_ch:
            raise ValueError(f"Downsample: out_ch={out_ch} differs from in_ch={in_ch}, which needs with_conv=True")
        self.fir, self.with_conv = fir, with_conv
        self.register_buffer("fir_kernel", updown.fir_kernel_1d(fir_kernel), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fir:
            return self.Conv2d_0(x) if self.with_conv else updown.downsample_2d(x, self.fir_kernel)
        if self.with_conv:
            return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
        return updown.naive_downsample_2d(x)


class Combine(nn.Module):
    """Merges an input-pyramid image x [B, dim1, H, W] into features y [B, dim2, H, W]:
    cat([Conv_0(x), y]) -> [B, 2 dim2, H, W] ("cat") or Conv_0(x) + y ("sum"), Conv_0 a 1x1 conv
    named as in score_sde_pytorch's NCSN++, so its checkpoints load by name."""

    def __init__(self, dim1: int, dim2: int, method: str = "cat"):
        super().__init__()
        if method not in ("cat", "sum"):
            raise ValueError(f"progressive_combine must be 'cat' or 'sum', got {method!r}")
        self.Conv_0 = conv1x1(dim1, dim2)
        self.method = method

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.Conv_0(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y


# ----------------------------------------------------------------------------- residual blocks

def _register_in_order(module: nn.Module, parts: Dict[str, nn.Module], order: Sequence[str]) -> None:
    """Registers `parts` on `module` in `order`: the order fixes `parameters()`, which the
    reference's EMA `shadow_params` list follows."""
    for name in order:
        if name in parts:
            setattr(module, name, parts[name])


class ResnetBlockDDPM(nn.Module):
    """DDPM residual block [B, in_ch, H, W] (+ temb [B, temb_dim]) -> [B, out_ch, H, W].

    h = Conv_1(Dropout(act(GN_1(Conv_0(act(GN_0(x))) + Dense_0(act(temb))))));
    out = shortcut(x) + h, divided by sqrt(2) if `skip_rescale`; shortcut is the identity, a 1x1
    NIN, or a 3x3 conv (`conv_shortcut`) when the channel count changes.

    `param_order` "ddpm" registers submodules as DDPM's block does (both GroupNorms first),
    "ddpmpp" as NCSN++'s does; the two differ only in `parameters()` order.
    """

    _ORDERS = {
        "ddpm": ("GroupNorm_0", "Conv_0", "Dense_0", "GroupNorm_1", "Dropout_0", "Conv_1", "Conv_2", "NIN_0"),
        "ddpmpp": ("GroupNorm_0", "Conv_0", "Dense_0", "GroupNorm_1", "Dropout_0", "Conv_1", "Conv_2", "NIN_0"),
    }

    def __init__(self, act: nn.Module, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None,
                 conv_shortcut: bool = False, dropout: float = 0.1, skip_rescale: bool = False,
                 init_scale: float = 0.0, num_groups: int | None = None, param_order: str = "ddpmpp"):
        super().__init__()
        out_ch = out_ch or in_ch
        parts = {"GroupNorm_0": group_norm(in_ch, num_groups), "Conv_0": conv3x3(in_ch, out_ch),
                 "GroupNorm_1": group_norm(out_ch, num_groups), "Dropout_0": Dropout(dropout),
                 "Conv_1": conv3x3(out_ch, out_ch, init_scale=init_scale)}
        if temb_dim is not None:
            parts["Dense_0"] = dense(temb_dim, out_ch)
        self.shortcut = None
        if in_ch != out_ch:
            self.shortcut = "Conv_2" if conv_shortcut else "NIN_0"
            parts[self.shortcut] = conv3x3(in_ch, out_ch) if conv_shortcut else NIN(in_ch, out_ch)
        if param_order not in self._ORDERS:
            raise ValueError(f"param_order must be one of {tuple(self._ORDERS)}, got {param_order!r}")
        _register_in_order(self, parts, self._ORDERS[param_order])
        self.act, self.skip_rescale = act, skip_rescale

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        if temb is not None:
            h += self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.shortcut is not None:
            x = getattr(self, self.shortcut)(x)
        out = x + h
        return out.mul_(_INV_SQRT2) if self.skip_rescale else out


class ResnetBlockBigGAN(nn.Module):
    """BigGAN residual block, optionally resampling by 2 (`up` or `down`).

    h = act(GN_0(x)); with up/down both h and x are resampled (FIR if `fir`, else nearest
    neighbour / 2x2 mean); h = Conv_1(Dropout(act(GN_1(Conv_0(h) + Dense_0(act(temb))))));
    out = Conv_2(x) + h (1x1 Conv_2 only if the shape changes), divided by sqrt(2) if `skip_rescale`.
    Shapes: [B, in_ch, H, W] -> [B, out_ch, H', W'] with H' = 2H, H/2 or H.
    """

    def __init__(self, act: nn.Module, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None,
                 up: bool = False, down: bool = False, dropout: float = 0.1, fir: bool = False,
                 fir_kernel: Sequence[float] = updown.DEFAULT_FIR_KERNEL, skip_rescale: bool = True,
                 init_scale: float = 0.0):
        super().__init__()
        if up and down:
            raise ValueError("ResnetBlockBigGAN: up and down cannot both be True")
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = dense(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        self.has_shortcut = in_ch != out_ch or up or down
        if self.has_shortcut:
            self.Conv_2 = conv1x1(in_ch, out_ch)
        self.act, self.up, self.down, self.fir, self.skip_rescale = act, up, down, fir, skip_rescale
        self.register_buffer("fir_kernel", updown.fir_kernel_1d(fir_kernel), persistent=False)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return updown.upsample_2d(x, self.fir_kernel) if self.fir else updown.naive_upsample_2d(x)
        if self.down:
            return updown.downsample_2d(x, self.fir_kernel) if self.fir else updown.naive_downsample_2d(x)
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self._resample(self.act(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h += self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.has_shortcut:
            x = self.Conv_2(x)
        out = x + h
        return out.mul_(_INV_SQRT2) if self.skip_rescale else out
