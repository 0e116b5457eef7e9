"""What a workdir keeps: checkpoints that survive crashes (atomic writes, the last few kept, safe
loading, fallback on corruption) and the config the workdir was made with (`config.json`).

A checkpoint is a dict of tensors and plain values only, so `torch.load(weights_only=True)`
reads it; a file that needs the pickle machinery to run code is refused, never executed.

`config.json` is written once, atomically, by the first run that starts in the workdir (after
every input was checked). Later runs compare their config with it: keys that define the
checkpoints (data, SDE, model, loss, optimizer, seed) must agree, run-time keys
(`run_config.RUN_TIME_KEYS`) may differ and are logged.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import zipfile
from typing import List, Optional, Tuple

import torch

from score_toolkit.errors import ConfigError, UserError
from score_toolkit.run_config import config_differences, describe_differences

RUN_CONFIG = "config.json"

_NAME = re.compile(r"^checkpoint_(\d+)\.pth?$")  # .pth: the reference implementation's name


class UnsafeCheckpointError(UserError, RuntimeError):
    """The file holds pickled objects that plain weights loading refuses to run."""


def checkpoint_path(ckpt_dir: str, step: int) -> str:
    return os.path.join(ckpt_dir, f"checkpoint_{step}.pt")


def list_checkpoints(ckpt_dir: str) -> List[Tuple[int, str]]:
    """(step, path) of every checkpoint in ckpt_dir, newest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    found = [(int(m.group(1)), os.path.join(ckpt_dir, f)) for f in os.listdir(ckpt_dir) if (m := _NAME.match(f))]
    return sorted(found, reverse=True)


def save_checkpoint(ckpt_dir: str, step: int, state: dict, keep: int) -> str:
    """Write state to checkpoint_<step>.pt atomically, then delete all but the newest `keep`.

    The bytes go to a temporary file in the same folder, are flushed to disk, and the file is
    renamed into place: a crash leaves either the old set of checkpoints or the new one, never a
    half-written file under a checkpoint's name. An existing checkpoint is never overwritten.
    """
    path = atomic_save(state, checkpoint_path(ckpt_dir, step))
    for _, old in list_checkpoints(ckpt_dir)[keep:]:
        os.remove(old)
    return path


def atomic_save(state: dict, path: str) -> str:
    """torch.save(state) to path through a flushed temporary file renamed into place; an existing
    file is never overwritten (FileExistsError)."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists already; checkpoints are never overwritten")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(folder)
    return path


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load one checkpoint with weights_only=True; an unsafe file raises UnsafeCheckpointError."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported" in str(e) or "global" in str(e).lower():
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it holds pickled Python objects that could run code "
                f"(torch.load with weights_only=True rejected it: {str(e).splitlines()[0]}). "
                "Only checkpoints of plain tensors and values are read.") from e
        raise


def load_file(path, required, kind: str, hint: str, map_location="cpu") -> dict:
    """A weights-only file of `kind` (e.g. "classifier") that holds every key in `required`: a clear
    FileNotFoundError (with `hint`, how to make one) or ValueError otherwise."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} file {path} does not exist; {hint}")
    saved = load_checkpoint(str(path), map_location)
    missing = set(required) - set(saved)
    if missing:
        raise ValueError(f"{path}: not a {kind} file, missing {sorted(missing)}")
    return saved


def load_latest(ckpt_dir: str, map_location="cpu") -> Optional[Tuple[int, dict]]:
    """(step, state) of the newest checkpoint that loads; a truncated or corrupt one is skipped with
    a warning and the one before it is tried. An unsafe one stops everything. None if there is none."""
    for step, path in list_checkpoints(ckpt_dir):
        try:
            return step, load_checkpoint(path, map_location)
        except UnsafeCheckpointError:
            raise
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, KeyError) as e:
            logging.warning("checkpoint %s is unreadable (%s: %s); falling back to the previous one",
                            path, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    return None


class WorkdirMismatchError(ConfigError):
    """The config differs from the one the workdir was made with in a key that defines its checkpoints."""


def read_run_config(workdir: str) -> Optional[dict]:
    """The workdir's config.json as a dict, or None when there is none."""
    path = os.path.join(workdir, RUN_CONFIG)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_run_config(workdir: str, config) -> List[tuple]:
    """Refuse (WorkdirMismatchError, naming each key and both values) a config that differs from the
    workdir's config.json in a key that defines its checkpoints; return the run-time keys that differ,
    as (key, workdir value, new value). Writes nothing."""
    saved = read_run_config(workdir)
    if saved is None:
        return []
    refused, allowed = config_differences(saved, config)
    if refused:
        raise WorkdirMismatchError(
            f"{workdir} was made with another config ({os.path.join(workdir, RUN_CONFIG)}): "
            f"{describe_differences(refused)}\n"
            f"use the config it was made with, or another --workdir")
    return allowed


def start_run(workdir: str, config) -> None:
    """Create the workdir and, on its first run, write config.json atomically; on later runs log the
    run-time keys that differ from it (call check_run_config first)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, RUN_CONFIG)
    if not os.path.exists(path):
        atomic_write_text(path, config.to_json(indent=2))
        return
    changed = check_run_config(workdir, config)
    if changed:
        logging.info("run-time keys that differ from %s: %s", path,
                     ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changed))


def atomic_write_text(path: str, text: str) -> str:
    """Write text to path through a flushed temporary file renamed into place."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
