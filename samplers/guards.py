"""Argument checks and the guarded, counted score function every sampler calls."""
from __future__ import annotations

import inspect
from typing import Optional

import torch

from sde_lib import SDE
from score_toolkit.checks import check_one_of, check_open_interval, check_positive, check_positive_int  # noqa: F401

Tensor = torch.Tensor
__all__ = ["check_eps", "check_one_of", "check_open_interval", "check_positive", "check_positive_int",
           "check_finite", "check_cond", "make_generator", "GuardedScore"]


def check_eps(sde: SDE, eps, name: str = "eps") -> float:
    """`eps` (default: the SDE's `sampling_eps`) as a float in the open interval (0, T)."""
    if eps is None:
        return sde.sampling_eps
    return check_open_interval(eps, name, 0.0, sde.T, f"(0, T) = (0, {sde.T:g}) for {type(sde).__name__}")


def check_finite(x: Tensor, where: str, step, t: Tensor) -> None:
    """Raise if x holds NaN or inf: a silent NaN sample is worse than an error.

    Tested on the sum, one pass without a temporary mask: NaN and inf propagate into it, and a
    float32 sum overflows only past 3e38, far beyond any sample worth keeping.
    """
    if not torch.isfinite(x.sum()):
        at = step if isinstance(step, str) else f"step {step}"
        raise FloatingPointError(f"{where} produced non-finite values at {at} (t={float(t.reshape(-1)[0]):.6g})")


def make_generator(generator, seed, device=None):
    """A torch.Generator from `generator` or `seed` (None: the global RNG)."""
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if seed is None:
        return generator
    g = torch.Generator(device=device if device is not None else "cpu")
    g.manual_seed(int(seed))
    return g


def check_cond(score_fn, cond: dict) -> dict:
    """Refuse conditioning keys that `score_fn` cannot take, before any score call.

    A callable taking `**kwargs` takes every key; one with named keyword parameters takes those.
    """
    if not cond:
        return {}
    taken = getattr(score_fn, "cond_keys", None)  # a model wrapper says what its network takes
    if taken is None:
        try:
            params = inspect.signature(score_fn).parameters.values()
        except (TypeError, ValueError):  # a builtin or C callable: let the call decide
            return dict(cond)
        if any(p.kind == p.VAR_KEYWORD for p in params):
            return dict(cond)
        taken = tuple(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))[2:]
    unknown = sorted(set(cond) - set(taken))
    if unknown:
        raise TypeError(f"conditioning argument {unknown[0]!r} is not taken by the score function "
                        f"{getattr(score_fn, '__name__', type(score_fn).__name__)}; it takes "
                        f"{sorted(taken) if taken else 'no conditioning'} (or check the sampler's argument names)")
    return dict(cond)


class GuardedScore:
    """Wraps `score_fn(x, t, **cond)` as `score(x, t)` with the conditioning bound: counts real
    calls (NFE), checks the output's shape and finiteness.

    `step` is set by the sampling loop, so an error names the step as well as t.
    """

    def __init__(self, score_fn, cond: Optional[dict] = None):
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable as score_fn(x, t, **cond), got {type(score_fn).__name__}")
        if isinstance(score_fn, GuardedScore):  # already guarded: guard its function, not the guard
            score_fn, cond = score_fn.score_fn, {**score_fn.cond, **(cond or {})}
        self.score_fn, self.cond, self.nfe, self.step = score_fn, check_cond(score_fn, cond or {}), 0, None

    def where(self) -> str:
        """Where an error happened: the sampler's step, or for solvers that choose their own steps
        (torchdiffeq's ODE solvers), the number of the score call."""
        return f"step {self.step}" if self.step is not None else f"score call {self.nfe}"

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        s = self.score_fn(x, t, **self.cond)
        if not torch.is_tensor(s) or s.shape != x.shape:
            got = tuple(s.shape) if torch.is_tensor(s) else type(s).__name__
            raise ValueError(f"score_fn returned {got} for x of shape {tuple(x.shape)} "
                             f"at {self.where()}, t={float(t.reshape(-1)[0]):.6g}; it must return x's shape")
        check_finite(s, "score_fn", self.where(), t)
        return s
