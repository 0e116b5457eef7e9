"""Every check of a config that can fail before training or evaluation starts (`validate_config`),
each failing with a ConfigError that names the key, the bad value and what is allowed: the numbers'
ranges, the device and what it runs (precision, memory format, Adam's implementation), the SDE,
loss and network the factories build from it, the sampler and its grid, guidance and labels, the
inpainting and colorization tasks, and the data set; and that torchrun's world size divides the
batch (`check_world_size`)."""
from __future__ import annotations

import os
import re

import ml_collections
import torch

from score_toolkit import data_lib
from score_toolkit import factories
from score_toolkit import image_data
from score_toolkit import inverse_problems
from score_toolkit import runtime
from score_toolkit import caption_data
from score_toolkit import latent_data
from score_toolkit import toy_data
from score_toolkit import vlb_losses
from score_toolkit.config_keys import get_key
from score_toolkit.errors import ConfigError, require
import likelihood
import models
import samplers


def validate_config(config: ml_collections.ConfigDict) -> torch.nn.Module:
    """Every check that can fail before training or evaluation starts. Returns the network, built
    (on the CPU) with the weights that torch.manual_seed(config.seed) gives, so callers need not
    build it again."""
    _one_of(config, "data.kind", ("points", "images"))
    _positive(config, "num_threads", integer=True, allow_zero=True)
    runtime.get_device(config)
    for key in ("training.batch_size", "training.n_iters", "training.log_freq",
                "training.snapshot_freq", "training.checkpoint_freq", "training.keep_checkpoints",
                "sampling.N", "sampling.n_steps", "sampling.steps", "sampling.n_samples", "sampling.batch_size",
                "eval.batch_size", "eval.n_nll", "eval.n_samples", "eval.n_probes", "sde.N"):
        _positive(config, key, integer=True)
    for key in ("optim.lr", "sampling.snr", "sampling.rtol", "sampling.atol", "eval.nll_rtol", "eval.nll_atol"):
        _positive(config, key)
    for key in ("optim.weight_decay", "optim.grad_clip", "optim.warmup"):
        _positive(config, key, allow_zero=True)
    require(0 <= config.model.ema_rate < 1, "model.ema_rate", config.model.ema_rate, "must lie in [0, 1)")
    require(0 <= config.optim.beta1 < 1, "optim.beta1", config.optim.beta1, "must lie in [0, 1)")
    _validate_speed_options(config)
    sde = factories.build_sde(config)
    for key in ("training.eps", "sampling.eps", "eval.nll_eps"):
        value = get_key(config, key)
        require(isinstance(value, float) and 0 < value < sde.T, key, value, f"must lie in (0, T) = (0, {sde.T:g})")
    _validate_sampling(config)
    _one_of(config, "eval.divergence", ("exact", "rademacher", "gaussian"))
    _validate_variances(config, sde)
    _validate_super_resolution(config)
    factories.build_loss(config, sde)
    _validate_distill(config, sde)
    _validate_parametrization(config, sde)
    if caption_data.is_text(config):  # before the network, which holds the text encoder
        caption_data.check_config(config)
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stays as it was
        torch.manual_seed(config.seed)
        net = factories.build_model(config)
    weights = config.eval.weights_path
    require(not weights or os.path.isfile(weights), "eval.weights_path", weights,
            "must name an existing file written by --mode export, or be '' to use the workdir's checkpoints")
    _validate_labels(config)
    if config.data.kind == "points":
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
    require(world_size <= 1 or batch % world_size == 0, "training.batch_size", batch,
            f"must be divisible by the world size {world_size} (the number of processes torchrun started)")


