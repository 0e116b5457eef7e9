"""The variance head a network may carry (improved DDPM, Nichol & Dhariwal 2021): with
`learn_variance=True` a network of C data channels outputs 2C, its usual prediction F followed by a
mixing vector v per dimension, which `sde_lib.reverse_step.reverse_variance(..., "learned_range", v=v)`
turns into the reverse step's variance exp(v log beta + (1 - v) log beta~) on any grid. v is the
network's output as it is, not clamped: the optimum can leave [0, 1] (e.g. data wider than the prior).
Networks zero-initialise their output layer, so a new head starts at v = 0, the fixed small variance."""
from __future__ import annotations

from typing import Tuple

import torch

Tensor = torch.Tensor


def check_learn_variance(learn_variance) -> bool:
    if not isinstance(learn_variance, bool):
        raise ValueError(f"learn_variance must be True or False, got {learn_variance!r}")
    return learn_variance


def output_channels(num_channels: int, learn_variance: bool) -> int:
    """C, or 2C with the variance head."""
    return 2 * num_channels if learn_variance else num_channels


def scale_mean_by_sigma(h: Tensor, sigma: Tensor, num_channels: int) -> Tensor:
    """h / sigma on the prediction's C channels (a `scale_by_sigma` network); a head's v is left alone."""
    shape = (-1,) + (1,) * (h.ndim - 1)
    if h.shape[1] == num_channels:
        return h / sigma.to(h.dtype).reshape(shape)
    mean, v = h[:, :num_channels], h[:, num_channels:]
    return torch.cat([mean / sigma.to(h.dtype).reshape(shape), v], dim=1)


def split_variance(out: Tensor) -> Tuple[Tensor, Tensor]:
    """[B, 2C, ...] -> (F [B, C, ...], v [B, C, ...])."""
    return out.chunk(2, dim=1)
