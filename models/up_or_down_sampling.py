"""FIR up- and down-sampling of image batches, as NCSN++ uses it (StyleGAN2's `upfirdn2d`).

A resampling filter is given as a 1-D kernel k of length K (default [1, 3, 3, 1]); the 2-D filter
is the separable outer(k, k) / sum(k)**2, so a constant image keeps its value (times `gain`) away
from the zero-padded borders.

Semantics (for one plane, one axis; the 2-D case is the same along both axes), with `upfirdn`
meaning: insert up-1 zeros after every sample, zero-pad by (pad0, pad1), convolve (true
convolution, kernel flipped) with the filter, keep every down-th sample:

    upsample_2d(x)   = upfirdn(x, k * gain * f**2, up=f,   pad=((p+1)//2 + f-1, p//2)), p = K - f
    downsample_2d(x) = upfirdn(x, k * gain,        down=f, pad=((p+1)//2, p//2)),       p = K - f

so an [N, C, H, W] batch becomes [N, C, H*f, W*f] or [N, C, H//f, W//f].

Every plane of the batch is filtered at once by one depthwise (groups=C) convolution or
transposed convolution: a one-channel convolution over every batch x channel plane is an order
of magnitude slower on CPU (it falls onto a slow oneDNN path).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_FIR_KERNEL = (1, 3, 3, 1)


def fir_kernel_1d(k: Sequence[float], dtype=torch.float32, device=None) -> torch.Tensor:
    """The normalised 1-D filter k / sum(k), shape [K]; its outer product with itself sums to 1."""
    kt = torch.as_tensor(k, dtype=torch.float64)
    if kt.ndim != 1 or kt.numel() == 0:
        raise ValueError(f"fir_kernel must be a non-empty 1-D sequence of taps, got shape {tuple(kt.shape)}")
    if kt.sum().abs() < 1e-12:
        raise ValueError(f"fir_kernel taps must not sum to zero, got {kt.tolist()}")
    return (kt / kt.sum()).to(dtype=dtype, device=device)


def _check_factor(factor: int) -> None:
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")


def _depthwise_filter(k1d: torch.Tensor, channels: int, gain: float, dtype) -> torch.Tensor:
    """outer(k1d, k1d) * gain, repeated as a [C, 1, K, K] depthwise weight."""
    k2d = torch.outer(k1d, k1d).to(dtype) * gain
    return k2d.expand(channels, 1, *k2d.shape)


def _fir_filter(x: torch.Tensor, k1d: torch.Tensor, gain: float, pad0: int, pad1: int) -> torch.Tensor:
    """Stride-1 true convolution of every plane with outer(k, k) * gain after zero-padding (pad0, pad1)."""
    w = _depthwise_filter(k1d.flip(0), x.shape[1], gain, x.dtype)
    if pad0 != pad1:
        x = F.pad(x, (pad0, pad1, pad0, pad1))
        pad0 = 0
    return F.conv2d(x, w, padding=pad0, groups=x.shape[1])


def upsample_2d(x: torch.Tensor, k1d: torch.Tensor, factor: int = 2, gain: float = 1.0) -> torch.Tensor:
    """FIR upsampling [N, C, H, W] -> [N, C, H*f, W*f] (see the module docstring).

    Zero insertion followed by the filter is exactly a strided transposed convolution:
    y[f*i + a] += x[i] * k[a], cropped by pad1 on the left (and pad0 + 1 - f on the right).
    """
    _check_factor(factor)
    n, c, h, w_ = x.shape
    kk = k1d.numel()
    p = kk - factor
    pad0 = (p + 1) // 2 + factor - 1
    crop_left = kk - 1 - pad0
    w = _depthwise_filter(k1d, c, gain * factor ** 2, x.dtype)
    y = F.conv_transpose2d(x, w, stride=factor, padding=crop_left, groups=c)
    if y.shape[-1] != w_ * factor or y.shape[-2] != h * factor:  # odd-length kernels crop one more on the right
        y = y[..., : h * factor, : w_ * factor]
    return y


def downsample_2d(x: torch.Tensor, k1d: torch.Tensor, factor: int = 2, gain: float = 1.0) -> torch.Tensor:
    """FIR downsampling [N, C, H, W] -> [N, C, H//f, W//f] (see the module docstring).

    Equal padding pad0 on both sides gives the same samples as (pad0, pad1): pad0 - pad1 <= 1 and
    the extra right-hand zero is never reached by a kept output.
    """
    _check_factor(factor)
    c = x.shape[1]
    p = k1d.numel() - factor
    w = _depthwise_filter(k1d.flip(0), c, gain, x.dtype)
    y = F.conv2d(x, w, stride=factor, padding=(p + 1) // 2, groups=c)
    out_h, out_w = (x.shape[-2] + p - k1d.numel()) // factor + 1, (x.shape[-1] + p - k1d.numel()) // factor + 1
    if y.shape[-2] != out_h or y.shape[-1] != out_w:
        y = y[..., :out_h, :out_w]
    return y


def upsample_conv_2d(x: torch.Tensor, weight: torch.Tensor, k1d: torch.Tensor, factor: int = 2,
                     gain: float = 1.0) -> torch.Tensor:
    """Fused FIR upsampling and convolution: [N, Cin, H, W] -> [N, Cout, H*f, W*f].

    weight: [Cout, Cin, kw, kw], kw odd. Math (StyleGAN2): the zero-inserted input is correlated
    with `weight` over its full support (a stride-f transposed convolution with the spatially
    flipped, in/out-swapped weight), then filtered by k * gain * f**2 with padding
    ((p+1)//2 + f-1, p//2 + 1), p = (K - f) - (kw - 1). The convolution runs at the low
    resolution, a quarter of the work of upsampling first.
    """
    _check_factor(factor)
    kw = weight.shape[-1]
    p = (k1d.numel() - factor) - (kw - 1)
    w_t = weight.flip(-2, -1).transpose(0, 1)
    y = F.conv_transpose2d(x, w_t, stride=factor)
    return _fir_filter(y, k1d, gain * factor ** 2, (p + 1) // 2 + factor - 1, p // 2 + 1)


def conv_downsample_2d(x: torch.Tensor, weight: torch.Tensor, k1d: torch.Tensor, factor: int = 2,
                       gain: float = 1.0, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Fused FIR filtering and strided convolution: [N, Cin, H, W] -> [N, Cout, H//f, W//f].

    Math (StyleGAN2): filter by k * gain with padding ((p+1)//2, p//2), p = (K - f) + (kw - 1),
    then a VALID convolution with `weight` [Cout, Cin, kw, kw] (plus `bias` [Cout]) and stride f.
    """
    _check_factor(factor)
    kw = weight.shape[-1]
    p = (k1d.numel() - factor) + (kw - 1)
    y = _fir_filter(x, k1d, gain, (p + 1) // 2, p // 2)
    return F.conv2d(y, weight, bias, stride=factor)


def _box(factor: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((factor,), 1.0 / factor, dtype=like.dtype, device=like.device)


def naive_upsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Nearest-neighbour upsampling [N, C, H, W] -> [N, C, H*f, W*f]: each pixel becomes an f x f block.

    That is FIR upsampling with the box filter [1] * f; the depthwise transposed convolution beats
    both `interpolate` and expand-and-copy on CPU, backward pass included.
    """
    return upsample_2d(x, _box(factor, x), factor)


def naive_downsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Mean over each f x f block: [N, C, H, W] -> [N, C, H//f, W//f] (FIR with the box filter;
    the depthwise convolution is about twice as fast as `avg_pool2d` on CPU)."""
    return downsample_2d(x, _box(factor, x), factor)


class Conv2d(nn.Module):
    """A kw x kw convolution, optionally fused with FIR upsampling (`up`) or downsampling (`down`).

    Parameters `weight` [out_ch, in_ch, kw, kw] and `bias` [out_ch], initialised by `kernel_init`
    (a function of the shape) or zeros. Without up/down it is a 'same'-padded convolution.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, up: bool = False, down: bool = False,
                 resample_kernel: Sequence[float] = DEFAULT_FIR_KERNEL, use_bias: bool = True,
                 kernel_init=None):
        super().__init__()
        if up and down:
            raise ValueError("Conv2d: up and down cannot both be True")
        if kernel < 1 or kernel % 2 != 1:
            raise ValueError(f"Conv2d: kernel must be a positive odd int, got {kernel}")
        shape = (out_ch, in_ch, kernel, kernel)
        self.weight = nn.Parameter(kernel_init(shape) if kernel_init is not None else torch.zeros(shape))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if use_bias else None
        self.register_buffer("fir", fir_kernel_1d(resample_kernel), persistent=False)
        self.up, self.down, self.kernel = up, down, kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            return conv_downsample_2d(x, self.weight, self.fir, bias=self.bias)
        if not self.up:
            return F.conv2d(x, self.weight, self.bias, padding=self.kernel // 2)
        # The bias goes after the FIR filter: filtering a constant is not constant at the borders.
        x = upsample_conv_2d(x, self.weight, self.fir)
        return x if self.bias is None else x + self.bias.view(1, -1, 1, 1)
