"""`get_score_fn`: the one place where a network's output becomes a score."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from sde_lib import SDE, append_dims

Tensor = torch.Tensor
PARAMETRIZATIONS = ("eps", "score")


def get_score_fn(sde: SDE, net: nn.Module, continuous: bool = True,
                 parametrization: Optional[str] = None) -> Callable[[Tensor, Tensor], Tensor]:
    """Wrap `net(x, cond)` as `score_fn(x, t)` for samplers, losses and the likelihood.

    The network is conditioned on `sde.noise_label(t, continuous)`: 999 t for VP-type SDEs,
    sigma(t) for VE (with `continuous=False`, the classic chain's step index or sigma_i).
    Its output is read by `parametrization` (default `sde.parametrization`):
      "eps":   the network predicts the noise z of x_t = alpha x_0 + sigma z, so s = -out / sigma;
      "score": the network predicts the score itself (NCSN / VE, often with scale_by_sigma).
    `net.train()` / `net.eval()` are the caller's business: the function never switches modes.
    """
    param = parametrization or sde.parametrization
    if param not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {param!r}")

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        out = net(x, sde.noise_label(t, continuous))
        if param == "score":
            return out
        t64 = t.double()
        sigma = (sde.marginal_coeffs(t64) if continuous else sde.discrete_coeffs(t64))[1]
        return -out / append_dims(sigma.to(out.dtype), out.ndim)

    return score_fn
