"""What every sampler shares: the set-up of a run around its loop, and the registry behind `list_samplers()`.

A sampler is a loop, a plain function that steps a batch along a time grid,

    x = <name>_loop(sde, score, x, grid, *, <options>, [generator], [callback], [progress])

with score(x, t) the score (its conditioning bound), x [B, ...] at grid[0], and grid a float64 tensor
[n + 1] of times decreasing from grid[0] to grid[n]. `sampler(name, loop, ...)` wraps a loop into the
public function every sampler shares,

    x, nfe = samplers.<name>_sample(sde, score_fn, shape, *, steps=None, grid=None, eps=None, x_T=None,
                                    seed=None, generator=None, device=None, dtype=torch.float32,
                                    cond=None, denoise=None, callback=None, progress=False, **options)

which does everything else once, before the first score call: it checks every argument (an option the
loop does not take is an error; conditioning travels in `cond`, a mapping {name: tensor [B, ...]},
never among the options), builds the grid, draws x_T from the prior, binds, guards and counts the
score calls, runs the loop without autograd, checks each step's x for NaN / inf before the callback
sees it, and with `denoise` ends with Tweedie's formula at the last time (one more call).
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Tuple

import torch

from sde_lib import SDE, append_dims
from sde_lib.checks import check_cond, check_positive_int
from sde_lib.registry import Registry
from samplers.grids import check_grid, get_grid
from samplers.guards import GuardedScore, check_device, check_eps, check_finite, make_generator

Tensor = torch.Tensor
_SAMPLERS = Registry("sampler")
# What the set-up takes; a loop's own options are everything else.
COMMON = ("steps", "grid", "eps", "x_T", "seed", "generator", "device", "dtype", "cond", "denoise", "callback",
          "progress")
_PASSED = ("generator", "callback", "progress")  # set-up arguments a loop may take


def ignore(info: dict) -> None:
    """The callback of a loop called without one."""


@dataclass(frozen=True)
class Sampler:
    """A loop and how to set up its runs.

    default_grid: the grid a named `grid=None` means; default_steps(sde): steps when none are given
    (None: steps are required); denoise: the default of `denoise`; own_steps(options): whether the loop
    chooses its own times with these options (then it gets the grid [T, eps] and steps / grid must be
    None); plan(steps, n, options) -> (intervals, loop options), for samplers whose steps are not their
    grid's intervals (steps given, or n the intervals of an explicit grid; the other one None).
    """
    name: str
    loop: Callable
    default_grid: str = "uniform_t"
    default_steps: Optional[Callable[[SDE], int]] = None
    denoise: bool = False
    own_steps: Callable[[dict], bool] = lambda options: False
    plan: Optional[Callable[[Optional[int], Optional[int], dict], Tuple[int, dict]]] = None
    options: dict = field(default_factory=dict)  # public option -> default (the loop's, unless planned)
    passes: Tuple[str, ...] = ()  # which of generator, callback, progress the loop takes

    def check_options(self, options: dict) -> None:
        """A TypeError for an option the sampler does not take, before any work."""
        for key in options:
            if key not in self.options:
                close = difflib.get_close_matches(key, list(self.options) + list(COMMON), n=1)
                raise TypeError(f"{self.name}_sample got an unknown option {key!r}"
                                + (f"; did you mean {close[0]!r}?" if close else "")
                                + f" Its options: {', '.join(self.options) or 'none'}, besides {', '.join(COMMON)}; "
                                f"conditioning goes in cond={{{key!r}: ...}}")

    def dry_run(self, sde: SDE, grid: Tensor, options: dict, shape: Sequence[int], device, dtype,
                learns_variance: bool = False) -> None:
        """Every check the loop makes of its options, on one zero sample, stopping at its first score
        call: so nothing is drawn and no call is made before they pass, even for an empty batch.
        `learns_variance`: whether the real score function has a variance head (`models.Precond`)."""
        x = torch.zeros((1, *shape[1:]), device=device, dtype=dtype)
        refuse = _refuse_head_calls if learns_variance else _refuse_calls
        try:
            self.run(sde, GuardedScore(refuse), x, grid.to(x.device), options, torch.Generator(device=x.device))
        except _FirstCall:
            pass

    def run(self, sde: SDE, score, x: Tensor, grid: Tensor, options: dict, generator=None, callback=None,
            progress: bool = False) -> Tensor:
        """The loop on x along grid with its options, and what it takes of generator, callback (checked
        for finite steps first) and progress."""
        common = {"generator": generator, "callback": _checked(self.name, callback), "progress": progress}
        return self.loop(sde, score, x, grid, **options, **{k: common[k] for k in self.passes})

    def times(self, sde: SDE, steps, grid, eps, options: dict) -> Tuple[Tensor, dict]:
        """The grid [n + 1] (float64, CPU) a run steps along, and the options its loop gets."""
        if self.own_steps(options):
            for name, value in (("steps", steps), ("grid", grid)):
                if value is not None:
                    raise ValueError(f"{name} must be None for {self.name} with {options or 'its defaults'}: it "
                                     f"chooses its own steps (set rtol / atol for accuracy), got {_short(value)}")
            return torch.tensor([sde.T, check_eps(sde, eps)], dtype=torch.float64), options
        named = grid is None or isinstance(grid, str)
        if named and steps is None and self.default_steps is not None:
            steps = self.default_steps(sde)
        if named and steps is None:
            raise ValueError(f"{self.name}_sample needs steps (an integer >= 1) with a named grid, or an explicit "
                             "grid of times (which sets them)")
        if steps is not None:
            steps = check_positive_int(steps, "steps")
        times = None if named else check_grid(grid, sde)
        n = None if named else len(times) - 1
        intervals, options = self.plan(steps, n, options) if self.plan else (steps or n, options)
        if named:
            return get_grid(grid, sde, intervals, check_eps(sde, eps), self.default_grid), options
        if intervals != n:
            raise ValueError(f"steps = {steps!r} contradicts the grid of {n + 1} times ({n} steps); pass one of them")
        if eps is not None and eps != float(times[-1]):
            raise ValueError(f"eps = {eps!r} contradicts the grid, which ends at {float(times[-1])!r}; pass one of them")
        return times, options


def _short(value) -> str:
    return f"a tensor of shape {tuple(value.shape)}" if torch.is_tensor(value) else repr(value)


def sampler(name: str, loop: Callable, *, options: Optional[dict] = None, **spec) -> Callable:
    """Register `loop` as sampler `name` and return its public `<name>_sample` function (module
    docstring); `spec` as `Sampler`'s fields. `options` (default: the loop's keyword options and their
    defaults) are the options the public function takes."""
    params = inspect.signature(loop).parameters
    if options is None:
        options = {k: p.default for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k not in _PASSED}
    info = Sampler(name, loop, options=dict(options), passes=tuple(k for k in _PASSED if k in params), **spec)

    def sample(sde: SDE, score_fn: Callable[..., Tensor], shape: Sequence[int], *, steps=None, grid=None,
               eps=None, x_T=None, seed=None, generator=None, device=None, dtype=torch.float32, cond=None,
               denoise=None, callback=None, progress=False, **options) -> Tuple[Tensor, int]:
        info.check_options(options)
        times, loop_options = info.times(sde, steps, grid, eps, options)
        check_x_T(x_T, shape)
        on = (check_device(device), dtype) if x_T is None else (x_T.device, x_T.dtype)
        info.dry_run(sde, times, loop_options, shape, *on, learns_variance=getattr(score_fn, "learns_variance", False))
        score = GuardedScore(score_fn, check_cond(score_fn, cond, shape[0]))
        g = make_generator(generator, seed, device)
        x = start(sde, shape, x_T, g, device, dtype)
        if x.shape[0] == 0:  # an empty batch: nothing to sample, no call to make
            return x, 0
        with torch.no_grad():  # a score that needs gradients (classifier guidance) turns them on itself
            x = info.run(sde, score, x, times.to(x.device), loop_options, g, callback, progress)
            if info.denoise if denoise is None else denoise:
                t = times[-1].to(x.device).expand(x.shape[0])
                x = sde.tweedie(x, t, score(x, t.to(x.dtype)))
        return x, score.nfe

    sample.__name__ = sample.__qualname__ = f"{name}_sample"
    sample.__doc__ = _doc(name, loop, info)
    sample.__signature__ = _signature(info)
    sample.info = info
    _SAMPLERS.register(name)(sample)
    return sample


def check_x_T(x_T, shape) -> None:
    """A ValueError unless x_T is None or a tensor of `shape`."""
    if x_T is not None and (not torch.is_tensor(x_T) or tuple(x_T.shape) != tuple(shape)):
        got = f"shape {tuple(x_T.shape)}" if torch.is_tensor(x_T) else f"type {type(x_T).__name__}"
        raise ValueError(f"x_T has {got}, but shape is {tuple(shape)}")


def start(sde: SDE, shape, x_T, generator, device, dtype) -> Tensor:
    """x at grid[0]: x_T, or a prior draw [shape] (with `generator` on x's device)."""
    check_x_T(x_T, shape)
    x = sde.prior_sampling(shape, generator, device, dtype) if x_T is None else x_T
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"the generator is on {generator.device}, but x is on {x.device}: pass device= (or x_T on "
                         "the generator's device)")
    return x


