"""Config -> objects: one factory each for the SDE, the network, the loss and the sampler, shared
by training, evaluation and sampling; `validate_config`, which fails before any work starts
with a message naming the config key, the bad value and what is allowed; and which keys of a
workdir's config may change between its runs (`config_differences`)."""
from __future__ import annotations

import ctypes
import inspect
import os
import json
import re
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import ml_collections
import torch

from score_toolkit import losses
import models
import samplers
import sde_lib

Tensor = torch.Tensor
MODEL_META_KEYS = ("name", "ema_rate", "parametrization")  # config.model keys that are not network arguments
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")  # config.training.precision
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
OPTIM_IMPLS = ("default", "foreach", "fused")  # config.optim.impl


class UserError(Exception):
    """Something the user can fix: a config value, a missing file, a workdir made with another config.
    The command line prints the message alone (`error: <message>`, no traceback) and exits with
    `exit_code`. `make_with`, where set, names the --mode that makes the missing input: the command
    line appends that command, ready to paste."""

    exit_code = 2
    make_with = None


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the key."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the run reads is not there (data, checkpoint, feature network, statistics)."""

    def __init__(self, message: str, make_with=None):
        super().__init__(message)
        self.make_with = make_with


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config.{key} = {value!r} is not allowed: {allowed}")


def _one_of(config, key: str, allowed) -> None:
    value = _get(config, key)
    _require(value in allowed, key, value, f"must be one of {sorted(allowed)}")


def _positive(config, key: str, integer: bool = False, allow_zero: bool = False) -> None:
    value = _get(config, key)
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    kind = "an integer" if integer else "a number"
    _require(ok, key, value, f"must be {kind} {'>= 0' if allow_zero else '> 0'}")


def set_keys(config, **overrides):
    """Set dotted config keys ("training.n_iters": 5, ...) in place; returns the config."""
    for key, value in overrides.items():
        node = config
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return config


