"""What turns a U-Net into a super-resolution model (Ho et al. 2021, guided-diffusion's SuperResModel):
the low-resolution image, up-sampled to the network's size, concatenated to its input channels, and the
level of its noise-conditioning augmentation embedded and added to the noise embedding.

    forward(x, c_noise, low_res=z [B, C, h, w], aug_level=s [B] in [0, 1], low_res_null=n [B] bool)
    h_in = cat([x, up(z)], channels)                     up: bilinear or nearest, h -> image_size
    temb = temb + Dense(act(Dense(sinusoidal(999 s))))   the last Dense zero-initialised

A network trained with `p_uncond` > 0 also learns the unconditional score, for classifier-free guidance
on the low resolution (`samplers.low_res_cfg_score`): each training sample's low resolution is dropped
with probability p_uncond (and wherever low_res_null is True, and for every sample when low_res is
None): its up-sampled channels are zeros and a learned null vector replaces the level's embedding.

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
KEYS = ("low_res", "aug_level", "low_res_null")


def check_sr_args(sr_from: int, image_size: int, upsample: str, p_uncond: float = 0.0) -> int:
    """sr_from (0: not a super-resolution network) if it is an int in [1, image_size) dividing image_size,
    `upsample` a known mode and p_uncond (the probability of dropping the low resolution) in [0, 1)."""
    if isinstance(sr_from, bool) or not isinstance(sr_from, int) or sr_from < 0:
        raise ValueError(f"sr_from must be an int >= 0 (0: not a super-resolution network), got {sr_from!r}")
    if sr_from and (sr_from >= image_size or image_size % sr_from):
        raise ValueError(f"sr_from = {sr_from} must be a low resolution below image_size = {image_size} that divides "
                         "it (e.g. 16 or 8 for 32)")
    if upsample not in UPSAMPLING:
        raise ValueError(f"sr_upsample must be one of {list(UPSAMPLING)}, got {upsample!r}")
    if isinstance(p_uncond, bool) or not isinstance(p_uncond, (int, float)) or not 0 <= p_uncond < 1:
        raise ValueError(f"sr_p_uncond (the probability of dropping the low resolution in training) must be in "
                         f"[0, 1), got {p_uncond!r}")
    return sr_from


class LowResConditioning(nn.Module):
    """The low-resolution input and its augmentation level (module docstring) for a network of
    `num_channels` channels at `image_size`, with a noise embedding of width `temb_dim`."""

    def __init__(self, sr_from: int, image_size: int, num_channels: int, nf: int, temb_dim: int,
                 upsample: str = "bilinear", act=None, p_uncond: float = 0.0):
        super().__init__()
        check_sr_args(sr_from, image_size, upsample, p_uncond)
        self.sr_from, self.image_size, self.num_channels, self.nf, self.upsample = (
            sr_from, image_size, num_channels, nf, upsample)
        self.p_uncond = float(p_uncond)
        self.act = act or nn.SiLU()
        self.dense_0, self.dense_1 = layers.dense(nf, temb_dim), layers.dense(temb_dim, temb_dim)
        with torch.no_grad():  # zero at first: training starts from the network without the level
            self.dense_1.weight.zero_()
        if self.p_uncond > 0:  # only then: a network without it keeps its parameters (and checkpoints)
            self.null = nn.Parameter(torch.zeros(temb_dim))

    def forward(self, h: Tensor, temb: Tensor | None, low_res: Tensor | None, aug_level, low_res_null):
        """(cat([h, up(low_res)]), temb + the level's or the null embedding): h [B, C, H, W], low_res
        [B, C, sr_from, sr_from] (None: dropped for every sample), aug_level [B] (None: level 0),
        low_res_null [B] bool (None: none dropped but those training drops)."""
        B = h.shape[0]
        null = self.dropped(low_res, low_res_null, B, h.device)
        if low_res is None:
            low_res = h.new_zeros(B, self.num_channels, self.sr_from, self.sr_from)
        h = self.concat(h, low_res, null)
        emb = self.embed(aug_level, B, h.device)
        if null is not None:
            emb = torch.where(null[:, None], self.null.to(emb.dtype), emb)
        return h, emb if temb is None else temb + emb

    def dropped(self, low_res: Tensor | None, low_res_null, batch: int, device) -> Tensor | None:
        """Which samples' low resolution is dropped, [B] bool, or None where none is."""
        if self.p_uncond == 0 and (low_res is None or low_res_null is not None):
            what = "low_res = None" if low_res is None else "low_res_null"
            raise ValueError(f"{what} asks for the unconditional score, but this super-resolution network was "
                             "trained without dropping its low resolution (model.sr_p_uncond = 0)")
        if low_res is None:
            return torch.ones(batch, dtype=torch.bool, device=device)
        null = None
        if low_res_null is not None:
            null = torch.as_tensor(low_res_null, device=device)
            if null.dtype != torch.bool or tuple(null.shape) != (batch,):
                raise ValueError(f"low_res_null must be a bool tensor of shape [{batch}], got "
                                 f"{null.dtype} {tuple(null.shape)}")
        if self.training and self.p_uncond > 0:  # the global RNG, as label dropout: resumed runs drop the same
            drop = torch.rand(batch, device=device) < self.p_uncond
            null = drop if null is None else null | drop
        return null

    def concat(self, h: Tensor, low_res: Tensor, null: Tensor | None = None) -> Tensor:
        """[h, up(low_res)] on the channels, zeros where `null`: h [B, C, H, W], low_res [B, C, sr_from, sr_from]."""
        want = (h.shape[0], self.num_channels, self.sr_from, self.sr_from)
        if tuple(low_res.shape) != want:
            raise ValueError(f"this super-resolution network needs low_res of shape {want} (its low resolution "
                             f"{self.sr_from}), got {tuple(low_res.shape)}")
        kw = {"align_corners": False} if self.upsample == "bilinear" else {}
        up = F.interpolate(low_res.to(h.dtype), size=(self.image_size, self.image_size), mode=self.upsample, **kw)
        if null is not None:
            up = up.masked_fill(null[:, None, None, None], 0.0)
        return torch.cat([h, up], dim=1)

    def embed(self, aug_level, batch: int, device) -> Tensor:
        """The augmentation level's embedding [B, temb_dim]; aug_level [B] (or None: level 0)."""
        level = torch.zeros(batch, device=device) if aug_level is None else torch.as_tensor(aug_level, device=device)
        level = level.reshape(-1).expand(batch).float()
        return self.dense_1(self.act(self.dense_0(sinusoidal_embedding(999 * level, self.nf))))