def _checked(name: str, callback: Optional[Callable[[dict], None]]) -> Callable[[dict], None]:
    """What a loop calls after every step: a finiteness check naming the sampler and step, then the
    user's callback with x_mean defaulting to x and a time that every sample shares as a float."""
    def step_done(info: dict) -> None:
        t = info["t"]
        check_finite(info["x"], name, info["i"], t)
        if callback is None:
            return
        if torch.is_tensor(t) and t.numel() and bool((t == t.reshape(-1)[0]).all()):
            info = {**info, "t": float(t.reshape(-1)[0])}
        callback({"x_mean": info["x"], **info})

    return step_done


def _signature(info: Sampler) -> inspect.Signature:
    p = inspect.Parameter
    head = [p(n, p.POSITIONAL_OR_KEYWORD) for n in ("sde", "score_fn", "shape")]
    defaults = {"steps": None, "grid": None, "eps": None, "x_T": None, "seed": None, "generator": None,
                "device": None, "dtype": torch.float32, "cond": None, "denoise": info.denoise, "callback": None,
                "progress": False}
    own = [p(k, p.KEYWORD_ONLY, default=v) for k, v in info.options.items()]
    return inspect.Signature(head + [p(k, p.KEYWORD_ONLY, default=defaults[k]) for k in COMMON] + own)


