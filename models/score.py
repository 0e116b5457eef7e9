"""`get_score_fn`: the thin path from a network to a `score_fn(x, t, **cond)` (see `models.precond`)."""
from __future__ import annotations

from typing import Optional

import torch.nn as nn

from sde_lib import SDE
from models.precond import PARAMETRIZATIONS, Precond

__all__ = ["get_score_fn", "PARAMETRIZATIONS"]


def get_score_fn(sde: SDE, net: nn.Module, continuous: bool = True,
                 parametrization: Optional[str] = None) -> Precond:
    """Wrap `net(x, c_noise, **cond)` as `score_fn(x, t, **cond)` for samplers, losses and the likelihood.

    The result is the `Precond` wrapper: call it for the score; `.denoise` and `.eps` give the x0 and
    noise estimates, `.raw` the network's own output. `parametrization` (default `sde.parametrization`:
    "eps" for VP-type SDEs, "score" for VE) says what the network predicts; `continuous=False` is for
    networks of the discrete DDPM / SMLD losses. `net.train()` / `net.eval()` are the caller's business.
    """
    return Precond(sde, net, parametrization, continuous)