def _validate_speed_options(config) -> None:
    """Precision, memory format, Adam's implementation and compilation: values the device can run."""
    device = runtime.get_device(config)
    _one_of(config, "training.precision", runtime.PRECISIONS)
    precision = config.training.precision
    if precision == "bf16" and device.type == "cuda":
        require(torch.cuda.is_bf16_supported(), "training.precision", precision,
                f"{torch.cuda.get_device_name(device)} does not support bfloat16; use 'fp16', 'tf32' or 'fp32'")
    dtypes = runtime.AUTOCAST_DTYPES
    if precision in dtypes:
        require(runtime.autocast_supported(device.type, dtypes[precision]), "training.precision", precision,
                f"torch {torch.__version__} has no {dtypes[precision]} autocast on {device.type}; "
                f"use one of {[p for p in runtime.PRECISIONS if p not in dtypes]}")
    for key in ("training.channels_last", "compile"):
        require(isinstance(get_key(config, key), bool), key, get_key(config, key), "must be True or False")
    require(not config.training.channels_last or config.data.kind == "images", "training.channels_last", True,
            "channels_last is a memory format of images [B, C, H, W]; set it False for point data")
    _one_of(config, "optim.impl", runtime.OPTIM_IMPLS)
    if config.optim.impl == "fused":
        require(runtime.fused_adam_supported(device), "optim.impl", "fused",
                f"torch {torch.__version__} has no fused Adam on {device.type}; use 'foreach' or 'default'")


def _validate_sampling(config) -> None:
    _one_of(config, "sampling.method", samplers.list_samplers() + list(inverse_problems.SOLVERS))
    _one_of(config, "sampling.predictor", samplers.list_predictors())
    _one_of(config, "sampling.corrector", samplers.list_correctors())
    _one_of(config, "sampling.ode_method", samplers.ode_methods())
    grid = config.sampling.grid
    require(grid in ("", "fitted") or grid in samplers.list_grids(), "sampling.grid", grid,
            f"must be '' (the sampler's default), 'fitted' or one of {samplers.list_grids()}")
    if grid == "fitted":
        _validate_fitted_grid(config)
    _validate_guidance(config)
    _validate_task(config)
    _validate_sampler_options(config)


def _validate_sampler_options(config) -> None:
    """The configured sampler's options through the checks the research API runs (`samplers.probe`:
    no network call), so a value that cannot work is refused before any folder is made, naming its key."""
    s, sde = config.sampling, factories.build_sde(config)
    if s.method in inverse_problems.SOLVERS:
        return  # checked with its observation by _validate_task
    try:
        if s.task == "none":
            kwargs = factories.sampler_kwargs(config)
            if kwargs.get("variance") in ("learned_range", "analytic"):  # the head and Gamma: _validate_variances
                kwargs["variance"] = "fixed_small"
            samplers.check_options(s.method, sde, **kwargs)
        else:  # the task runs the sampler one interval at a time
            shape = (1, config.data.num_channels, config.data.image_size, config.data.image_size)
            samplers.probe(samplers.inpaint_sample, sde, shape, y=torch.zeros(shape), mask=torch.ones(shape),
                           sampler=s.method, steps=s[factories.steps_key(config)], eps=s.eps,
                           sampler_options=factories.sampler_options(config))
    except (ValueError, TypeError) as e:
        word = re.match(r"\w+", str(e))
        key = factories.option_key(config, word.group(0)) if word else None
        where = f"config.sampling.{key} = {s[key]!r}" if key else f"config.sampling.method = {s.method!r}"
        raise ConfigError(f"{where} is not allowed: {e}") from e


