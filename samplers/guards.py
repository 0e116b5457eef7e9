"""The sampler-side argument checks (eps, finiteness, generators) and the guarded, counted score
function every sampler calls."""
from __future__ import annotations

from typing import Optional

import torch

from sde_lib import SDE
from sde_lib.checks import check_open_interval

Tensor = torch.Tensor
__all__ = ["check_eps", "check_finite", "check_device", "check_float_dtype", "make_generator", "GuardedScore"]


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


def check_device(device) -> Optional[torch.device]:
    """`device` as a torch.device (None stays None) if this machine has it, else a ValueError saying so."""
    if device is None:
        return None
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from e
    if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {device!r} is not available: this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s){'' if torch.backends.cuda.is_built() else ' (this torch build has no CUDA)'}")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} is not available on this machine")
    return d


def check_float_dtype(dtype, where: str) -> torch.dtype:
    """`dtype` if it is float32 or float64: the ODE solvers' step-size control and the likelihood's
    divergence lose their digits in float16 / bfloat16 (a step underflows to 0)."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{where} computes in float32 or float64, got {dtype}; pass dtype=torch.float32 (or "
                         "float32 data) and cast the result to use a half-precision network")
    return dtype


def make_generator(generator, seed, device=None):
    """A torch.Generator from `generator` or `seed` (None: the global RNG)."""
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    device = check_device(device)
    if seed is None:
        return generator
    g = torch.Generator(device=device if device is not None else "cpu")
    g.manual_seed(int(seed))
    return g


class GuardedScore:
    """`score_fn(x, t, **cond)` as `score(x, t)` with its conditioning bound (checked by the caller,
    `sde_lib.checks.check_cond`): counts the real calls (`nfe`) and checks each output's shape and
    finiteness, naming the call and t."""

    def __init__(self, score_fn, cond: Optional[dict] = None):
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable as score_fn(x, t, **cond), got {type(score_fn).__name__}")
        self.score_fn, self.cond, self.nfe = score_fn, dict(cond or {}), 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        s = self.score_fn(x, t, **self.cond)
        if not torch.is_tensor(s) or s.shape != x.shape:
            got = tuple(s.shape) if torch.is_tensor(s) else type(s).__name__
            raise ValueError(f"score_fn returned {got} for x of shape {tuple(x.shape)} at score call "
                             f"{self.nfe}, t={float(t.reshape(-1)[0]):.6g}; it must return x's shape")
        check_finite(s, "score_fn", f"score call {self.nfe}", t)
        return s

    @property
    def learns_variance(self) -> bool:
        """Whether the wrapped function is a network with a variance head (`models.Precond`)."""
        return bool(getattr(self.score_fn, "learns_variance", False))

    def denoise_and_v(self, x: Tensor, t: Tensor):
        """(x0_hat, v) of a network with a variance head, from one counted call (`models.Precond.denoise_and_v`)."""
        self.nfe += 1
        x0, v = self.score_fn.denoise_and_v(x, t, **self.cond)
        for name, out in (("x0 estimate", x0), ("variance head's v", v)):
            if out.shape != x.shape:
                raise ValueError(f"the network's {name} is {tuple(out.shape)} for x of shape {tuple(x.shape)}")
            check_finite(out, name, f"network call {self.nfe}", t)
        return x0, v
