"""Config -> objects: one factory each for the SDE, the network and its preconditioning wrapper,
the score that sampling uses (guided or not), the class labels samples are drawn for, the loss and
the sampler (plain, or inpainting / colorization), shared by training, evaluation and sampling.
Each reads its settings from the config; the ones that place tensors (the guided score, the
samplers) are told the device, which under torchrun is this rank's rather than config.device.
`validation.validate_config` runs them once before any work; a value it could not foresee still
fails here as a ConfigError naming the key."""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from score_toolkit import caption_data
from score_toolkit import distillation
from score_toolkit import losses
from score_toolkit import noisy_classifier
from score_toolkit import vlb_losses
from score_toolkit.errors import ConfigError, require
import models
import samplers
import sde_lib

Tensor = torch.Tensor
MODEL_META_KEYS = ("name", "ema_rate", "parametrization")  # config.model keys that are not network arguments


def sde_kwargs(config, cls) -> dict:
    """The config.sde keys that `cls.__init__` takes (every constructor argument is settable)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: config.sde[k] for k in params if k != "self" and k in config.sde}


def build_sde(config) -> sde_lib.SDE:
    """The SDE named by config.sde.name, built from the config.sde keys its constructor takes."""
    names = sde_lib.SDES.names()
    require(config.sde.name in names, "sde.name", config.sde.name, f"must be one of {sorted(names)}")
    cls = sde_lib.SDES.get(config.sde.name)
    try:
        return cls(**sde_kwargs(config, cls))
    except ValueError as e:
        raise ConfigError(f"config.sde: {e}") from e


SR_KEYS = ("sr_from", "sr_upsample", "sr_p_uncond")  # a super-resolution network's; left out of every other network's arguments


def model_kwargs(config) -> dict:
    """The network's arguments: config.model but its meta keys (and the super-resolution keys when sr_from = 0)."""
    drop = MODEL_META_KEYS + (() if config.model.get("sr_from", 0) else SR_KEYS)
    return {k: v for k, v in config.model.items() if k not in drop}


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
        net = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.model: {e}") from e
    return caption_data.build_network(config, net) if caption_data.is_text(config) else net


def build_precond(config, sde: sde_lib.SDE, net: torch.nn.Module) -> models.Precond:
    """The wrapper that turns `net`'s output into scores, x0 and eps estimates (`models.precond`); for
    a consistency model (config.distill.method consistency_*), its consistency function around that."""
    param = config.model.parametrization
    precond = models.Precond(sde, net, None if param == "auto" else param, continuous=config.training.continuous)
    if is_consistency(config):
        return models.ConsistencyFunction(precond, consistency_t_min(config, sde), config.distill.sigma_data)
    return precond


def is_consistency(config) -> bool:
    return config.distill.method in ("consistency_distillation", "consistency_training")


def consistency_t_min(config, sde: sde_lib.SDE) -> float:
    """The time of a consistency model's boundary: where its noise level sigma / alpha is
    config.distill.sigma_min, or config.sampling.eps when that is 0."""
    sigma_min = config.distill.sigma_min
    if sigma_min == 0:
        return config.sampling.eps
    lowest, highest = (float(v) for v in models.consistency.noise_level(sde, torch.tensor([0.0, sde.T])))
    require(lowest < sigma_min < highest, "distill.sigma_min", sigma_min,
            f"must lie between the SDE's smallest and largest noise levels sigma / alpha, ({lowest:.6g}, "
            f"{highest:.6g}), or be 0 (the level at sampling.eps)")
    return float(sde.t_from_log_snr(torch.tensor(-math.log(sigma_min), dtype=torch.float64)))


def num_classes(config) -> int:
    """The number of classes sampling draws labels from: the network's, or the noisy classifier's."""
    if config.model.num_classes > 0:
        return config.model.num_classes
    if config.sampling.guidance == "classifier" and config.sampling.classifier_path:
        return noisy_classifier.load_noisy_classifier(config.sampling.classifier_path, "cpu")[0].num_classes
    return 0


