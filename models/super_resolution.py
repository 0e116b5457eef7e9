"""What turns a U-Net into a super-resolution model (Ho et al. 2021, guided-diffusion's SuperResModel):
the low-resolution image, up-sampled to the network's size, concatenated to its input channels, and the
level of its noise-conditioning augmentation embedded and added to the noise embedding.

    forward(x, c_noise, low_res=z [B, C, h, w], aug_level=s [B] in [0, 1])
    h_in = cat([x, up(z)], channels)                     up: bilinear or nearest, h -> image_size
    temb = temb + Dense(act(Dense(sinusoidal(999 s))))   the last Dense zero-initialised

The networks register this module last, so an SR network's other parameters are drawn (and ordered)
as its plain counterpart's.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import layers
from models.embeddings import sinusoidal_embedding

Tensor = torch.Tensor
UPSAMPLING = ("bilinear", "nearest")
KEYS = ("low_res", "aug_level")


def check_sr_args(sr_from: int, image_size: int, upsample: str) -> int:
    """sr_from (0: not a super-resolution network) if it is an int in [1, image_size) dividing image_size."""
    if isinstance(sr_from, bool) or not isinstance(sr_from, int) or sr_from < 0:
        raise ValueError(f"sr_from must be an int >= 0 (0: not a super-resolution network), got {sr_from!r}")
    if sr_from and (sr_from >= image_size or image_size % sr_from):
        raise ValueError(f"sr_from = {sr_from} must be a low resolution below image_size = {image_size} that divides "
                         "it (e.g. 16 or 8 for 32)")
    if upsample not in UPSAMPLING:
        raise ValueError(f"sr_upsample must be one of {list(UPSAMPLING)}, got {upsample!r}")
    return sr_from


class LowResConditioning(nn.Module):
    """The low-resolution input and its augmentation level (module docstring) for a network of
    `num_channels` channels at `image_size`, with a noise embedding of width `temb_dim`."""

    def __init__(self, sr_from: int, image_size: int, num_channels: int, nf: int, temb_dim: int,
                 upsample: str = "bilinear", act=None):
        super().__init__()
        check_sr_args(sr_from, image_size, upsample)
        self.sr_from, self.image_size, self.num_channels, self.nf, self.upsample = (
            sr_from, image_size, num_channels, nf, upsample)
        self.act = act or nn.SiLU()
        self.dense_0, self.dense_1 = layers.dense(nf, temb_dim), layers.dense(temb_dim, temb_dim)
        with torch.no_grad():  # zero at first: training starts from the network without the level
            self.dense_1.weight.zero_()

    def concat(self, h: Tensor, low_res: Tensor) -> Tensor:
        """[h, up(low_res)] on the channels: h [B, C, H, W], low_res [B, C, sr_from, sr_from]."""
        want = (h.shape[0], self.num_channels, self.sr_from, self.sr_from)
        if low_res is None or tuple(low_res.shape) != want:
            got = None if low_res is None else tuple(low_res.shape)
            raise ValueError(f"this super-resolution network needs low_res of shape {want} (its low resolution "
                             f"{self.sr_from}), got {got}")
        kw = {"align_corners": False} if self.upsample == "bilinear" else {}
        up = F.interpolate(low_res.to(h.dtype), size=(self.image_size, self.image_size), mode=self.upsample, **kw)
        return torch.cat([h, up], dim=1)

    def embed(self, aug_level, batch: int, device) -> Tensor:
        """The augmentation level's embedding [B, temb_dim]; aug_level [B] (or None: level 0)."""
        level = torch.zeros(batch, device=device) if aug_level is None else torch.as_tensor(aug_level, device=device)
        level = level.reshape(-1).expand(batch).float()
        return self.dense_1(self.act(self.dense_0(sinusoidal_embedding(999 * level, self.nf))))
