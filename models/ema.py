"""Exponential moving average of a model's parameters (the weights that evaluation uses)."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn


class ExponentialMovingAverage:
    """shadow <- d * shadow + (1 - d) * param after each optimizer step, with
    d = min(decay, (1 + n) / (10 + n)) when `use_num_updates` (n = updates so far), so early
    averages are not dominated by the random initialisation.

    Its state dict {decay, num_updates, shadow_params} has the reference implementation's layout.
    """

    def __init__(self, parameters: Iterable[nn.Parameter], decay: float, use_num_updates: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay!r}")
        self.decay = decay
        self.num_updates = 0 if use_num_updates else None
        self.shadow_params = [p.detach().clone() for p in parameters if p.requires_grad]
        self._backup = None

    @torch.no_grad()
    def update(self, parameters: Iterable[nn.Parameter]) -> None:
        decay = self.decay
        if self.num_updates is not None:
            self.num_updates += 1
            decay = min(decay, (1 + self.num_updates) / (10 + self.num_updates))
        params = [p for p in parameters if p.requires_grad]
        torch._foreach_lerp_(self.shadow_params, params, 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[nn.Parameter]) -> None:
        """Write the averaged weights into `parameters`."""
        for s, p in zip(self.shadow_params, [p for p in parameters if p.requires_grad]):
            p.copy_(s)

    def store(self, parameters: Iterable[nn.Parameter]) -> None:
        """Keep a copy of the current weights, to `restore` after evaluating with the EMA ones."""
        self._backup = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters: Iterable[nn.Parameter]) -> None:
        for b, p in zip(self._backup, parameters):
            p.copy_(b)
        self._backup = None

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow_params": self.shadow_params}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow_params"]
        if len(shadow) != len(self.shadow_params):
            raise ValueError(f"EMA state has {len(shadow)} shadow parameters, the model has {len(self.shadow_params)}")
        for s, v in zip(self.shadow_params, shadow):
            if s.shape != v.shape:
                raise ValueError(f"EMA shadow parameter of shape {tuple(v.shape)} does not fit {tuple(s.shape)}")
            s.copy_(v)
        self.decay, self.num_updates = state["decay"], state["num_updates"]