def build_score_fn(config, sde: sde_lib.SDE, net: torch.nn.Module, device: torch.device):
    """The score samplers use: the wrapped network, guided by config.sampling.guidance at
    config.sampling.guidance_scale when that is > 0 (classifier-free: `samplers.cfg_score`, or for a
    super-resolution model `samplers.low_res_cfg_score`, which drops the low resolution; one batched
    call per step; classifier: `samplers.classifier_guided_score` with the noisy classifier, loaded
    onto `device`, where `net` is)."""
    model, s = build_precond(config, sde, net), config.sampling
    if s.guidance_scale == 0:
        return model
    if s.guidance == "cfg" and caption_data.is_text(config):  # a text model: the null caption
        return samplers.caption_cfg_score(model, s.guidance_scale)
    if s.guidance == "cfg" and config.model.get("sr_from", 0):  # a super-resolution model: drop its low resolution
        return samplers.low_res_cfg_score(model, s.guidance_scale)
    if s.guidance == "cfg":
        return samplers.cfg_score(model, s.guidance_scale, null_label=config.model.num_classes)
    classifier, _, _ = noisy_classifier.load_noisy_classifier(s.classifier_path, device)
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
    """The training loss of config.training.objective: the DSM loss ("simple", `losses.get_loss_fn`) or
    the discrete chain's bound ("hybrid", "vlb": `vlb_losses.VLBLoss`, whose term sampler is stateful)."""
    t = config.training
    try:
        if t.objective != "simple":
            return vlb_losses.VLBLoss(sde, vlb_chain(config, sde), t.objective, vlb_weight=t.vlb_weight,
                                      variance="learned_range" if config.model.learn_variance else "fixed_small",
                                      time_sampler=t.time_sampler, history=t.time_history,
                                      uniform_mix=t.time_uniform_mix, centered=config.data.centered)
        return losses.get_loss_fn(sde, continuous=t.continuous, weighting=t.weighting,
                                  importance_sampling=t.importance_sampling, reduce=t.reduce, eps=t.eps)
    except ValueError as e:
        raise ConfigError(f"config.training: {e}") from e


def distillation_loss(config, sde: sde_lib.SDE):
    """The loss of --mode distill (`distillation`): its teacher is attached by `distill_run`."""
    d = config.distill
    try:
        if d.method == "progressive":
            return distillation.ProgressiveDistillation(sde, d.grid, d.teacher_steps, d.final_steps,
                                                        d.steps_per_halving, d.weighting or "truncated_snr",
                                                        eps=config.sampling.eps)
        require(d.method in distillation.METHODS, "distill.method", d.method,
                f"must be '' (no distillation) or one of {', '.join(distillation.METHODS)}")
        return distillation.ConsistencyLoss(
            sde, d.method, config.training.n_iters, consistency_t_min(config, sde), d.sigma_data, schedule=d.schedule,
            s0=d.s0, s1=d.s1, mu0=d.mu0, solver=d.solver, loss=d.loss, huber_c=d.huber_c, weighting=d.weighting or "uniform",
            times=d.times, p_mean=d.p_mean, p_std=d.p_std)
    except ValueError as e:
        raise ConfigError(f"config.distill.{str(e)}") from e


def data_range(config) -> float:
    """The width of the data's interval, which bounds Analytic-DPM's variance (Theorem 2): 2 for images
    in [-1, 1], 1 in [0, 1]; unbounded for points."""
    if config.data.kind != "images":
        return math.inf
    return 2.0 if config.data.centered else 1.0


def chain_grid(sde: sde_lib.SDE, steps: int) -> Tensor:
    """The times of the discrete chain's bound: `samplers.ddpm_strided_grid` with `steps` steps, 0 for the
    SDE's whole N-step chain (N - 1 steps and the decoder at eps). The last time is sde.sampling_eps, or
    half the last chain time above it where sampling_eps does not lie below that (the cosine schedule's
    1000-step chain, whose index 1 is at T / 999 < 1e-3)."""
    steps = steps or sde.N - 1
    last = round((sde.N - 1) / steps) / (sde.N - 1) * sde.T if steps > 1 else sde.T
    return samplers.ddpm_strided_grid(sde, steps, eps=min(sde.sampling_eps, last / 2))


def vlb_chain(config, sde: sde_lib.SDE) -> Tensor:
    """The chain training's L_vlb is taken on (config.training.vlb_steps)."""
    return chain_grid(sde, config.training.vlb_steps)


# Sampler arguments a config.sampling key of another name sets: pc's steps are sampling.N, the ODE's
# steps and method are sampling.ode_steps and sampling.ode_method.
_RENAMED = {"pc": {"steps": "N"}, "ode": {"steps": "ode_steps", "method": "ode_method"}}


def steps_key(config) -> str:
    """The config.sampling key that holds the configured sampler's steps (N, ode_steps or steps)."""
    return _RENAMED.get(config.sampling.method, {}).get("steps", "steps")


