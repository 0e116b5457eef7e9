"""Load score_sde_pytorch checkpoints into this package's networks.

A reference checkpoint is a dict {"model", "ema", "optimizer", "step"}: "model" is the state dict
of a DataParallel-wrapped network (every key prefixed "module."), "ema" the state dict of its
ExponentialMovingAverage, {"decay", "num_updates", "shadow_params"}, where shadow_params lists
the trainable parameters (requires_grad) in `model.parameters()` order. NCSN++, DDPM++ and DDPM
here use the reference's parameter names, shapes and order, so no renaming is needed; the
reference's weight-free `sigmas` buffer is skipped.
"""
from __future__ import annotations

from typing import Dict, List, Mapping

import torch
import torch.nn as nn

_PREFIX = "module."
# Buffers of the reference networks that hold no weights: `sigmas` is the noise-level table
# exp(linspace(log sigma_max, log sigma_min, num_scales)), which here comes from the SDE, not the network.
REFERENCE_ONLY_BUFFERS = ("sigmas",)


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The state dict with a leading "module." (from DataParallel) removed from every key that has one."""
    return {k[len(_PREFIX):] if k.startswith(_PREFIX) else k: v for k, v in state_dict.items()}


def ema_to_state_dict(model: nn.Module, ema_state: Mapping) -> Dict[str, torch.Tensor]:
    """Name the EMA's shadow_params by the model's trainable parameters, in `parameters()` order.

    Raises ValueError when the counts or any shapes differ, listing the parameters left without
    a shadow (missing), the shadows left over (unexpected) and the shape mismatches.
    """
    shadows = list(ema_state["shadow_params"])
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    missing = names[len(shadows):]
    unexpected = [f"shadow_params[{i}]" for i in range(len(names), len(shadows))]
    mismatched = [f"{n}: model {tuple(params[n].shape)}, shadow_params[{i}] {tuple(s.shape)}"
                  for i, (n, s) in enumerate(zip(names, shadows)) if tuple(s.shape) != tuple(params[n].shape)]
    _raise_if_bad("EMA shadow_params", missing, unexpected, mismatched)
    return dict(zip(names, shadows))


def load_reference_state_dict(model: nn.Module, state_dict: Mapping) -> nn.Module:
    """Load a reference network state dict, or a reference EMA state dict, into `model`.

    state_dict: either the checkpoint's "model" entry (keys may carry a "module." prefix), which
    must match the model's state dict exactly apart from REFERENCE_ONLY_BUFFERS the model lacks
    (those are skipped), or its "ema" entry (has "shadow_params"), whose
    averages are copied onto the trainable parameters only; frozen parameters such as the Fourier
    features' W keep their values, so load "model" first (`load_reference_checkpoint` does both).
    Raises ValueError listing missing keys, unexpected keys and shape mismatches; nothing is
    written unless everything matches. Returns `model`.
    """
    if "shadow_params" in state_dict:
        named = ema_to_state_dict(model, state_dict)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in named.items():
                params[name].copy_(value)
        return model
    own = model.state_dict()
    named = {k: v for k, v in strip_module_prefix(state_dict).items()
             if k in own or k not in REFERENCE_ONLY_BUFFERS}
    missing = [k for k in own if k not in named]
    unexpected = [k for k in named if k not in own]
    # a module's extra state (e.g. a text encoder's vocabulary) is no tensor: it has no shape to compare
    mismatched = [f"{k}: model {tuple(own[k].shape)}, checkpoint {tuple(named[k].shape)}"
                  for k in own if k in named and torch.is_tensor(own[k]) and tuple(own[k].shape) != tuple(named[k].shape)]
    _raise_if_bad("state dict", missing, unexpected, mismatched)
    model.load_state_dict(named, strict=True)
    return model


def load_reference_checkpoint(model: nn.Module, checkpoint: Mapping, use_ema: bool = True) -> nn.Module:
    """Load a whole reference checkpoint dict: its "model" weights, then (if `use_ema`) the EMA
    averages over the trainable ones, as the reference does before sampling and evaluation."""
    for key in ("model",) + (("ema",) if use_ema else ()):
        if key not in checkpoint:
            raise ValueError(f"checkpoint has no {key!r} entry; its keys are {sorted(checkpoint)}")
    load_reference_state_dict(model, checkpoint["model"])
    if use_ema:
        load_reference_state_dict(model, checkpoint["ema"])
    return model


def _raise_if_bad(what: str, missing: List[str], unexpected: List[str], mismatched: List[str]) -> None:
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{what} does not match the model:"]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", mismatched)):
        if items:
            lines.append(f"  {label} ({len(items)}): " + ", ".join(items))
    raise ValueError("\n".join(lines))