def _validate_distill(config, sde) -> None:
    """config.distill (`factories.distillation_loss` checks the method's own keys)."""
    d = config.distill
    if not d.method:
        return
    loss = factories.distillation_loss(config, sde)
    if d.method == "progressive":
        total = loss.total_steps
        require(config.training.n_iters == total, "training.n_iters", config.training.n_iters,
                f"must be the distillation's {total} steps: its halvings "
                f"(distill.teacher_steps {d.teacher_steps} -> distill.final_steps {d.final_steps}) times "
                f"distill.steps_per_halving {d.steps_per_halving}")
    require(d.guidance_scale >= 0, "distill.guidance_scale", d.guidance_scale, "must be >= 0")
    require(d.guidance_scale == 0 or (config.model.num_classes > 0 and config.model.p_uncond > 0),
            "distill.guidance_scale", d.guidance_scale, "needs a class-conditional teacher trained with label "
            "dropout (model.num_classes > 0, model.p_uncond > 0)")
    require(d.guidance_scale == 0 or config.sampling.guidance_scale == 0, "sampling.guidance_scale",
            config.sampling.guidance_scale, "must be 0 for a student that learned the guided teacher "
            "(distill.guidance_scale > 0): it samples guided already")


def _validate_super_resolution(config) -> None:
    """A super-resolution model: image data, a low resolution that divides the size, augmentation levels
    and blur widths that mean something, and no evaluation that would call it without its low resolution."""
    m, t, s = config.model, config.training, config.sampling
    if not m.get("sr_from", 0):
        return
    require(config.data.kind == "images", "model.sr_from", m.sr_from, "needs image data (config.data.kind = 'images')")
    p = m.get("sr_p_uncond", 0.0)
    require(isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p < 1, "model.sr_p_uncond", p,
            "must be a number in [0, 1) (the probability of dropping the low resolution in training)")
    try:
        models.super_resolution.check_sr_args(m.sr_from, config.data.image_size, m.sr_upsample)
    except ValueError as err:
        raise ConfigError(f"config.model.sr_from = {m.sr_from!r} is not allowed: {err}") from err
    for key in ("training.sr_aug_max", "training.sr_blur_prob", "sampling.aug_level"):
        value = get_key(config, key)
        require(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1, key, value,
                "must be a number in [0, 1]")
    lo, hi = t.sr_blur_sigma_min, t.sr_blur_sigma_max
    require(isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0 <= lo <= hi, "training.sr_blur_sigma_max",
            hi, f"must be >= training.sr_blur_sigma_min = {lo!r} >= 0 (blur widths in low-resolution pixels)")
    require(s.task == "none", "sampling.task", s.task, "is not done by a super-resolution model: it samples given "
            "the low resolution of test images (sampling.aug_level), or in a cascade (samplers.cascade_sample)")
    for key in ("eval.enable_nll", "eval.enable_bound"):
        require(not get_key(config, key), key, True, "a super-resolution model's likelihood given its low resolution "
                "is not evaluated yet; set it False")


def _validate_variances(config, sde) -> None:
    """The variance head, the bound's training objectives, the ancestral sampler's variance and the
    evaluated bound: values that can work together (the 8-bit decoder needs image data)."""
    m, t, s, e = config.model, config.training, config.sampling, config.eval
    head = m.get("learn_variance", False)
    require(isinstance(head, bool), "model.learn_variance", head, "must be True or False")
    _one_of(config, "training.objective", vlb_losses.OBJECTIVES)
    if t.objective != "simple":
        require(config.data.kind == "images", "training.objective", t.objective,
                "L_vlb's decoder is the discretised Gaussian of 8-bit images; it needs config.data.kind = 'images'")
        require(t.continuous is True, "training.objective", t.objective,
                "trains on the chain's times with the continuous SDE's coefficients; set training.continuous = True")
        require(t.objective == "vlb" or head, "training.objective", t.objective,
                "its L_vlb trains the variance head alone (the mean's gradient is stopped there), and "
                "config.model.learn_variance = False; set it True, or use objective 'vlb'")
        _positive(config, "training.vlb_weight")
        _chain_steps(config, "training.vlb_steps", sde)
        _one_of(config, "training.time_sampler", vlb_losses.TIME_SAMPLERS)
        _positive(config, "training.time_history", integer=True)
        require(isinstance(t.time_uniform_mix, float) and 0 <= t.time_uniform_mix <= 1, "training.time_uniform_mix",
                t.time_uniform_mix, "must be a number in [0, 1]")
    if s.method == "ancestral":
        _needs_head(config, "sampling.variance", s.variance, head)
        if s.variance == "analytic":
            _positive(config, "sampling.gamma_images", integer=True)
    require(isinstance(e.enable_bound, bool), "eval.enable_bound", e.enable_bound, "must be True or False")
    if e.enable_bound:
        require(config.data.kind == "images", "eval.enable_bound", True,
                "the bound's decoder is the discretised Gaussian of 8-bit images; it needs config.data.kind = 'images'")
        _one_of(config, "eval.bound_variance", likelihood.BOUND_VARIANCES)
        _needs_head(config, "eval.bound_variance", e.bound_variance, head)
        _chain_steps(config, "eval.bound_steps", sde)
        _positive(config, "eval.n_bound", integer=True)
        if e.bound_variance == "analytic":
            _positive(config, "sampling.gamma_images", integer=True)