def option_key(config, option: str) -> Optional[str]:
    """The config.sampling key that sets the configured sampler's argument `option`, if one does."""
    key = _RENAMED.get(config.sampling.method, {}).get(option, option)
    return key if key in config.sampling and (option in samplers.sampler_info(config.sampling.method).options
                                              or option in ("steps", "grid", "eps", "denoise")) else None


def sampler_options(config) -> Dict[str, Any]:
    """The configured sampler's own options (`samplers.sampler_info(name).options`: eta, order, s_churn,
    predictor, method, rtol, ...) from the config.sampling keys of their names (or `_RENAMED`)."""
    s = config.sampling
    keys = {**{k: k for k in samplers.sampler_info(s.method).options}, **_RENAMED.get(s.method, {})}
    options = {opt: s[key] for opt, key in keys.items() if key in s and opt != "steps"}
    if "corrector_options" in options:
        options["corrector_options"] = corrector_options(config)
    return options


def sampler_kwargs(config, grid: Optional[Tensor] = None) -> Dict[str, Any]:
    """Every argument of the configured sampler's function but score_fn, shape, seed, device and cond:
    its options, steps (none where the sampler chooses its own, and none with explicit times `grid`,
    which set them), the grid (`grid`, else config.sampling.grid; "" for the sampler's default), eps
    and denoise."""
    s, info = config.sampling, samplers.sampler_info(config.sampling.method)
    kwargs = {**sampler_options(config), "eps": s.eps, "denoise": s.denoise}
    if is_consistency(config):  # sampling ends at the consistency model's boundary
        kwargs["eps"] = consistency_t_min(config, build_sde(config))
    if not info.own_steps(kwargs):
        # "fitted" without the fitted times (training's snapshots): the sampler's default grid.
        kwargs["grid"] = (None if s.grid in ("", "fitted") else s.grid) if grid is None else grid
        if grid is None:  # explicit times set the steps
            kwargs["steps"] = s[steps_key(config)]
    return kwargs


def build_sampler(config, sde: sde_lib.SDE, device: torch.device, grid: Optional[Tensor] = None,
                  gamma: Optional[Tensor] = None) -> Callable[..., Tuple[Tensor, int]]:
    """sample(score_fn, shape, seed, start=0, cond=None) -> (x, nfe) with the configured sampler and
    `sampler_kwargs(config, grid)`, on `device` (the seed drives a generator on that device: the same
    seed gives other samples on another). `start`, the index of the batch's first sample, matters only
    to `build_task_sampler`. `gamma`: Analytic-DPM's per-step Gamma for the ancestral sampler."""
    fn, kwargs = samplers.get_sampler(config.sampling.method), sampler_kwargs(config, grid)
    if gamma is not None:
        kwargs["gamma"], kwargs["data_range"] = gamma.tolist(), data_range(config)

    def sample(score_fn, shape, seed, start: int = 0, cond: Optional[dict] = None):
        return fn(sde, score_fn, shape, seed=seed, device=device, cond=_on(cond, device), **kwargs)

    return sample


def build_task_sampler(config, sde: sde_lib.SDE, device: torch.device, observed: Tensor, mask: Optional[Tensor]):
    """sample(score_fn, shape, seed, start=0, cond=None) on `device` for config.sampling.task:
    inpainting (observed [N, C, H, W] in model space, known where mask [C, H, W] is 1) or colorization
    (the gray level of observed is known), with the configured sampler one grid interval at a time and
    config.sampling.resample RePaint passes. Sample i completes observed[i mod N]."""
    s = config.sampling
    common = dict(sampler=s.method, steps=s[steps_key(config)], resample=s.resample, eps=s.eps, denoise=s.denoise,
                  device=device, sampler_options=sampler_options(config))

    def sample(score_fn, shape, seed, start: int = 0, cond: Optional[dict] = None):
        y = observed[torch.arange(start, start + shape[0]) % len(observed)].to(device)
        if s.task == "inpaint":
            return samplers.inpaint_sample(sde, score_fn, shape, y=y, mask=mask.to(device), seed=seed, **common,
                                           cond=_on(cond, device))
        return samplers.colorize_sample(sde, score_fn, shape, gray=y.mean(1, keepdim=True), seed=seed, **common,
                                        cond=_on(cond, device))

    return sample


def _on(cond: Optional[dict], device) -> dict:
    return {k: v.to(device) for k, v in (cond or {}).items()}


def corrector_options(config) -> dict:
    """config.sampling.corrector_options, limited to what the configured corrector takes."""
    takes = inspect.signature(samplers.get_corrector(config.sampling.corrector).__init__).parameters
    return {k: v for k, v in config.sampling.corrector_options.items() if k in takes}
