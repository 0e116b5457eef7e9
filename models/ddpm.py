"""The DDPM U-Net (Ho et al. 2020), laid out as score_sde_pytorch's `ddpm` model so its
checkpoints load: every submodule in one `all_modules` ModuleList, in the reference's order."""
from __future__ import annotations

from typing import Iterator, List, Sequence

import torch
import torch.nn as nn

from models import layers
from models.embeddings import LabelEmbedding, check_label_args, embed_labels, label_keys, sinusoidal_embedding
from models.ncsnpp import check_unet_args, check_unet_inputs
from models.registry import register_model
from models.super_resolution import KEYS as SR_KEYS, LowResConditioning, check_sr_args
from models.variance_head import check_learn_variance, output_channels, scale_mean_by_sigma

Tensor = torch.Tensor


@register_model(name="ddpm")
class DDPM(nn.Module):
    """DDPM U-Net: x [B, C, H, W], cond [B] (a time label: the step index, or 999 t) -> [B, C, H, W].

    temb = Dense(act(Dense(sinusoidal(cond)))); per resolution level i (image_size / 2**i,
    channels nf * ch_mult[i]): num_res_blocks residual blocks (+ attention at attn_resolutions)
    and a 2x downsample; middle: block, attention, block; up: num_res_blocks + 1 blocks on the
    concatenated skips (+ attention) and a nearest-neighbour 2x upsample; then GroupNorm, act,
    3x3 conv. If not `centered`, inputs in [0, 1] are mapped to 2x - 1; with `scale_by_sigma`
    the output is divided by cond (which must then be sigma).

    GroupNorm uses `num_groups` groups everywhere (the reference fixes 32, so channel counts must
    be multiples of it; smaller values allow narrow test networks). As in the reference, the blocks are
    always conditioned on cond.
    The defaults are the reference's CIFAR-10 configuration.

    With `num_classes` = K > 0 the network is class-conditional, as ADM (Dhariwal & Nichol 2021):
    every block reads temb + label_embed(y), and forward takes y (int64 [B] in [0, K]; K and None
    mean no label), each label dropped to K with probability `p_uncond` in training (`LabelEmbedding`).
    `label_embed` is registered after `all_modules`; with K = 0 (the default) the network takes no y (`cond_keys` = ()) and
    the parameters are the reference's.
    With `learn_variance` the output has 2C channels, the prediction then v (`models.variance_head`).
    """

    def __init__(self, *, nf: int = 128, ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1, resamp_with_conv: bool = True,
                 scale_by_sigma: bool = False, nonlinearity: str = "swish",
                 centered: bool = True, num_channels: int = 3, image_size: int = 32, num_groups: int = 32,
                 num_classes: int = 0, p_uncond: float = 0.0, learn_variance: bool = False, sr_from: int = 0,
                 sr_upsample: str = "bilinear", sr_p_uncond: float = 0.0):
        super().__init__()
        ch_mult = tuple(ch_mult)
        check_label_args(num_classes, p_uncond)
        check_unet_args(nf, ch_mult, num_res_blocks, image_size, num_channels, dropout, nonlinearity=nonlinearity)
        self.sr_from = check_sr_args(sr_from, image_size, sr_upsample, sr_p_uncond)
        self.learn_variance = check_learn_variance(learn_variance)
        bad = sorted({nf * m for m in ch_mult if (nf * m) % num_groups})
        if not isinstance(num_groups, int) or num_groups < 1 or bad:
            raise ValueError(f"num_groups={num_groups!r} must be a positive int dividing every channel count "
                             f"nf * ch_mult = {[nf * m for m in ch_mult]} (not {bad})")
        self.nf, self.ch_mult, self.num_res_blocks = nf, ch_mult, num_res_blocks
        self.num_channels, self.image_size = num_channels, image_size
        self.centered, self.scale_by_sigma = centered, scale_by_sigma
        self.act = layers.get_act(nonlinearity)
        self.attn_at = [image_size // 2 ** i in tuple(attn_resolutions) for i in range(len(ch_mult))]
        self._block_args = dict(act=self.act, temb_dim=4 * nf, dropout=dropout, num_groups=num_groups,
                                param_order="ddpm", skip_rescale=False, init_scale=0.0)

        modules: List[nn.Module] = [layers.dense(nf, 4 * nf), layers.dense(4 * nf, 4 * nf),
                                    layers.conv3x3(num_channels * (2 if sr_from else 1), nf)]
        skip_channels, in_ch = self._build_down(modules, resamp_with_conv, num_groups)
        modules += [self._block(in_ch), layers.AttnBlock(in_ch, num_groups=num_groups), self._block(in_ch)]
        in_ch = self._build_up(modules, in_ch, skip_channels, resamp_with_conv, num_groups)
        modules += [layers.group_norm(in_ch, num_groups), layers.conv3x3(in_ch, output_channels(num_channels, learn_variance), init_scale=0.0)]
        self.all_modules = nn.ModuleList(modules)
        del self._block_args
        self.num_classes, self.cond_keys = num_classes, label_keys(num_classes)
        if num_classes:
            # Registered (and drawn) last: the reference's parameters, their order (which the EMA's
            # shadow_params follow) and their initial values are those of the unconditional network.
            self.label_embed = LabelEmbedding(num_classes, 4 * nf, p_uncond)
        if sr_from:  # registered after the label embedding, for the same reason
            self.low_res = LowResConditioning(sr_from, image_size, num_channels, nf, 4 * nf, sr_upsample, self.act,
                                              sr_p_uncond)
            self.cond_keys = self.cond_keys + SR_KEYS

    def _block(self, in_ch: int, out_ch: int | None = None) -> nn.Module:
        return layers.ResnetBlockDDPM(in_ch=in_ch, out_ch=out_ch, **self._block_args)

    def _build_down(self, modules: List[nn.Module], with_conv: bool, groups: int):
        skip_channels, in_ch = [self.nf], self.nf
        for i, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                modules.append(self._block(in_ch, self.nf * mult))
                in_ch = self.nf * mult
                if self.attn_at[i]:
                    modules.append(layers.AttnBlock(in_ch, num_groups=groups))
                skip_channels.append(in_ch)
            if i != len(self.ch_mult) - 1:
                modules.append(layers.Downsample(in_ch, with_conv=with_conv))
                skip_channels.append(in_ch)
        return skip_channels, in_ch

    def _build_up(self, modules: List[nn.Module], in_ch: int, skip_channels: List[int], with_conv: bool,
                  groups: int) -> int:
        for i in reversed(range(len(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                modules.append(self._block(in_ch + skip_channels.pop(), self.nf * self.ch_mult[i]))
                in_ch = self.nf * self.ch_mult[i]
            if self.attn_at[i]:
                modules.append(layers.AttnBlock(in_ch, num_groups=groups))
            if i != 0:
                modules.append(layers.Upsample(in_ch, with_conv=with_conv))
        return in_ch

    def forward(self, x: Tensor, cond: Tensor, y: Tensor | None = None, low_res: Tensor | None = None,
                aug_level: Tensor | None = None, low_res_null: Tensor | None = None) -> Tensor:
        """x [B, C, H, W], cond [B], class labels y [B] (None: the null label), and for a super-resolution
        network low_res [B, C, sr_from, sr_from], aug_level [B] and low_res_null [B] (bool: the samples
        whose low resolution is dropped; `LowResConditioning`) -> [B, C, H, W]."""
        check_unet_inputs(x, cond, self.num_channels, self.image_size)
        mods = iter(self.all_modules)
        temb = next(mods)(sinusoidal_embedding(cond, self.nf))
        temb = next(mods)(self.act(temb))
        label = embed_labels(self, y, x.shape[0])
        if label is not None:
            temb = temb + label
        h = x if self.centered else 2 * x - 1.0  # data in [0, 1] -> [-1, 1]
        if self.sr_from:
            h, temb = self.low_res(h, temb, low_res if self.centered or low_res is None else 2 * low_res - 1.0,
                                   aug_level, low_res_null)
        elif low_res is not None or aug_level is not None or low_res_null is not None:
            raise TypeError("this network is not a super-resolution network (sr_from = 0): it takes no low_res")
        hs = self._down(next(mods)(h), temb, mods)
        h = next(mods)(hs[-1], temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)
        h = self._up(h, hs, temb, mods)
        norm, conv = next(mods), next(mods)
        h = conv(self.act(norm(h)))
        if next(mods, None) is not None:
            raise RuntimeError("DDPM.forward left modules unused: construction and forward disagree")
        return scale_mean_by_sigma(h, cond, self.num_channels) if self.scale_by_sigma else h

    def _down(self, h: Tensor, temb: Tensor, mods: Iterator[nn.Module]) -> List[Tensor]:
        hs = [h]
        for i in range(len(self.ch_mult)):
            for _ in range(self.num_res_blocks):
                h = next(mods)(hs[-1], temb)
                if self.attn_at[i]:
                    h = next(mods)(h)
                hs.append(h)
            if i != len(self.ch_mult) - 1:
                hs.append(next(mods)(hs[-1]))
        return hs

    def _up(self, h: Tensor, hs: List[Tensor], temb: Tensor, mods: Iterator[nn.Module]) -> Tensor:
        for i in reversed(range(len(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, hs.pop()], dim=1), temb)
            if self.attn_at[i]:
                h = next(mods)(h)
            if i != 0:
                h = next(mods)(h)
        return h