def _needs_head(config, key: str, variance: str, head: bool) -> None:
    require(variance != "learned_range" or head, key, variance,
            "needs a network with a variance head, and config.model.learn_variance = False; use fixed_small, "
            "fixed_large or analytic, or train a network with one")


def _chain_steps(config, key: str, sde) -> None:
    """Steps of a strided grid of the SDE's chain: 0 (the whole chain) to N - 1."""
    value = get_key(config, key)
    require(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= sde.N - 1, key, value,
            f"must be an integer in [0, N - 1 = {sde.N - 1}] (steps of the {sde.N}-step chain; 0: all of them)")


def _validate_fitted_grid(config) -> None:
    """sampling.grid = "fitted": a deterministic sampler that steps along the grid it is given (not
    pc / ode, which read N / ode_steps), no inpainting task, and a pilot of at least 2 draws."""
    s = config.sampling
    require(s.method not in ("pc", "ode"), "sampling.grid", s.grid,
            f"needs a sampler that takes sampling.steps and sampling.grid; sampling.method = {s.method!r} reads "
            f"{'sampling.N' if s.method == 'pc' else 'sampling.ode_steps'} instead (try unipc or dpmpp_2m)")
    try:
        samplers.fitted_grid.check_fittable(s.method, factories.sampler_options(config), factories.build_sde(config))
    except ValueError as e:
        raise ConfigError(f"sampling.grid = 'fitted' with sampling.method = {s.method!r}: {e}") from e
    require(s.task == "none", "sampling.grid", s.grid, f"needs sampling.task = 'none', not {s.task!r}")
    require(isinstance(s.fit_pilot, int) and s.fit_pilot >= 2, "sampling.fit_pilot", s.fit_pilot,
            "must be an integer >= 2 (pilot draws)")
    _positive(config, "sampling.fit_evals", integer=True, allow_zero=True)


def _validate_task(config) -> None:
    """Inverse problems: image data, an observation file, and a sampler that can do the task, every
    posterior sampler's check made on a stand-in observation (`inverse_problems.validate`)."""
    s = config.sampling
    _one_of(config, "sampling.task", ("none",) + inverse_problems.TASKS)
    _positive(config, "sampling.resample", integer=True)
    if s.task == "none":
        require(s.method not in inverse_problems.SOLVERS, "sampling.method", s.method,
                f"is a posterior sampler; it needs sampling.task, one of {list(inverse_problems.TASKS)}")
        return
    require(config.data.kind == "images", "sampling.task", s.task, "needs image data (config.data.kind = 'images')")
    require(bool(s.observed) and os.path.isfile(s.observed), "sampling.observed", s.observed,
            f"must name an image file (.png, or .npz of uint8 'samples') for sampling.task = {s.task!r}")
    posterior = s.method in inverse_problems.SOLVERS
    require(posterior or s.task in ("inpaint", "colorize"), "sampling.method", s.method,
            f"does replacement, which needs known pixels; sampling.task = {s.task!r} needs a posterior sampler, one "
            f"of {list(inverse_problems.SOLVERS)}")
    if not posterior:
        own_steps = samplers.sampler_info(s.method).own_steps(factories.sampler_options(config))
        require(not own_steps, "sampling.method", s.method,
                "must step one grid interval at a time for inpainting: any sampler but 'adaptive' ('ode' with a "
                "fixed-step sampling.ode_method such as 'rk4')")
    if s.task == "colorize":
        require(config.data.num_channels == 3, "sampling.task", s.task, "colorization needs 3-channel images")
    shape = (config.data.num_channels, config.data.image_size, config.data.image_size)
    try:  # shapes and mask names now, before any work
        data_lib.load_observed(s.observed, shape)
        mask = data_lib.inpainting_mask(s.mask, shape) if s.task == "inpaint" else None
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if posterior:
        _positive(config, "sampling.sigma_y", allow_zero=True)
        _positive(config, "sampling.particles", integer=True)
        inverse_problems.validate(config, factories.build_sde(config), shape, mask)