def _doc(name: str, loop: Callable, info: Sampler) -> str:
    steps = (f"default {info.default_steps.__doc__ or 'per SDE'}" if info.default_steps else
             "chosen by the solver with its default options" if info.own_steps(info.options) else "required")
    return (f"{name}_sample(sde, score_fn, shape, *, steps, grid, eps, x_T, seed, generator, device, dtype, cond, "
            f"denoise, callback, progress, {', '.join(info.options)}) -> (x, nfe)\n\n"
            f"The `{loop.__name__}` loop set up by `samplers.base.sampler`: steps {steps}; grid default "
            f"{info.default_grid!r}; denoise default {info.denoise}.\n\n{inspect.getdoc(loop) or ''}")


def list_samplers() -> list:
    return _SAMPLERS.names()


def get_sampler(name: str) -> Callable:
    """The sampling function registered under `name`; a ValueError lists the registered names otherwise."""
    return _SAMPLERS.get(name)


def sampler_info(name: str) -> Sampler:
    """The `Sampler` record (loop and set-up) of the sampler registered under `name`."""
    return get_sampler(name).info


class _FirstCall(Exception):
    """Raised by `_refuse_calls`: a run got past its checks to its first score call."""


def _refuse_calls(x, t, **cond):
    raise _FirstCall


class _RefuseHeadCalls:
    """`_refuse_calls` standing in for a network with a variance head."""
    learns_variance = True

    def __call__(self, x, t, **cond):
        raise _FirstCall

    def denoise_and_v(self, x, t, **cond):
        raise _FirstCall


_refuse_head_calls = _RefuseHeadCalls()


def probe(fn: Callable, sde: SDE, shape: Sequence[int], **kwargs) -> None:
    """Run every check that `fn(sde, score_fn, shape, **kwargs)` (a sampler, or `inpaint_sample`) makes of
    its arguments, without a network call: the run stops at its first score call. Raises what fn would
    raise (ValueError, TypeError)."""
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stays as it was
        try:
            fn(sde, _refuse_calls, shape, **kwargs)
        except _FirstCall:
            pass


def check_options(name: str, sde: SDE, shape: Sequence[int] = (1, 1), **kwargs) -> None:
    """`probe` of sampler `name` with `kwargs` as for its function (without score_fn): every check of
    its arguments, no network call."""
    probe(get_sampler(name), sde, shape, **kwargs)


# ----- what loops share ---------------------------------------------------------------------------

def at(grid: Tensor, i: int, x: Tensor) -> Tensor:
    """grid[i] as a float64 tensor [B], the shape every SDE method and score call takes."""
    return grid[i].expand(x.shape[0])


def coeff(v: Tensor, x: Tensor) -> Tensor:
    """A per-sample float64 coefficient [B] in x's dtype, broadcastable against x."""
    return append_dims(v.to(x.dtype), x.ndim)


def noise_like(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """Fresh N(0, I) noise shaped like x, from `generator` (None: the global RNG)."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def noise_estimate(sde: SDE, t: Tensor, s: Tensor) -> Tensor:
    """E[z | x_t] = -sigma(t) s(x_t, t) for x_t = alpha x_0 + sigma z; t [B], s shaped like x."""
    return append_dims(-sde.marginal_coeffs(t)[1].to(s.dtype), s.ndim) * s


def check_order(order, allowed: Sequence[int], sampler: str) -> int:
    """`order` if it is one of `allowed` (a solver's orders), else a ValueError naming the sampler."""
    if isinstance(order, bool) or order not in allowed:
        raise ValueError(f"order must be one of {tuple(allowed)} for {sampler}, got {order!r}")
    return int(order)