def _get(config, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def sde_kwargs(config, cls) -> dict:
    """The config.sde keys that `cls.__init__` takes (every constructor argument is settable)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: config.sde[k] for k in params if k != "self" and k in config.sde}


def build_sde(config) -> sde_lib.SDE:
    """The SDE named by config.sde.name, built from the config.sde keys its constructor takes."""
    _one_of(config, "sde.name", sde_lib.SDES.names())
    cls = sde_lib.SDES.get(config.sde.name)
    try:
        return cls(**sde_kwargs(config, cls))
    except ValueError as e:
        raise ConfigError(f"config.sde: {e}") from e


def model_kwargs(config) -> dict:
    return {k: v for k, v in config.model.items() if k not in MODEL_META_KEYS}


def build_model(config) -> torch.nn.Module:
    """The registered network config.model.name, built from the other config.model keys."""
    try:
        cls = models.get_model(config.model.name)
    except ValueError as e:
        raise ConfigError(f"config.model.name: {e}") from e
    kwargs = model_kwargs(config)
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        raise ConfigError(f"config.model.{unknown[0]}: model {config.model.name!r} takes no argument "
                          f"{unknown[0]!r}; it takes {sorted(k for k in accepted if k != 'self')}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.model: {e}") from e


def build_precond(config, sde: sde_lib.SDE, net: torch.nn.Module) -> models.Precond:
    """The wrapper that turns `net`'s output into scores, x0 and eps estimates (`models.precond`)."""
    param = config.model.parametrization
    return models.Precond(sde, net, None if param == "auto" else param, continuous=config.training.continuous)


def num_classes(config) -> int:
    """The number of classes sampling draws labels from: the network's, or the noisy classifier's."""
    if config.model.num_classes > 0:
        return config.model.num_classes
    if config.sampling.guidance == "classifier" and config.sampling.classifier_path:
        from score_toolkit import noisy_classifier
        return noisy_classifier.load_noisy_classifier(config.sampling.classifier_path, "cpu")[0].num_classes
    return 0


def build_score_fn(config, sde: sde_lib.SDE, net: torch.nn.Module):
    """The score samplers use: the wrapped network, guided by config.sampling.guidance at
    config.sampling.guidance_scale when that is > 0 (classifier-free: `samplers.cfg_score`, one
    batched call per step; classifier: `samplers.classifier_guided_score` with the noisy classifier)."""
    model, s = build_precond(config, sde, net), config.sampling
    if s.guidance_scale == 0:
        return model
    if s.guidance == "cfg":
        return samplers.cfg_score(model, s.guidance_scale, null_label=config.model.num_classes)
    from score_toolkit import noisy_classifier
    classifier, _, _ = noisy_classifier.load_noisy_classifier(s.classifier_path, get_device(config))
    return samplers.classifier_guided_score(model, noisy_classifier.classifier_logits_fn(classifier, sde),
                                            s.guidance_scale, num_classes=classifier.num_classes)


def label_sampler(config) -> Callable[..., dict]:
    """labels(n, start=0): the conditioning of samples start .. start + n, {"y": labels [n]} when
    sampling is class-conditional (class sampling.class_label, or every class in turn: sample i gets
    class i mod K), else {}. The number of classes is looked up once, here."""
    conditional = config.model.num_classes > 0 or config.sampling.guidance_scale > 0
    K, k = (num_classes(config) if conditional else 0), config.sampling.class_label

    def labels(n: int, start: int = 0) -> dict:
        if K == 0:
            return {}
        return {"y": torch.full((n,), k) if k >= 0 else torch.arange(start, start + n) % K}

    return labels


def sample_labels(config, n: int, start: int = 0) -> dict:
    """`label_sampler(config)(n, start)`, for a single batch."""
    return label_sampler(config)(n, start)


def build_loss(config, sde: sde_lib.SDE) -> Callable:
    t = config.training
    try:
        return losses.get_loss_fn(sde, continuous=t.continuous, weighting=t.weighting,
                                  importance_sampling=t.importance_sampling, reduce=t.reduce, eps=t.eps)
    except ValueError as e:
        raise ConfigError(f"config.training: {e}") from e


def build_sampler(config, sde: sde_lib.SDE, grid: Optional[Tensor] = None) -> Callable[..., Tuple[Tensor, int]]:
    """sample(score_fn, shape, seed, start=0, **cond) -> (x, nfe) with the configured sampler, on
    config.device (the seed drives a generator on that device: the same seed gives other samples on
    another). `start`, the index of the batch's first sample, matters only to `build_task_sampler`.

    "pc" and "ode" read their own keys (predictor, corrector, N, ode_method, ...); every other
    registered sampler gets steps, grid (explicit times `grid`, else config.sampling.grid, "" for its
    default) and eps, plus each config.sampling key named like one of its keyword arguments (eta,
    order, s_churn, rtol, ...)."""
    s, device = config.sampling, get_device(config)
    if s.method == "ode":
        def sample(score_fn, shape, seed, start: int = 0, **cond):
            return samplers.ode_sample(sde, score_fn, shape, rtol=s.rtol, atol=s.atol, eps=s.eps, method=s.ode_method,
                                       steps=s.ode_steps, denoise=s.denoise, seed=seed, device=device, **_on(cond, device))
    elif s.method == "pc":
        def sample(score_fn, shape, seed, start: int = 0, **cond):
            return samplers.pc_sample(sde, score_fn, shape, predictor=s.predictor, corrector=s.corrector, snr=s.snr,
                                      n_steps=s.n_steps, N=s.N, eps=s.eps, denoise=s.denoise, seed=seed,
                                      device=device, corrector_options=corrector_options(config), **_on(cond, device))
    else:
        fn, extra = samplers.get_sampler(s.method), sampler_options(config)
        times = (s.grid or None) if grid is None else grid

        def sample(score_fn, shape, seed, start: int = 0, **cond):
            return fn(sde, score_fn, shape, steps=s.steps, grid=times, eps=s.eps, seed=seed, device=device,
                      **extra, **_on(cond, device))
    return sample


def sampler_options(config) -> Dict[str, Any]:
    """The config.sampling keys named like keyword arguments of sampling.method's function (eta,
    order, s_churn, rtol, ...), besides the ones every sampler takes."""
    s = config.sampling
    params = inspect.signature(samplers.get_sampler(s.method)).parameters
    return {k: s[k] for k in params if k in s and k not in _COMMON_SAMPLING}


def build_task_sampler(config, sde: sde_lib.SDE, observed: Tensor, mask: Optional[Tensor]):
    """sample(score_fn, shape, seed, start=0, **cond) for config.sampling.task: inpainting (observed
    [N, C, H, W] in model space, known where mask [C, H, W] is 1) or colorization (the gray level of
    observed is known), with the configured sampler one grid interval at a time and
    config.sampling.resample RePaint passes. Sample i completes observed[i mod N]."""
    s, device = config.sampling, get_device(config)
    if s.method == "pc":
        steps, options = s.N, {"predictor": s.predictor, "corrector": s.corrector, "snr": s.snr,
                               "n_steps": s.n_steps, "corrector_options": corrector_options(config)}
    elif s.method == "ode":
        steps, options = s.ode_steps, {"method": s.ode_method}
    else:  # denoise is passed below, to the task sampler
        steps, options = s.steps, {k: v for k, v in sampler_options(config).items() if k != "denoise"}
    common = dict(sampler=s.method, steps=steps, resample=s.resample, eps=s.eps, denoise=s.denoise,
                  device=device, sampler_options=options)

    def sample(score_fn, shape, seed, start: int = 0, **cond):
        y = observed[torch.arange(start, start + shape[0]) % len(observed)].to(device)
        if s.task == "inpaint":
            return samplers.inpaint_sample(sde, score_fn, shape, y=y, mask=mask.to(device), seed=seed, **common,
                                           **_on(cond, device))
        return samplers.colorize_sample(sde, score_fn, shape, gray=y.mean(1, keepdim=True), seed=seed, **common,
                                        **_on(cond, device))

    return sample


def _on(cond: dict, device) -> dict:
    return {k: v.to(device) for k, v in cond.items()}


# Sampler arguments that build_sampler sets itself, or that mean something else in config.sampling.
_COMMON_SAMPLING = ("steps", "grid", "eps", "seed", "device", "N", "n_steps", "method", "batch_size", "n_samples",
                    "class_label", "guidance", "guidance_scale", "classifier_path", "classifier_steps",
                    "task", "observed", "mask", "resample")


def corrector_options(config) -> dict:
    """config.sampling.corrector_options, limited to what the configured corrector takes."""
    takes = inspect.signature(samplers.get_corrector(config.sampling.corrector).__init__).parameters
    return {k: v for k, v in config.sampling.corrector_options.items() if k in takes}


def get_device(config) -> torch.device:
    """config.device as a torch.device: "auto" is CUDA when available, else the CPU."""
    name = config.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", name) if isinstance(name, str) else None
    _require(match is not None, "device", name, 'must be "auto", "cpu", "cuda" or "cuda:<index>"')
    if name != "cpu":
        count, index = torch.cuda.device_count(), int(match.group(1) or 0)
        _require(index < count, "device", name,
                 f"this machine has {count} CUDA device(s){'' if count else ' (or this torch build has no CUDA)'}; "
                 'use "cpu" or "auto"')
    return torch.device(name)


def configure_runtime(config) -> None:
    """Process-wide CPU settings for a command-line run: torch's thread count, and glibc's
    allocator told to keep freed memory (see `keep_freed_memory`)."""
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    keep_freed_memory()


def keep_freed_memory() -> bool:
    """Stop glibc from returning every large freed block to the OS (glibc only; else a no-op).

    By default each tensor over the mmap threshold is a fresh mapping that page-faults on first
    touch and is unmapped when freed; a network's activations pay that on every call. Raising
    M_MMAP_THRESHOLD (to 32 MiB, its maximum) and M_TRIM_THRESHOLD keeps the memory in the heap
    for reuse. Measured here: a small conv net's forward at batch 64 went from 25-29 ms to 12-15 ms.
    Returns whether the settings were applied.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


def validate_config(config: ml_collections.ConfigDict) -> torch.nn.Module:
    """Every check that can fail before training or evaluation starts. Returns the network, built
    (on the CPU) with the weights that torch.manual_seed(config.seed) gives, so callers need not
    build it again."""
    _one_of(config, "data.kind", ("points", "images"))
    _positive(config, "num_threads", integer=True, allow_zero=True)
    get_device(config)
    for key in ("training.batch_size", "training.n_iters", "training.log_freq",
                "training.snapshot_freq", "training.checkpoint_freq", "training.keep_checkpoints",
                "sampling.N", "sampling.n_steps", "sampling.steps", "sampling.n_samples", "sampling.batch_size",
                "eval.batch_size", "eval.n_nll", "eval.n_samples", "eval.n_probes", "sde.N"):
        _positive(config, key, integer=True)
    for key in ("optim.lr", "sampling.snr", "sampling.rtol", "sampling.atol", "eval.nll_rtol", "eval.nll_atol"):
        _positive(config, key)
    for key in ("optim.weight_decay", "optim.grad_clip", "optim.warmup"):
        _positive(config, key, allow_zero=True)
    _require(0 <= config.model.ema_rate < 1, "model.ema_rate", config.model.ema_rate, "must lie in [0, 1)")
    _require(0 <= config.optim.beta1 < 1, "optim.beta1", config.optim.beta1, "must lie in [0, 1)")
    _validate_speed_options(config)
    sde = build_sde(config)
    for key in ("training.eps", "sampling.eps", "eval.nll_eps"):
        value = _get(config, key)
        _require(isinstance(value, float) and 0 < value < sde.T, key, value, f"must lie in (0, T) = (0, {sde.T:g})")
    _validate_sampling(config)
    _one_of(config, "eval.divergence", ("exact", "rademacher", "gaussian"))
    build_loss(config, sde)
    _validate_parametrization(config, sde)
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stays as it was
        torch.manual_seed(config.seed)
        net = build_model(config)
    weights = config.eval.weights_path
    _require(not weights or os.path.isfile(weights), "eval.weights_path", weights,
             "must name an existing file written by --mode export, or be '' to use the workdir's checkpoints")
    _validate_labels(config)
    if config.data.kind == "points":
        from score_toolkit import toy_data
        _one_of(config, "data.name", toy_data.DATASETS)
        _positive(config, "data.n_train", integer=True)
        _positive(config, "data.n_test", integer=True)
    else:
        _validate_images(config)
    return net


def check_world_size(config, world_size: int) -> None:
    """Data-parallel training splits each global batch of config.training.batch_size rows evenly
    over the world_size processes that torchrun started."""
    batch = config.training.batch_size
    _require(world_size <= 1 or batch % world_size == 0, "training.batch_size", batch,
             f"must be divisible by the world size {world_size} (the number of processes torchrun started)")


def _validate_speed_options(config) -> None:
    """Precision, memory format, Adam's implementation and compilation: values the device can run."""
    device = get_device(config)
    _one_of(config, "training.precision", PRECISIONS)
    precision = config.training.precision
    if precision == "bf16" and device.type == "cuda":
        _require(torch.cuda.is_bf16_supported(), "training.precision", precision,
                 f"{torch.cuda.get_device_name(device)} does not support bfloat16; use 'fp16', 'tf32' or 'fp32'")
    if precision in AUTOCAST_DTYPES:
        _require(autocast_supported(device.type, AUTOCAST_DTYPES[precision]), "training.precision", precision,
                 f"torch {torch.__version__} has no {AUTOCAST_DTYPES[precision]} autocast on {device.type}; "
                 f"use one of {[p for p in PRECISIONS if p not in AUTOCAST_DTYPES]}")
    for key in ("training.channels_last", "compile"):
        _require(isinstance(_get(config, key), bool), key, _get(config, key), "must be True or False")
    _require(not config.training.channels_last or config.data.kind == "images", "training.channels_last", True,
             "channels_last is a memory format of images [B, C, H, W]; set it False for point data")
    _one_of(config, "optim.impl", OPTIM_IMPLS)
    if config.optim.impl == "fused":
        _require(fused_adam_supported(device), "optim.impl", "fused",
                 f"torch {torch.__version__} has no fused Adam on {device.type}; use 'foreach' or 'default'")


def autocast_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether torch.autocast(device_type, dtype) is on when entered (an unsupported dtype is turned
    off with a warning)."""
    if not torch.amp.is_autocast_available(device_type):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autocast(device_type, dtype=dtype):
            return torch.is_autocast_enabled(device_type)


def fused_adam_supported(device: torch.device) -> bool:
    """Whether torch.optim.Adam(fused=True) takes parameters on `device` (it checks at construction)."""
    try:
        torch.optim.Adam([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except RuntimeError:
        return False
    return True


def _validate_sampling(config) -> None:
    _one_of(config, "sampling.method", samplers.list_samplers())
    _one_of(config, "sampling.predictor", samplers.list_predictors())
    _one_of(config, "sampling.corrector", samplers.list_correctors())
    _one_of(config, "sampling.ode_method", samplers.ode_methods())
    grid = config.sampling.grid
    _require(grid in ("", "fitted") or grid in samplers.list_grids(), "sampling.grid", grid,
             f"must be '' (the sampler's default), 'fitted' or one of {samplers.list_grids()}")
    if grid == "fitted":
        _validate_fitted_grid(config)
    _validate_guidance(config)
    _validate_task(config)


def _validate_fitted_grid(config) -> None:
    """sampling.grid = "fitted": a deterministic sampler that steps along the grid it is given (not
    pc / ode, which read N / ode_steps), no inpainting task, and a pilot of at least 2 draws."""
    s = config.sampling
    _require(s.method not in ("pc", "ode"), "sampling.grid", s.grid,
             f"needs a sampler that takes sampling.steps and sampling.grid; sampling.method = {s.method!r} reads "
             f"{'sampling.N' if s.method == 'pc' else 'sampling.ode_steps'} instead (try unipc or dpmpp_2m)")
    try:
        samplers.fitted_grid.check_fittable(s.method, sampler_options(config), build_sde(config))
    except ValueError as e:
        raise ConfigError(f"sampling.grid = 'fitted' with sampling.method = {s.method!r}: {e}") from e
    _require(s.task == "none", "sampling.grid", s.grid, f"needs sampling.task = 'none', not {s.task!r}")
    _require(isinstance(s.fit_pilot, int) and s.fit_pilot >= 2, "sampling.fit_pilot", s.fit_pilot,
             "must be an integer >= 2 (pilot draws)")
    _positive(config, "sampling.fit_evals", integer=True, allow_zero=True)


def _validate_task(config) -> None:
    """Inpainting and colorization: image data, an observation file, and a sampler that steps one interval."""
    s = config.sampling
    _one_of(config, "sampling.task", ("none", "inpaint", "colorize"))
    _positive(config, "sampling.resample", integer=True)
    if s.task == "none":
        return
    _require(config.data.kind == "images", "sampling.task", s.task, "needs image data (config.data.kind = 'images')")
    _require(bool(s.observed) and os.path.isfile(s.observed), "sampling.observed", s.observed,
             f"must name an image file (.png, or .npz of uint8 'samples') for sampling.task = {s.task!r}")
    own_steps = s.method == "adaptive" or (s.method == "ode" and samplers.ode.chooses_own_steps(s.ode_method))
    _require(not own_steps, "sampling.method", s.method,
             "must step one grid interval at a time for inpainting: any sampler but 'adaptive' ('ode' with a "
             "fixed-step sampling.ode_method such as 'rk4')")
    if s.task == "colorize":
        _require(config.data.num_channels == 3, "sampling.task", s.task, "colorization needs 3-channel images")
    from score_toolkit import data_lib
    shape = (config.data.num_channels, config.data.image_size, config.data.image_size)
    try:  # shapes and mask names now, before any work
        data_lib.load_observed(s.observed, shape)
        if s.task == "inpaint":
            data_lib.inpainting_mask(s.mask, shape)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _validate_guidance(config) -> None:
    """Labels, guidance and the network agree: guidance needs labels to guide towards."""
    s, K = config.sampling, config.model.num_classes
    _one_of(config, "sampling.guidance", ("cfg", "classifier"))
    _positive(config, "sampling.guidance_scale", allow_zero=True)
    _positive(config, "model.num_classes", integer=True, allow_zero=True)
    if s.guidance_scale > 0 and s.guidance == "cfg":
        _require(K > 0, "sampling.guidance_scale", s.guidance_scale,
                 "classifier-free guidance needs a class-conditional network, and config.model.num_classes = 0; "
                 "set sampling.guidance_scale = 0, or sampling.guidance = 'classifier' with a noisy classifier")
    if s.guidance_scale > 0 and s.guidance == "classifier":
        path = s.classifier_path
        _require(bool(path) and os.path.isfile(path), "sampling.classifier_path", path,
                 "must name a noise-conditional classifier written by --mode noisy_classifier when "
                 "sampling.guidance = 'classifier' and sampling.guidance_scale > 0")
    limit, k = (K if K > 0 else (num_classes(config) if s.guidance_scale > 0 else 0)), s.class_label
    _require(isinstance(k, int) and not isinstance(k, bool) and (k == -1 or 0 <= k < limit),
             "sampling.class_label", k,
             f"must be -1 (every class in turn) or a class in [0, {limit})" if limit else
             "must be -1: the network is unconditional (config.model.num_classes = 0) and no classifier guides it")


def _validate_parametrization(config, sde) -> None:
    """Combinations of network and SDE settings that mean nothing are refused, naming both keys."""
    m = config.model
    _require(m.parametrization in ("auto",) + models.PARAMETRIZATIONS, "model.parametrization", m.parametrization,
             f"must be 'auto' (the SDE's default: {sde.parametrization!r} for {config.sde.name}) or one of "
             f"{list(models.PARAMETRIZATIONS)}")
    if m.get("scale_by_sigma", False):
        _require(sde.conditioning == "sigma", "model.scale_by_sigma", True,
                 f"the network divides its output by its noise label, which is 999 t, not sigma, for "
                 f"config.sde.name = {config.sde.name!r}; use scale_by_sigma=False or a VE SDE")
        param = sde.parametrization if m.parametrization == "auto" else m.parametrization
        _require(param == "score", "model.scale_by_sigma", True,
                 f"a network that divides by sigma predicts the score, but config.model.parametrization = "
                 f"{m.parametrization!r} ({param!r})")
    if "centered" in m and "centered" in config.data:
        _require(m.centered == config.data.centered, "model.centered", m.centered,
                 f"must equal config.data.centered = {config.data.centered!r} (the network would rescale "
                 f"data that are already in its range, or miss data that are not)")


# Labels of the data sets that have them (the folder data set's depend on its folders).
DATA_CLASSES = {"gmm": 8, "fashion_mnist": 10, "mnist": 10, "cifar10": 10}


def _validate_labels(config) -> None:
    """A class-conditional network needs a data set with labels, and a class for every label."""
    K, name = config.model.num_classes, config.data.name.lower().replace("-", "_")
    if K == 0 or name == "folder":
        return
    _require(name in DATA_CLASSES, "model.num_classes", K,
             f"config.data.name = {config.data.name!r} has no labels; a class-conditional network needs one of "
             f"{sorted(DATA_CLASSES)} (or num_classes = 0)")
    _require(K >= DATA_CLASSES[name], "model.num_classes", K,
             f"config.data.name = {config.data.name!r} has {DATA_CLASSES[name]} classes; num_classes must be at least that")


def _validate_images(config) -> None:
    from score_toolkit import image_data
    name = config.data.name.lower().replace("-", "_")
    _require(name in image_data.KNOWN_DATASETS, "data.name", config.data.name,
             f"must be one of {list(image_data.KNOWN_DATASETS)}")
    _positive(config, "data.image_size", integer=True)
    _one_of(config, "data.num_channels", (1, 3))
    _positive(config, "data.pad_to", integer=True, allow_zero=True)
    for key in ("model.image_size", "model.num_channels"):
        data_key = "data." + key.split(".")[1]
        _require(_get(config, key) == _get(config, data_key), key, _get(config, key),
                 f"must equal config.{data_key} = {_get(config, data_key)!r}")
    _one_of(config, "eval.feature_extractor", ("none", "classifier", "inception"))
    if config.eval.feature_extractor != "none":
        for key in ("eval.feature_path", "eval.stats_path"):
            _require(bool(_get(config, key)), key, _get(config, key),
                     f"must name a file when config.eval.feature_extractor = {config.eval.feature_extractor!r}")


# Keys that may differ between runs of one workdir: how long and how often (training.n_iters and the
# frequencies), where (device, num_threads, data.root: the files' location, not their content),
# how to sample and evaluate (sampling.*, eval.*), and how fast to compute the same steps (memory
# format, Adam's implementation, compilation; training.precision changes the steps and stays fixed). Every other key (data, SDE, model, loss, optimizer,
# batch size, seed: the seed draws the initial weights, the data stream and the 2-D data sets) defines
# what the workdir's checkpoints are. A key that only one side has (added to or removed from the
# configs since the workdir was made) is allowed too: a new key's default keeps the old behaviour.
RUN_TIME_KEYS = ("training.n_iters", "training.log_freq", "training.snapshot_freq", "training.checkpoint_freq",
                 "training.keep_checkpoints", "device", "num_threads", "data.root", "sampling.*", "eval.*",
                 "training.channels_last", "optim.impl", "compile")
ABSENT = "(absent)"


def is_run_time_key(key: str) -> bool:
    return any(key == k or (k.endswith(".*") and key.startswith(k[:-1])) for k in RUN_TIME_KEYS)


def flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: the leaf keys of a (JSON-loaded) config."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_differences(saved: Dict[str, Any], config) -> Tuple[List[tuple], List[tuple]]:
    """(refused, allowed): the keys whose values differ between `saved` (a config as JSON-loaded, e.g.
    a workdir's config.json) and `config`, sorted, as (key, saved value, new value) with ABSENT for a
    key that one of them lacks; `allowed` holds the RUN_TIME_KEYS among them and the keys one side lacks."""
    old, new = flatten(saved), flatten(json.loads(config.to_json()))
    diffs = [(k, old.get(k, ABSENT), new.get(k, ABSENT)) for k in sorted(set(old) | set(new))
             if old.get(k, ABSENT) != new.get(k, ABSENT)]
    ok = [d for d in diffs if is_run_time_key(d[0]) or ABSENT in (d[1], d[2])]
    return [d for d in diffs if d not in ok], ok


def describe_differences(diffs) -> str:
    """`config.<key> is <there> there, <here> here; ...` for (key, saved value, new value) triples."""
    return "; ".join(f"config.{k} is {a!r} there, {b!r} here" for k, a, b in diffs)