def _validate_guidance(config) -> None:
    """Labels, guidance and the network agree: guidance needs labels to guide towards."""
    s, K = config.sampling, config.model.num_classes
    _one_of(config, "sampling.guidance", ("cfg", "classifier"))
    _positive(config, "sampling.guidance_scale", allow_zero=True)
    _positive(config, "model.num_classes", integer=True, allow_zero=True)
    sr = config.model.get("sr_from", 0)
    if s.guidance_scale > 0 and s.guidance == "cfg" and sr:
        require(config.model.get("sr_p_uncond", 0.0) > 0, "sampling.guidance_scale", s.guidance_scale,
                "classifier-free guidance of a super-resolution model drops its low resolution, and this one was "
                "trained without dropping it (config.model.sr_p_uncond = 0); set sampling.guidance_scale = 0")
    elif s.guidance_scale > 0 and s.guidance == "cfg" and caption_data.is_text(config):
        require(config.text.p_uncond > 0, "sampling.guidance_scale", s.guidance_scale,
                "classifier-free guidance of a text model needs the null caption, which training with "
                "config.text.p_uncond = 0 never showed it; set sampling.guidance_scale = 0")
    elif s.guidance_scale > 0 and s.guidance == "cfg":
        require(K > 0, "sampling.guidance_scale", s.guidance_scale,
                "classifier-free guidance needs a class-conditional network, and config.model.num_classes = 0; "
                "set sampling.guidance_scale = 0, or sampling.guidance = 'classifier' with a noisy classifier")
    if s.guidance_scale > 0 and s.guidance == "classifier":
        path = s.classifier_path
        require(bool(path) and os.path.isfile(path), "sampling.classifier_path", path,
                "must name a noise-conditional classifier written by --mode noisy_classifier when "
                "sampling.guidance = 'classifier' and sampling.guidance_scale > 0")
    limit, k = (K if K > 0 else (factories.num_classes(config) if s.guidance_scale > 0 else 0)), s.class_label
    require(isinstance(k, int) and not isinstance(k, bool) and (k == -1 or 0 <= k < limit),
            "sampling.class_label", k,
            f"must be -1 (every class in turn) or a class in [0, {limit})" if limit else
            "must be -1: the network is unconditional (config.model.num_classes = 0) and no classifier guides it")


