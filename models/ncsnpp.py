"""NCSN++ and DDPM++ (Song et al. 2021, "Score-Based Generative Modeling through SDEs").

One U-Net class with the paper's options; DDPM++ is the same class with the VP defaults. The
submodules sit in one `all_modules` ModuleList, in the reference's order, except the
parameter-free resamplers of the image pyramids (`pyramid_downsample`, `pyramid_upsample`), which
the reference also keeps outside the list; so parameter names and shapes equal score_sde_pytorch's
and its checkpoints load with `models.checkpoint_convert.load_reference_state_dict`.
"""
from __future__ import annotations

import math
from typing import Dict, Iterator, List, Sequence, Tuple

import torch
import torch.nn as nn

from models import layers
from models import up_or_down_sampling as updown
from models.attention import (KEYS as CONTEXT_KEYS, Context, ContextConditioning, check_context_args, context_inputs,
                              context_levels)
from models.embeddings import (GaussianFourierProjection, LabelEmbedding, check_label_args, embed_labels, label_keys,
                               sinusoidal_embedding)
from models.registry import register_model
from models.super_resolution import KEYS as SR_KEYS, LowResConditioning, check_sr_args
from models.variance_head import check_learn_variance, output_channels, scale_mean_by_sigma

Tensor = torch.Tensor
_INV_SQRT2 = 1.0 / math.sqrt(2.0)

CHOICES = {
    "resblock_type": ("ddpm", "biggan"),
    "progressive": ("none", "output_skip", "residual"),
    "progressive_input": ("none", "input_skip", "residual"),
    "progressive_combine": ("sum", "cat"),
    "embedding_type": ("fourier", "positional"),
    "attention_type": ("ddpm",),
    "nonlinearity": layers.ACTIVATIONS,
}


def check_unet_args(nf: int, ch_mult: Sequence[int], num_res_blocks: int, image_size: int,
                    num_channels: int, dropout: float, **choices: str) -> None:
    """Raise ValueError naming the first argument outside what the U-Nets support."""
    for name, value in choices.items():
        if value not in CHOICES[name]:
            raise ValueError(f"{name} must be one of {CHOICES[name]}, got {value!r}")
    if not isinstance(nf, int) or nf < 4:
        raise ValueError(f"nf must be an int >= 4 (GroupNorm needs 4 channels a group), got {nf!r}")
    if len(ch_mult) == 0 or any(not isinstance(m, int) or m < 1 for m in ch_mult):
        raise ValueError(f"ch_mult must be a non-empty sequence of positive ints, got {ch_mult!r}")
    if not isinstance(num_res_blocks, int) or num_res_blocks < 1:
        raise ValueError(f"num_res_blocks must be a positive int, got {num_res_blocks!r}")
    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
        # any count: images have 1 or 3, the latents of an autoencoder e.g. 4
        raise ValueError(f"num_channels must be an int >= 1, got {num_channels!r}")
    depth = 2 ** (len(ch_mult) - 1)
    if not isinstance(image_size, int) or image_size < depth or image_size % depth:
        raise ValueError(f"image_size must be a positive multiple of 2**(len(ch_mult)-1) = {depth} "
                         f"(ch_mult={tuple(ch_mult)}), got {image_size!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")


def blocks_per_level(num_res_blocks, levels: int) -> Tuple[int, ...]:
    """num_res_blocks as one positive int per level: an int for every level, or a sequence of `levels`
    of them (Imagen's efficient U-Net puts more blocks at the low resolutions, e.g. (1, 2, 4))."""
    per = (num_res_blocks,) * levels if isinstance(num_res_blocks, int) else tuple(num_res_blocks)
    if len(per) != levels or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in per):
        raise ValueError(f"num_res_blocks must be a positive int or one positive int per level of ch_mult "
                         f"({levels} levels), got {num_res_blocks!r}")
    return per


