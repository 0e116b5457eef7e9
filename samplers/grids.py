"""Time grids for samplers: decreasing float64 tensors from T to eps."""
from __future__ import annotations

import torch

from sde_lib import SDE


def uniform_grid(sde: SDE, n_steps: int, eps: float) -> torch.Tensor:
    """n_steps + 1 evenly spaced times T = t_0 > t_1 > ... > t_n = eps, float64, [n_steps + 1]."""
    return torch.linspace(sde.T, eps, n_steps + 1, dtype=torch.float64)
