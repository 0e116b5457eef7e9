"""--mode cascade: sample a cascade of trained workdirs, base -> SR -> SR, with `samplers.cascade_sample`.

The run's config and workdir are the last (super-resolution) stage's; config.sampling.cascade_from names
the workdir of the stage below it, whose config.json may name its own, down to a base model (sr_from = 0).
Every stage samples with its own config's sampler, steps, grid and guidance; each super-resolution
stage takes its low-resolution input at its own sampling.aug_level, truncated (sampling.truncated: the
stage below stops at s T) or not. Every stage's samples are kept, batch by batch and atomically, under
<workdir>/<eval_folder>/cascade_ckpt<step>/stage_<i>/, and read back when a rerun finds them drawn with
the same settings; <...>/stage_<last>.png shows the result.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import List, Tuple

import ml_collections
import numpy as np
import torch

import samplers
from score_toolkit import checkpoints, data_lib, evaluation, factories, image_data
from score_toolkit.errors import ConfigError, MissingInputError

MAX_STAGES = 8


def stage_runs(config, workdir: str) -> List[Tuple[ml_collections.ConfigDict, str]]:
    """[(config, workdir)] from the base stage up to this one, each stage below read from its
    workdir's config.json; a missing workdir, config or checkpoint names itself."""
    runs = [(config, workdir)]
    while runs[0][0].sampling.get("cascade_from", ""):
        below = runs[0][0].sampling.cascade_from
        path = os.path.join(below, "config.json")
        if not os.path.isfile(path):
            raise MissingInputError(f"config.sampling.cascade_from = {below!r}: no trained workdir there ({path} "
                                    "does not exist)")
        if len(runs) == MAX_STAGES or any(os.path.samefile(below, w) for _, w in runs if os.path.isdir(w)):
            raise ConfigError(f"config.sampling.cascade_from = {below!r} is not allowed: the chain of workdirs "
                              f"loops or passes {MAX_STAGES} stages")
        with open(path) as f:
            stage = ml_collections.ConfigDict(json.load(f))
        stage.device = config.device
        runs.insert(0, (stage, below))
    return runs


def check_inputs(config, workdir: str):
    """Every check before any work: each stage's config and checkpoint, and that the stages chain
    (sizes, channels, centring; a shared SDE where truncated). Returns this stage's network."""
    runs = stage_runs(config, workdir)
    if len(runs) < 2:
        raise ConfigError("config.sampling.cascade_from = '' is not allowed for --mode cascade: name the workdir of "
                          "the stage below this super-resolution model")
    nets = [evaluation.check_inputs(c, w, "sample") for c, w in runs]
    for i, ((low, _), (high, w)) in enumerate(zip(runs, runs[1:]), start=1):
        d, m = low.data, high.model
        if m.get("sr_from", 0) != d.image_size:
            raise ConfigError(f"stage {i} ({w}) is not a super-resolution model of stage {i - 1}'s {d.image_size}x"
                              f"{d.image_size} images: its config.model.sr_from = {m.get('sr_from', 0)!r}")
        if d.num_channels != high.data.num_channels or d.centered != high.data.centered:
            raise ConfigError(f"stage {i} ({w}) does not chain onto stage {i - 1}: channels {high.data.num_channels} "
                              f"and {d.num_channels}, centred {high.data.centered} and {d.centered}")
    if runs[0][0].model.get("sr_from", 0):
        raise ConfigError(f"the cascade's base stage ({runs[0][1]}) is a super-resolution model itself; name its "
                          "own stage below in its config.sampling.cascade_from")
    return nets[-1]


def run(config, workdir: str, eval_folder: str = "eval") -> str:
    """Draw config.sampling.n_samples samples through the cascade (module docstring); returns the folder."""
    runs = stage_runs(config, workdir)
    device = evaluation.local_device(config)
    stages, steps = [], []
    for c, w in runs:
        sde = factories.build_sde(c)
        model, step = evaluation.load_ema_model(c, w)
        score_fn = factories.build_score_fn(c, sde, model.to(device), device)
        shape = (c.data.num_channels, c.data.image_size, c.data.image_size)
        stages.append(samplers.Stage(sde, score_fn, shape, sampler=c.sampling.method, options=factories.sampler_kwargs(c),
                                     aug_level=c.sampling.get("aug_level", 0.0),
                                     truncated=c.sampling.get("truncated", False)))
        steps.append(step)
    folder = os.path.join(workdir, eval_folder, f"cascade_ckpt{steps[-1]}")
    data = data_lib.load(config)
    n, bs = config.sampling.n_samples, config.sampling.batch_size
    settings = json.dumps({"stages": [c.sampling.to_dict() for c, _ in runs], "checkpoints": steps,
                           "workdirs": [w for _, w in runs], "seed": config.seed}, sort_keys=True, default=str)
    final = []
    for b in range(math.ceil(n / bs)):
        size = min(bs, n - b * bs)
        paths = [os.path.join(folder, f"stage_{i}", f"batch_{b}.npz") for i in range(len(stages))]
        kept = [evaluation.read_batch(p, settings + str(size)) for p in paths]
        if any(k is None for k in kept):
            with torch.no_grad():
                xs, info = samplers.cascade_sample(stages, size, seed=config.seed + 100_003 * (b + 1), device=device)
            kept = [_uint8(x, c) for x, (c, _) in zip(xs, runs)]
            for p, k in zip(paths, kept):
                os.makedirs(os.path.dirname(p), exist_ok=True)
                checkpoints.atomic_write_bytes(p, lambda f, k=k: np.savez(f, samples=k, settings=np.array(settings + str(size))),
                                               what="cascade batch")
            logging.info("cascade batch %d: %s network calls per stage", b, [i["nfe"] for i in info])
        final.append(torch.from_numpy(kept[-1]))
    x = torch.cat(final)
    data.plot(x, os.path.join(folder, f"stage_{len(stages) - 1}.png"), f"{len(x)} cascade samples, stages at steps {steps}")
    logging.info("wrote every stage's %d samples under %s", len(x), folder)
    return folder


def _uint8(x: torch.Tensor, config) -> np.ndarray:
    """Model-space images of a stage -> uint8 [N, C, H, W] (a truncated stage's x_{sT} included, as noisy images)."""
    scaled = (x.detach().float().cpu() + 1) / 2 if config.data.centered else x.detach().float().cpu()
    return image_data.to_uint8(scaled.clamp(0, 1)).numpy()
