"""Training data of a super-resolution model (config.model.sr_from > 0): each high-resolution image x
comes with its low-resolution version, made and augmented here (Ho et al. 2021's noise-conditioning
augmentation), as the conditioning {"low_res": z, "aug_level": s} of `models.super_resolution`:

    y = the means of f x f blocks of x                (f = image_size / sr_from; samplers.AveragePooling)
    y <- gaussian_blur(y, w)  with probability training.sr_blur_prob, w ~ U[sr_blur_sigma_min, sr_blur_sigma_max]
    s ~ U[0, training.sr_aug_max]                    (0 when sr_aug_max = 0: no augmentation)
    z = alpha(s T) y + sigma(s T) e                  (the SDE's own forward marginal at s T)

Every draw comes from the training generator, in that order, so a resumed run sees the same batches.
At sampling a super-resolution stage gets z from the stage before (`samplers.cascade_sample`) or
from images (`condition` with a fixed level).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F

import samplers
import sde_lib

Tensor = torch.Tensor


def blur_kernels(width: Tensor, size: int) -> Tensor:
    """Normalised 1-D Gaussian kernels [B, size] of standard deviations width [B] (in pixels); a width
    of 0 is the identity (all weight on the centre tap). Each sums to 1, so a constant image is unchanged."""
    r = torch.arange(size, dtype=torch.float64, device=width.device) - (size - 1) / 2
    w = width.double().clamp_min(1e-12)[:, None]
    k = torch.exp(-0.5 * (r[None] / w) ** 2)
    return k / k.sum(1, keepdim=True)


def gaussian_blur(images: Tensor, width: Tensor) -> Tensor:
    """Each image of [B, C, H, W] blurred by a separable Gaussian of its own width [B], reflecting at the
    borders; the kernel spans 3 widths on each side (at least 3 taps)."""
    B, C, H, W = images.shape
    size = max(3, 2 * math.ceil(3 * float(width.max())) + 1)
    size = min(size, 2 * (min(H, W) - 1) + 1)  # reflection padding needs fewer pad pixels than the image has
    k = blur_kernels(width, size).to(images.dtype)                      # [B, size]
    pad = size // 2
    h = F.pad(images.reshape(1, B * C, H, W), (pad, pad, 0, 0), mode="reflect")
    h = F.conv2d(h, k.repeat_interleave(C, 0)[:, None, None, :], groups=B * C)
    h = F.pad(h, (0, 0, pad, pad), mode="reflect")
    h = F.conv2d(h, k.repeat_interleave(C, 0)[:, None, :, None], groups=B * C)
    return h.reshape(B, C, H, W)


class SuperResolutionData:
    """An image data set (`data_lib.ImageData`) whose batches carry their augmented low-resolution
    versions (module docstring); everything else is the wrapped data's."""

    def __init__(self, data, config, sde: sde_lib.SDE):
        self.data, self.sde, self.t = data, sde, config.training
        self.factor = config.data.image_size // config.model.sr_from

    def __getattr__(self, name):
        return getattr(self.data, name)

    def low_resolution(self, x: Tensor) -> Tensor:
        """The block means of x [B, C, H, W]: [B, C, sr_from, sr_from]."""
        return F.avg_pool2d(x, self.factor)

    def augment(self, y: Tensor, level: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """z = alpha(s T) y + sigma(s T) e for levels s [B] (`samplers.noise_to_level`)."""
        return samplers.noise_to_level(self.sde, y, level, generator)

    def condition(self, x: Tensor, generator: Optional[torch.Generator], level: Optional[float] = None) -> Dict[str, Tensor]:
        """{"low_res", "aug_level"} of the high-resolution batch x (on the CPU): the training distribution
        of blur and levels, or, with `level`, no blur and that level for every image."""
        B = x.shape[0]
        y = self.low_resolution(x)
        if level is None:
            blur = torch.rand(B, generator=generator) < self.t.sr_blur_prob
            width = self.t.sr_blur_sigma_min + (self.t.sr_blur_sigma_max - self.t.sr_blur_sigma_min) * torch.rand(
                B, generator=generator)
            if bool(blur.any()):
                y = torch.where(blur[:, None, None, None], gaussian_blur(y, width * blur), y)
            s = self.t.sr_aug_max * torch.rand(B, generator=generator)
        else:
            s = torch.full((B,), float(level))
        return {"low_res": self.augment(y, s, generator), "aug_level": s.to(x.dtype)}

    def train_batch(self, batch_size: int, generator: torch.Generator):
        x, cond = self.data.train_batch(batch_size, generator)
        return x, {**cond, **self.condition(x, generator)}


def sample_cond(config, data, n: int, start: int = 0) -> Dict[str, Tensor]:
    """The conditioning of samples start .. start + n of a super-resolution model: the low resolution of
    test images start, start + 1, ... (cycling), augmented at sampling.aug_level with its own noise (seed
    config.seed + 19 + start); {} for any other model."""
    if not isinstance(data, SuperResolutionData):
        return {}
    test = data.test
    x = test[torch.arange(start, start + n) % len(test)]
    return data.condition(x, torch.Generator().manual_seed(config.seed + 19 + start), level=config.sampling.aug_level)


def wrap(config, data, sde: sde_lib.SDE):
    """`data` as super-resolution data when config.model.sr_from > 0, else unchanged."""
    return SuperResolutionData(data, config, sde) if config.model.get("sr_from", 0) else data