def check_unet_inputs(x: Tensor, cond: Tensor, num_channels: int, image_size: int) -> None:
    """Raise ValueError unless x is [B, num_channels, image_size, image_size] and cond is [B]."""
    want = (num_channels, image_size, image_size)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        raise ValueError(f"x must have shape [B, {want[0]}, {want[1]}, {want[2]}], got {tuple(x.shape)}")
    if cond.shape != (x.shape[0],):
        raise ValueError(f"cond must have shape [B] = [{x.shape[0]}], got {tuple(cond.shape)}")


def _check_group_norm_channels(nf: int, ch_mult: Sequence[int], cat: bool) -> None:
    """GroupNorm splits C channels into min(C // 4, 32) groups, which must divide C."""
    for c in {nf * m * k for m in ch_mult for k in ((1, 2) if cat else (1,))}:
        if c % min(c // 4, 32):
            raise ValueError(f"nf={nf} with ch_mult={tuple(ch_mult)} gives {c} channels, not divisible into "
                             f"min({c} // 4, 32) = {min(c // 4, 32)} GroupNorm groups; choose nf, e.g. a multiple of 8")


@register_model(name="ncsnpp")
class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ U-Net: x [B, C, H, W], cond [B] -> [B, C, H, W].

    cond is sigma (VE; `embedding_type="fourier"` embeds log sigma) or a time label such as 999 t
    (VP; `embedding_type="positional"` embeds it as given). With `scale_by_sigma` the output is
    divided by cond (then sigma), so the network's raw output has unit scale. If not `centered`,
    inputs in [0, 1] are mapped to 2x - 1 first.

    Layout, per resolution level i (image_size / 2**i, channels nf * ch_mult[i]):
    down: num_res_blocks residual blocks (+ attention where the resolution is in attn_resolutions),
    then a 2x downsample (BigGAN block with down=True, or a DDPM Downsample) and the input pyramid
    step (`progressive_input`); middle: block, attention, block; up: num_res_blocks + 1 blocks on
    the concatenated skip features, attention, the output pyramid step (`progressive`) and a 2x
    upsample; then GroupNorm, activation, 3x3 conv. Skip sums are divided by sqrt(2) when
    `skip_rescale`. The defaults are the reference's CIFAR-10 VE configuration.

    Imagen's efficient U-Net (Saharia et al. 2022, appendix B), each option on its own:
    `num_res_blocks` one int per level (more blocks at low resolution, where they are cheap);
    `resample_first`: every level down-samples BEFORE its blocks and up-samples AFTER them, so level i
    runs at image_size / 2**(i+1) and no block runs at full resolution (the first convolution's output
    is then no skip feature); `skip_scale` multiplies each concatenated skip feature (Imagen: 1/sqrt(2)).
    `resample_first` needs progressive = progressive_input = "none".

    With `progressive_input="input_skip"` the image pyramid is x, then `pyramid_downsample` of it
    once per level; with `progressive="output_skip"` the output pyramid is `pyramid_upsample` of the
    previous level's plus that level's GroupNorm-act-conv head. Both resamplers are 2x FIR (or box)
    filters without weights, held outside `all_modules` so its indices match the reference's.

    With `num_classes` = K > 0 the network is class-conditional, as ADM (Dhariwal & Nichol 2021):
    the embedding every residual block reads is temb = Dense(act(Dense(embed(cond)))) + label_embed(y)
    (label_embed alone when not `conditional`), and forward takes y (int64 [B] in [0, K]; K and None
    mean no label), each label dropped to K with probability `p_uncond` in training (`LabelEmbedding`).
    `label_embed` is registered after `all_modules`; with K = 0 (the default) the network takes no y (`cond_keys` = ()) and
    the parameters are the reference's.
    With `learn_variance` the output has 2C channels, the prediction then v (`models.variance_head`).

    With `context_dim` = D > 0 the network reads a context sequence by cross-attention (latent diffusion):
    forward takes context [B, L, D] and context_mask [B, L] (bool, True: a real token; `models.attention`).
    At each resolution in `context_resolutions` a SpatialTransformer (`context_heads` heads of width
    `context_dim_head`, 0: channels // heads; `context_depth` blocks) follows every residual block of the
    down and up paths (after the block's attention, if any), and the middle attention when the lowest
    resolution is listed; with `context_pool` the last real token, through a Linear, joins temb (GLIDE).
    Those layers start as the identity and sit in `context_layers`, registered after `label_embed` and
    `low_res`, so `all_modules` and the other parameters (order, initial values) are the network's without
    context. `max_context_len` > 0 refuses longer contexts.
    """

    def __init__(self, *, nf: int = 128, ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 4,
                 attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1, resamp_with_conv: bool = True,
                 conditional: bool = True, fir: bool = True, fir_kernel: Sequence[float] = (1, 3, 3, 1),
                 skip_rescale: bool = True, resblock_type: str = "biggan", progressive: str = "none",
                 progressive_input: str = "residual", progressive_combine: str = "sum",
                 attention_type: str = "ddpm", init_scale: float = 0.0, fourier_scale: float = 16.0,
                 conv_size: int = 3, embedding_type: str = "fourier", scale_by_sigma: bool = True,
                 nonlinearity: str = "swish", centered: bool = False, num_channels: int = 3,
                 image_size: int = 32, num_classes: int = 0, p_uncond: float = 0.0, learn_variance: bool = False,
                 sr_from: int = 0, sr_upsample: str = "bilinear", sr_p_uncond: float = 0.0,
                 resample_first: bool = False, skip_scale: float = 1.0, context_dim: int = 0,
                 context_resolutions: Sequence[int] = (), context_heads: int = 4, context_dim_head: int = 0,
                 context_depth: int = 1, max_context_len: int = 0, context_pool: bool = False):
        super().__init__()
        ch_mult = tuple(ch_mult)
        check_label_args(num_classes, p_uncond)
        check_context_args(context_dim, max_context_len, context_heads, context_dim_head, context_depth)
        self.blocks = blocks_per_level(num_res_blocks, len(ch_mult))
        # num_res_blocks is checked (per level) by blocks_per_level; the shared check sees one valid count
        check_unet_args(nf, ch_mult, 1, image_size, num_channels, dropout,
                        resblock_type=resblock_type, progressive=progressive, progressive_input=progressive_input,
                        progressive_combine=progressive_combine, embedding_type=embedding_type,
                        attention_type=attention_type, nonlinearity=nonlinearity)
        if conv_size != 3:
            raise ValueError(f"conv_size must be 3 (the only size NCSN++ uses), got {conv_size!r}")
        _check_group_norm_channels(nf, ch_mult, progressive_combine == "cat" and progressive_input == "input_skip")
        updown.fir_kernel_1d(fir_kernel)  # validates the taps
        if resample_first and (progressive != "none" or progressive_input != "none"):
            raise ValueError(f"resample_first needs progressive = progressive_input = 'none', got {progressive!r} "
                             f"and {progressive_input!r}")
        if resample_first and image_size % 2 ** len(ch_mult):
            raise ValueError(f"with resample_first, image_size must be a multiple of 2**len(ch_mult) = "
                             f"{2 ** len(ch_mult)} (ch_mult={ch_mult}), got {image_size!r}")
        if isinstance(skip_scale, bool) or not isinstance(skip_scale, (int, float)) or not skip_scale > 0:
            raise ValueError(f"skip_scale must be a number > 0 (Imagen: 1/sqrt(2)), got {skip_scale!r}")
        self.resample_first, self.skip_scale = bool(resample_first), float(skip_scale)
        self.sr_from = check_sr_args(sr_from, image_size, sr_upsample, sr_p_uncond)
        self.nf, self.ch_mult, self.num_res_blocks = nf, ch_mult, num_res_blocks
        self.num_channels, self.image_size, self.centered = num_channels, image_size, centered
        self.learn_variance = check_learn_variance(learn_variance)
        self.out_channels = output_channels(num_channels, learn_variance)
        self.conditional, self.scale_by_sigma, self.skip_rescale = conditional, scale_by_sigma, skip_rescale
        self.embedding_type, self.resblock_type = embedding_type, resblock_type
        self.progressive, self.progressive_input = progressive, progressive_input
        self.act = layers.get_act(nonlinearity)
        shift = 1 if resample_first else 0  # level i's blocks run at image_size / 2**(i + shift)
        resolutions = [image_size // 2 ** (i + shift) for i in range(len(ch_mult))]
        self.attn_at = [r in tuple(attn_resolutions) for r in resolutions]
        context_at = context_levels(context_dim, context_resolutions, context_pool, resolutions)
        # Settings only the _build_* helpers read; dropped once the modules exist.
        self._opts = dict(dropout=dropout, fir=fir, fir_kernel=tuple(fir_kernel), init_scale=init_scale,
                          resamp_with_conv=resamp_with_conv, combine=progressive_combine)

        self._build_pyramid_resamplers()
        modules = self._build_embedding(fourier_scale)
        modules.append(layers.conv3x3(num_channels * (2 if sr_from else 1), nf))
        skip_channels, in_ch = self._build_down(modules)
        in_ch = self._build_middle(modules, in_ch)
        self._build_up(modules, in_ch, skip_channels)
        self.all_modules = nn.ModuleList(modules)
        del self._opts
        self.num_classes, self.cond_keys = num_classes, label_keys(num_classes)
        if num_classes:
            # Registered (and drawn) last: the reference's parameters, their order (which the EMA's
            # shadow_params follow) and their initial values are those of the unconditional network.
            self.label_embed = LabelEmbedding(num_classes, 4 * nf, p_uncond)
        if sr_from:  # registered after the label embedding, for the same reason
            self.low_res = LowResConditioning(sr_from, image_size, num_channels, nf, 4 * nf, sr_upsample, self.act,
                                              sr_p_uncond)
            self.cond_keys = self.cond_keys + SR_KEYS
        self.context_dim, self.max_context_len = context_dim, max_context_len
        if context_dim:  # registered last, for the same reason
            self.context_layers = ContextConditioning(context_dim, self._context_channels(context_at), context_heads,
                                                      context_dim_head, context_depth, 4 * nf, bool(context_pool))
            self.cond_keys = self.cond_keys + CONTEXT_KEYS

    # ------------------------------------------------------------------ construction

    def _context_channels(self, context_at: List[bool]) -> Dict[str, int]:
        """{place: channels} of the SpatialTransformers, in forward order: "down_i_j" after block j of
        level i, "mid" after the middle attention, "up_i_j" after block j of the up path's level i."""
        width, levels = [self.nf * m for m in self.ch_mult], range(len(self.ch_mult))
        places = {f"down_{i}_{j}": width[i] for i in levels if context_at[i] for j in range(self.blocks[i])}
        if context_at[-1]:
            places["mid"] = width[-1]
        places.update({f"up_{i}_{j}": width[i] for i in reversed(levels) if context_at[i]
                       for j in range(self.blocks[i] + 1)})
        return places

    def _resnet_block(self, in_ch: int, out_ch: int | None = None, up: bool = False, down: bool = False) -> nn.Module:
        o = self._opts
        common = dict(act=self.act, in_ch=in_ch, out_ch=out_ch, temb_dim=4 * self.nf, dropout=o["dropout"],
                      init_scale=o["init_scale"], skip_rescale=self.skip_rescale)
        if self.resblock_type == "ddpm":
            return layers.ResnetBlockDDPM(**common, param_order="ddpmpp")
        return layers.ResnetBlockBigGAN(**common, up=up, down=down, fir=o["fir"], fir_kernel=o["fir_kernel"])

    def _attn_block(self, channels: int) -> nn.Module:
        return layers.AttnBlock(channels, skip_rescale=self.skip_rescale, init_scale=self._opts["init_scale"])

    def _build_pyramid_resamplers(self) -> None:
        """The weight-free 2x resamplers of the image pyramids, as attributes rather than entries of
        `all_modules`: the reference builds them that way, and a checkpoint's all_modules.<i> names
        count only the modules in its list."""
        o, c = self._opts, self.num_channels
        if self.progressive_input == "input_skip":
            self.pyramid_downsample = layers.Downsample(c, fir=o["fir"], fir_kernel=o["fir_kernel"])
        if self.progressive == "output_skip":
            self.pyramid_upsample = layers.Upsample(self.out_channels, fir=o["fir"], fir_kernel=o["fir_kernel"])

    def _build_embedding(self, fourier_scale: float) -> List[nn.Module]:
        modules: List[nn.Module] = []
        embed_dim = self.nf
        if self.embedding_type == "fourier":
            modules.append(GaussianFourierProjection(embedding_size=self.nf, scale=fourier_scale))
            embed_dim = 2 * self.nf
        if self.conditional:
            modules += [layers.dense(embed_dim, 4 * self.nf), layers.dense(4 * self.nf, 4 * self.nf)]
        return modules

    def _build_down(self, modules: List[nn.Module]) -> Tuple[List[int], int]:
        """Encoder modules; returns the channel counts of the skip features and the last width."""
        o, nf, levels = self._opts, self.nf, len(self.ch_mult)
        # with resample_first the first convolution's output is no skip feature (nothing at full resolution reads it)
        skip_channels, in_ch, pyramid_ch = ([] if self.resample_first else [nf]), nf, self.num_channels
        for i in range(levels):
            if self.resample_first:
                modules.append(self._downsample(in_ch))
                skip_channels.append(in_ch)
            for _ in range(self.blocks[i]):
                modules.append(self._resnet_block(in_ch, nf * self.ch_mult[i]))
                in_ch = nf * self.ch_mult[i]
                if self.attn_at[i]:
                    modules.append(self._attn_block(in_ch))
                skip_channels.append(in_ch)
            if i == levels - 1 or self.resample_first:
                continue
            modules.append(self._downsample(in_ch))
            if self.progressive_input == "input_skip":
                modules.append(layers.Combine(pyramid_ch, in_ch, method=o["combine"]))
                in_ch *= 2 if o["combine"] == "cat" else 1
            elif self.progressive_input == "residual":
                modules.append(layers.Downsample(pyramid_ch, in_ch, with_conv=True, fir=o["fir"],
                                                 fir_kernel=o["fir_kernel"]))
                pyramid_ch = in_ch
            skip_channels.append(in_ch)
        return skip_channels, in_ch

    def _downsample(self, in_ch: int) -> nn.Module:
        """A 2x down-sampling: a BigGAN block with down=True, or a DDPM Downsample."""
        o = self._opts
        if self.resblock_type == "ddpm":
            return layers.Downsample(in_ch, with_conv=o["resamp_with_conv"], fir=o["fir"], fir_kernel=o["fir_kernel"])
        return self._resnet_block(in_ch, down=True)

    def _build_middle(self, modules: List[nn.Module], in_ch: int) -> int:
        modules += [self._resnet_block(in_ch), self._attn_block(in_ch), self._resnet_block(in_ch)]
        return in_ch

    def _build_up(self, modules: List[nn.Module], in_ch: int, skip_channels: List[int]) -> None:
        """Decoder and output modules; consumes `skip_channels` from the end."""
        o, nf, c, levels = self._opts, self.nf, self.out_channels, len(self.ch_mult)
        pyramid_ch = 0
        for i in reversed(range(levels)):
            for _ in range(self.blocks[i] + 1):
                modules.append(self._resnet_block(in_ch + skip_channels.pop(), nf * self.ch_mult[i]))
                in_ch = nf * self.ch_mult[i]
            if self.attn_at[i]:
                modules.append(self._attn_block(in_ch))
            if self.progressive == "output_skip" and i == levels - 1:
                modules += [layers.group_norm(in_ch), layers.conv3x3(in_ch, c, init_scale=o["init_scale"])]
                pyramid_ch = c
            elif self.progressive == "residual" and i == levels - 1:
                modules += [layers.group_norm(in_ch), layers.conv3x3(in_ch, in_ch)]
                pyramid_ch = in_ch
            elif self.progressive == "output_skip":
                modules.append(layers.group_norm(in_ch))
                modules.append(layers.conv3x3(in_ch, c, init_scale=o["init_scale"]))
                pyramid_ch = c
            elif self.progressive == "residual":
                modules.append(layers.Upsample(pyramid_ch, in_ch, with_conv=True, fir=o["fir"],
                                               fir_kernel=o["fir_kernel"]))
                pyramid_ch = in_ch
            if i != 0 or self.resample_first:
                if self.resblock_type == "ddpm":
                    modules.append(layers.Upsample(in_ch, with_conv=o["resamp_with_conv"], fir=o["fir"],
                                                   fir_kernel=o["fir_kernel"]))
                else:
                    modules.append(self._resnet_block(in_ch, up=True))
        if self.progressive != "output_skip":
            modules += [layers.group_norm(in_ch), layers.conv3x3(in_ch, c, init_scale=o["init_scale"])]

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor, cond: Tensor, y: Tensor | None = None, low_res: Tensor | None = None,
                aug_level: Tensor | None = None, low_res_null: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        """x [B, C, H, W], cond [B], class labels y [B] (None: the null label), for a super-resolution
        network low_res [B, C, sr_from, sr_from], aug_level [B] and low_res_null [B] (bool: the samples
        whose low resolution is dropped; `LowResConditioning`), and for a context network context
        [B, L, context_dim] and context_mask [B, L] (bool, None: every token real) -> [B, C, H, W]."""
        check_unet_inputs(x, cond, self.num_channels, self.image_size)
        ctx = context_inputs(self, context, context_mask, x.shape[0], x.dtype)
        mods = iter(self.all_modules)
        temb = self._embed(cond, mods)
        label = embed_labels(self, y, x.shape[0])
        if label is not None:
            temb = label if temb is None else temb + label
        if ctx is not None:
            temb = self.context_layers.embed(temb, *ctx)
        if not self.centered:
            x = 2 * x - 1.0  # data in [0, 1] -> [-1, 1]
            low_res = None if low_res is None else 2 * low_res - 1.0
        first = x  # what the first convolution reads; the input pyramid stays on x
        if self.sr_from:
            first, temb = self.low_res(x, temb, low_res, aug_level, low_res_null)
        elif low_res is not None or aug_level is not None or low_res_null is not None:
            raise TypeError("this network is not a super-resolution network (sr_from = 0): it takes no low_res")
        hs = self._down(x, temb, mods, first, ctx)
        h = self._middle(hs[-1], temb, mods, ctx)
        h = self._up(h, hs, temb, mods, ctx)
        if next(mods, None) is not None:
            raise RuntimeError("NCSNpp.forward left modules unused: construction and forward disagree")
        return scale_mean_by_sigma(h, cond, self.num_channels) if self.scale_by_sigma else h

    def _embed(self, cond: Tensor, mods: Iterator[nn.Module]) -> Tensor | None:
        if self.embedding_type == "fourier":
            temb = next(mods)(torch.log(cond))
        else:
            temb = sinusoidal_embedding(cond, self.nf)
        if not self.conditional:
            return None
        temb = next(mods)(temb)
        return next(mods)(self.act(temb))

    def _down(self, x: Tensor, temb: Tensor | None, mods: Iterator[nn.Module], first: Tensor,
              ctx: Context | None = None) -> List[Tensor]:
        """Encoder; returns every skip feature map, the last one feeding the middle."""
        pyramid = x
        hs = [next(mods)(first)]
        levels = len(self.ch_mult)
        for i in range(levels):
            if self.resample_first:
                hs.append(self._resample(next(mods), hs[-1], temb))
            for j in range(self.blocks[i]):
                h = next(mods)(hs[-1], temb)
                if self.attn_at[i]:
                    h = next(mods)(h)
                hs.append(self._cross(f"down_{i}_{j}", h, ctx))
            if i == levels - 1 or self.resample_first:
                continue
            h = self._resample(next(mods), hs[-1], temb)
            if self.progressive_input == "input_skip":
                pyramid = self.pyramid_downsample(pyramid)
                h = next(mods)(pyramid, h)
            elif self.progressive_input == "residual":
                pyramid = self._skip_sum(next(mods)(pyramid), h)
                h = pyramid
            hs.append(h)
        return hs[1:] if self.resample_first else hs

    def _middle(self, h: Tensor, temb: Tensor | None, mods: Iterator[nn.Module], ctx: Context | None = None) -> Tensor:
        h = next(mods)(h, temb)
        h = self._cross("mid", next(mods)(h), ctx)
        return next(mods)(h, temb)

    def _up(self, h: Tensor, hs: List[Tensor], temb: Tensor | None, mods: Iterator[nn.Module],
            ctx: Context | None = None) -> Tensor:
        """Decoder and output head; consumes `hs` from the end."""
        pyramid = None
        levels = len(self.ch_mult)
        for i in reversed(range(levels)):
            last = self.blocks[i]
            for j in range(last + 1):
                skip = hs.pop()
                h = next(mods)(torch.cat([h, skip if self.skip_scale == 1 else skip * self.skip_scale], dim=1), temb)
                if j < last:  # the level's last block has its attention first
                    h = self._cross(f"up_{i}_{j}", h, ctx)
            if self.attn_at[i]:
                h = next(mods)(h)
            h = self._cross(f"up_{i}_{last}", h, ctx)
            if self.progressive != "none" and i == levels - 1:
                pyramid = self._norm_act_conv(h, mods)
            elif self.progressive == "output_skip":
                pyramid = self.pyramid_upsample(pyramid) + self._norm_act_conv(h, mods)
            elif self.progressive == "residual":
                pyramid = self._skip_sum(next(mods)(pyramid), h)
                h = pyramid
            if i != 0 or self.resample_first:
                h = self._resample(next(mods), h, temb)
        if self.progressive == "output_skip":
            return pyramid
        return self._norm_act_conv(h, mods)

    def _cross(self, place: str, h: Tensor, ctx: Context | None) -> Tensor:
        """h through the SpatialTransformer at `place` (`_context_channels`), if the network has one there."""
        return h if ctx is None else self.context_layers(place, h, *ctx)

    def _resample(self, module: nn.Module, h: Tensor, temb: Tensor | None) -> Tensor:
        """A 2x down- or up-sampling: a DDPM (Down|Up)sample reads h alone, a BigGAN block temb too."""
        return module(h) if self.resblock_type == "ddpm" else module(h, temb)

    def _norm_act_conv(self, h: Tensor, mods: Iterator[nn.Module]) -> Tensor:
        norm, conv = next(mods), next(mods)  # the GroupNorm precedes its conv in all_modules
        return conv(self.act(norm(h)))

    def _skip_sum(self, a: Tensor, b: Tensor) -> Tensor:
        """a + b, divided by sqrt(2) with `skip_rescale` so the sum of two unit-variance maps stays unit-variance."""
        out = a + b
        return out.mul_(_INV_SQRT2) if self.skip_rescale else out


DDPMPP_DEFAULTS = dict(fir=False, progressive_input="none", embedding_type="positional",
                       scale_by_sigma=False, centered=True)


@register_model(name="ddpmpp")
class DDPMpp(NCSNpp):
    """DDPM++: NCSN++ with the reference's CIFAR-10 VP defaults (no FIR, no input pyramid,
    sinusoidal embedding of cond = 999 t, no sigma scaling, centred data). Any keyword overrides."""

    def __init__(self, **kwargs):
        super().__init__(**{**DDPMPP_DEFAULTS, **kwargs})
