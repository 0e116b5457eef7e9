"""The argument checks every module shares, and the one check of conditioning (`check_cond`): each
raises naming the argument, the bad value and what is allowed, so a wrong call fails before any work
starts."""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import torch


def check_one_of(name: str, value: Any, allowed: Iterable) -> Any:
    """`value` if it is in `allowed`."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_positive_int(value: Any, name: str) -> int:
    """`value` if it is an int >= 1 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_positive(value: Any, name: str) -> float:
    """`value` as a float if it is a number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def check_open_interval(value: Any, name: str, low: float, high: float, what: str = "") -> float:
    """`value` as a float if low < value < high; `what` names the interval (e.g. "(0, T) = (0, 1)")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
        raise ValueError(f"{name} must lie in {what or f'({low:g}, {high:g})'}, got {value!r}")
    return float(value)


def check_nonnegative(value: Any, name: str, what: str = "") -> float:
    """`value` as a float if it is a finite number >= 0 (bools refused); `what` says what it means."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0{what}, got {value!r}")
    return float(value)


def check_labels(y: Any, batch: int, num_classes: Optional[int], what: str = "", name: str = "y") -> torch.Tensor:
    """`y` as an integer tensor [batch] if every label lies in [0, num_classes) (None: >= 0); else
    ValueError naming `name`, the first bad value and what is allowed (`what` adds to the range)."""
    allowed = f"integer class labels in [0, {num_classes or 'K'}){what}, one per sample (shape [{batch}])"
    if y is None:
        raise ValueError(f"{name} is required: pass {allowed} as cond={{'{name}': labels}}")
    if not torch.is_tensor(y) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name} must be {allowed}; got {type(y).__name__ if not torch.is_tensor(y) else y.dtype}")
    if tuple(y.shape) != (batch,):
        raise ValueError(f"{name} must be {allowed}; got shape {tuple(y.shape)}")
    bad = (y < 0) | (y >= num_classes) if num_classes is not None else y < 0
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name} must be {allowed}; got {name}[{i}] = {int(y[i])}")
    return y


# ----- the conditioning channel -----
# Conditioning travels apart from every other argument: `cond`, a mapping {name: tensor [B, ...]}
# (None: no conditioning), reaches a score function as score_fn(x, t, **cond). A score function or
# network says which names it takes with a `cond_keys` attribute (a tuple; None: any name), or else
# by its signature (the keyword parameters after x and t; **kwargs: any name).


def cond_keys(fn: Callable) -> Optional[Tuple[str, ...]]:
    """The conditioning names `fn` takes (fn(x, t, **cond)), or None where it takes any."""
    declared = getattr(fn, "cond_keys", _UNSET)
    if declared is not _UNSET:
        return None if declared is None else tuple(declared)
    # A torch module is called through forward: Module.__call__'s own signature is (*args, **kwargs).
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        params = list(inspect.signature(target).parameters.values())[2:]
    except (TypeError, ValueError):  # a builtin or C callable: nothing to read
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


_UNSET = object()


def check_cond(fn: Callable, cond: Optional[Mapping[str, Any]], batch: int) -> Dict[str, Any]:
    """`cond` as a dict if `fn` takes every name in it and every tensor in it has `batch` rows; the one
    check of conditioning, made once per run before the first call. A value may be None (the network's
    default, e.g. the null label). Raises TypeError for a name fn does not take, ValueError otherwise."""
    if cond is None:
        return {}
    if not isinstance(cond, Mapping):
        raise TypeError(f"cond must be a mapping {{name: tensor [B, ...]}} or None, got {type(cond).__name__}")
    taken = cond_keys(fn)
    for key, value in cond.items():
        if taken is not None and key not in taken:
            raise TypeError(f"conditioning {key!r} is not taken by the score function "
                            f"{getattr(fn, '__name__', type(fn).__name__)}; it takes "
                            f"{sorted(taken) if taken else 'no conditioning'}")
        if value is None:
            continue
        if not torch.is_tensor(value) or value.ndim < 1 or value.shape[0] != batch:
            got = f"shape {tuple(value.shape)}" if torch.is_tensor(value) else type(value).__name__
            raise ValueError(f"cond[{key!r}] must be a tensor with one row per sample (shape [{batch}, ...]), "
                             f"got {got}")
    return dict(cond)
