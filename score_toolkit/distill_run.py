"""--mode distill: train a few-step student of a trained teacher (`distillation`) into its own workdir.

The run's config is the student's: the teacher's data, SDE and network settings with a config.distill
section. config.distill.teacher names the teacher, a trained workdir (its newest checkpoint's EMA
weights) or a weights file written by --mode export; its data, SDE, network and parametrization must
be the run's, since the student starts from its weights. The run is a training run (resumable bit for
bit, checkpoints in <workdir>/checkpoints) whose finished stages are also written as EMA weights to
<workdir>/distilled/<name>.pt. Consistency training needs no teacher (one given starts the student
from its weights).
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Tuple

import ml_collections
import torch

import samplers
from score_toolkit import checkpoints, distributed, evaluation, factories, run_config, runtime, training
from score_toolkit.errors import ConfigError, MissingInputError, require


def check_inputs(config, workdir: str) -> torch.nn.Module:
    """Every check before any work: a distillation method, the training inputs (`training.check_inputs`)
    and a teacher that fits the run's config. Returns the student's network as validate_config built it."""
    d = config.distill
    require(bool(d.method), "distill.method", d.method, "must name the distillation for --mode distill: "
            "progressive, consistency_distillation or consistency_training")
    require(distributed.env_world_size() <= 1, "distill.method", d.method,
            "runs in one process: start it without torchrun")
    net = training.check_inputs(config, workdir)
    if d.teacher or d.method != "consistency_training":
        check_teacher(config)
    return net


def check_teacher(config) -> None:
    """The teacher's weights-defining keys (`run_config.weights_config`) against the run's: a missing
    teacher (MissingInputError), or one of another data set, SDE, network or parametrization (ConfigError)."""
    path = config.distill.teacher
    require(bool(path), "distill.teacher", path,
            f"must name the teacher (a trained workdir or an exported weights file) for {config.distill.method}")
    if os.path.isdir(path):
        saved = checkpoints.read_run_config(path)
        if saved is None or not checkpoints.has_checkpoints(path):
            raise MissingInputError(f"config.distill.teacher = {path!r}: no trained workdir there (no config.json "
                                    "with checkpoints beside it)")
        weights = run_config.weights_config(ml_collections.ConfigDict(saved))
    elif os.path.isfile(path):
        weights = checkpoints.load_file(path, ("model", "step"), "weights", "write one with --mode export").get("config", {})
    else:
        raise MissingInputError(f"config.distill.teacher = {path!r}: no such workdir or weights file")
    weights = {k: v for k, v in weights.items() if not k.startswith("distill.")}  # the teacher's own training
    differ = run_config.weights_differences(weights, config)
    if differ:
        raise ConfigError(f"config.distill.teacher = {path!r} was trained with another config than this student's: "
                          f"{run_config.describe_differences(differ)}")


def load_teacher(config, sde, device) -> Tuple[Optional[object], Optional[torch.nn.Module]]:
    """(the teacher's score_fn, guided at config.distill.guidance_scale; its network), on `device`;
    (None, None) for consistency training without a teacher."""
    d = config.distill
    if not d.teacher:
        return None, None
    plain = ml_collections.ConfigDict(config.to_dict())
    plain.distill.method = ""  # the teacher is a score model, not a consistency function
    if os.path.isfile(d.teacher):
        plain.eval.weights_path, workdir = d.teacher, ""
    else:
        plain.eval.weights_path, workdir = "", d.teacher
    net, step = evaluation.load_ema_model(plain, workdir)
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    logging.info("teacher: %s (step %d)", d.teacher, step)
    score = factories.build_precond(plain, sde, net)
    if d.guidance_scale > 0:
        score = samplers.cfg_score(score, d.guidance_scale, null_label=config.model.num_classes)
    return score, net


def run(config, workdir: str, net: Optional[torch.nn.Module] = None,
        max_steps: Optional[int] = None) -> training.TrainState:
    """Distil per config into workdir (module docstring), resuming from its newest checkpoint;
    `max_steps` as for `training.train`."""
    net = check_inputs(config, workdir) if net is None else net
    sde = factories.build_sde(config)
    loss = factories.distillation_loss(config, sde)
    teacher, teacher_net = load_teacher(config, sde, runtime.get_device(config))
    loss.attach(teacher, teacher_net)
    return training.train(config, workdir, max_steps=max_steps, net=net, loss_fn=loss)