def _validate_parametrization(config, sde) -> None:
    """Combinations of network and SDE settings that mean nothing are refused, naming both keys."""
    m = config.model
    require(m.parametrization in ("auto",) + models.PARAMETRIZATIONS, "model.parametrization", m.parametrization,
            f"must be 'auto' (the SDE's default: {sde.parametrization!r} for {config.sde.name}) or one of "
            f"{list(models.PARAMETRIZATIONS)}")
    if m.get("scale_by_sigma", False):
        require(sde.conditioning == "sigma", "model.scale_by_sigma", True,
                f"the network divides its output by its noise label, which is 999 t, not sigma, for "
                f"config.sde.name = {config.sde.name!r}; use scale_by_sigma=False or a VE SDE")
        param = sde.parametrization if m.parametrization == "auto" else m.parametrization
        require(param == "score", "model.scale_by_sigma", True,
                f"a network that divides by sigma predicts the score, but config.model.parametrization = "
                f"{m.parametrization!r} ({param!r})")
    if "centered" in m and "centered" in config.data:
        require(m.centered == config.data.centered, "model.centered", m.centered,
                f"must equal config.data.centered = {config.data.centered!r} (the network would rescale "
                f"data that are already in its range, or miss data that are not)")


# Labels of the data sets that have them (the folder data set's depend on its folders).
DATA_CLASSES = {"gmm": 8, "fashion_mnist": 10, "mnist": 10, "cifar10": 10}


def _validate_labels(config) -> None:
    """A class-conditional network needs a data set with labels, and a class for every label."""
    K, name = config.model.num_classes, config.data.name.lower().replace("-", "_")
    if K == 0 or name == "folder":
        return
    require(name in DATA_CLASSES, "model.num_classes", K,
            f"config.data.name = {config.data.name!r} has no labels; a class-conditional network needs one of "
            f"{sorted(DATA_CLASSES)} (or num_classes = 0)")
    require(K >= DATA_CLASSES[name], "model.num_classes", K,
            f"config.data.name = {config.data.name!r} has {DATA_CLASSES[name]} classes; num_classes must be at least that")


def _validate_images(config) -> None:
    name = config.data.name.lower().replace("-", "_")
    require(name in image_data.KNOWN_DATASETS, "data.name", config.data.name,
            f"must be one of {list(image_data.KNOWN_DATASETS)}")
    _positive(config, "data.image_size", integer=True)
    _one_of(config, "data.num_channels", (1, 3))
    _positive(config, "data.pad_to", integer=True, allow_zero=True)
    if latent_data.is_latent(config):  # the network's shape is the latents' (latent_data.check_config)
        require(config.model.get("sr_from", 0) == 0, "model.sr_from", config.model.sr_from,
                "a latent model takes no low-resolution image; cascade pixel models instead")
        require(config.sampling.task in ("none", "inpaint") and not inverse_problems.uses_posterior_sampler(config),
                "sampling.task", config.sampling.task, "a latent model inpaints its latents (the mask taken to "
                "their resolution) by replacement; colorization and posterior sampling run on pixel models")
        require(not config.eval.enable_bound, "eval.enable_bound", True,
                "the discrete chain's bound has an 8-bit image decoder; a latent model's image bound is the "
                "NLL's (eval.enable_nll, with latent.decoder)")
        latent_data.check_config(config)
    for key in () if latent_data.is_latent(config) else ("model.image_size", "model.num_channels"):
        data_key = "data." + key.split(".")[1]
        require(get_key(config, key) == get_key(config, data_key), key, get_key(config, key),
                f"must equal config.{data_key} = {get_key(config, data_key)!r}")
    _one_of(config, "eval.feature_extractor", ("none", "classifier", "inception"))
    if config.eval.feature_extractor != "none":
        for key in ("eval.feature_path", "eval.stats_path"):
            require(bool(get_key(config, key)), key, get_key(config, key),
                    f"must name a file when config.eval.feature_extractor = {config.eval.feature_extractor!r}")


def _one_of(config, key: str, allowed) -> None:
    value = get_key(config, key)
    require(value in allowed, key, value, f"must be one of {sorted(allowed)}")


def _positive(config, key: str, integer: bool = False, allow_zero: bool = False) -> None:
    value = get_key(config, key)
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    kind = "an integer" if integer else "a number"
    require(ok, key, value, f"must be {kind} {'>= 0' if allow_zero else '> 0'}")
