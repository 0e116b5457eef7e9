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

import errno
import json
import logging
import os
import pickle
import re
import zipfile
from typing import List, Optional, Tuple

import torch

from score_toolkit.errors import BadFileError, ConfigError, UserError, WriteError
from score_toolkit.run_config import config_differences, describe_differences

RUN_CONFIG = "config.json"

_NAME = re.compile(r"^checkpoint_(\d+)\.pth?$")  # .pth: the reference implementation's name
TMP_MARK = ".tmp-"  # <name>.tmp-<pid>: a file being written
_TMP = re.compile(r"\.tmp-\d+(\.npz)?$")


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
    """Write state to checkpoint_<step>.pt atomically (`atomic_save`), then delete all but the newest `keep`."""
    path = atomic_save(state, checkpoint_path(ckpt_dir, step), what=f"the checkpoint of step {step}")
    for _, old in list_checkpoints(ckpt_dir)[keep:]:
        os.remove(old)
    return path


def atomic_save(state: dict, path: str, what: str = "") -> str:
    """torch.save(state) to path, atomically and never over an existing file (FileExistsError).

    The bytes go to a temporary file in the same folder, are flushed to disk, and the file is linked
    under its name (link fails, rather than replaces, if the name exists) and the temporary name
    removed: a crash leaves the old set of files or the new one, never a half-written file under a
    real name. A write that fails (a full disk, ...) removes its temporary file and raises WriteError
    naming `what`, the path and the reason; the files already there are untouched."""
    return _atomic(path, what or os.path.basename(path), lambda f: torch.save(state, f), replace=False)


def atomic_write_text(path: str, text: str, what: str = "", replace: bool = True) -> str:
    """Write text to path through a flushed temporary file renamed into place (`atomic_save`'s failures)."""
    return _atomic(path, what or os.path.basename(path), lambda f: f.write(text.encode()), replace=replace)


def atomic_write_bytes(path: str, write, what: str = "") -> str:
    """write(f) into a binary file object, landing at path atomically (replacing it; `atomic_save`'s failures)."""
    return _atomic(path, what or os.path.basename(path), write, replace=True)


def _atomic(path: str, what: str, write, replace: bool) -> str:
    folder = os.path.dirname(path) or "."
    tmp = f"{path}{TMP_MARK}{os.getpid()}"
    try:
        os.makedirs(folder, exist_ok=True)
        if not replace and os.path.exists(path):
            raise FileExistsError(f"{path} exists already; checkpoints are never overwritten")
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
        _fsync_dir(folder)
    except FileExistsError:
        _remove(tmp)
        raise
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        _remove(tmp)
        cause = _os_error(e)
        if cause is None:
            raise
        why = os.strerror(cause.errno) if cause.errno else str(cause)
        raise WriteError(f"could not write {what} to {path}: {why}; the files written before are untouched, "
                         "and the same command resumes once that is fixed") from e
    except BaseException:  # anything else (an interrupt, an object torch cannot save): no half file left
        _remove(tmp)
        raise
    return path


def _link_new(tmp: str, path: str) -> None:
    """Give tmp the name path, refusing (FileExistsError) an existing one: a hard link is both atomic and
    refusing; where the filesystem has no hard links, the workdir's lock makes check-then-rename safe."""
    try:
        os.link(tmp, path)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists already; checkpoints are never overwritten") from None
        os.replace(tmp, path)
        return
    _remove(tmp)  # the file is in place under its name; a temporary name left over is cleaned next start


def _os_error(e: BaseException) -> Optional[OSError]:
    """The OSError in e's chain of causes (torch.save wraps the file's OSError in a RuntimeError)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def remove_stale_temporaries(workdir: str) -> List[str]:
    """Delete the temporary files (`<name>.tmp-<pid>`) that killed runs left in the workdir; the caller
    holds the workdir's lock, so no live writer owns one. Returns their paths."""
    found = []
    for folder, _, files in os.walk(workdir):
        for name in files:
            if _TMP.search(name):
                found.append(os.path.join(folder, name))
                _remove(found[-1])
    return found


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# What torch.load raises for a truncated or corrupt file.
UNREADABLE = (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, KeyError, ValueError)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load one checkpoint with weights_only=True; an unsafe file raises UnsafeCheckpointError, an
    unreadable one (truncated, corrupt, not a torch file) BadFileError naming it."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported" in str(e) or "global" in str(e).lower():
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it holds pickled Python objects that could run code "
                f"(torch.load with weights_only=True rejected it: {str(e).splitlines()[0]}). "
                "Only checkpoints of plain tensors and values are read.") from e
        raise BadFileError(f"{path} is not a readable torch file ({_first_line(e)})") from e
    except UNREADABLE as e:
        raise BadFileError(f"{path} is not a readable torch file: it is truncated or corrupt "
                           f"({type(e).__name__}: {_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def load_file(path, required, kind: str, hint: str, map_location="cpu") -> dict:
    """A weights-only file of `kind` (e.g. "classifier") that holds every key in `required`: a clear
    FileNotFoundError (with `hint`, how to make one) or BadFileError otherwise."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} file {path} does not exist; {hint}")
    saved = load_checkpoint(str(path), map_location)
    missing = set(required) - set(saved) if isinstance(saved, dict) else set(required)
    if missing:
        raise BadFileError(f"{path}: not a {kind} file, missing {sorted(missing)}")
    return saved


def load_latest(ckpt_dir: str, map_location="cpu", move_aside: bool = False) -> Optional[Tuple[int, dict]]:
    """(step, state) of the newest checkpoint that loads; an unreadable one is skipped with a warning and
    the one before it is tried. With `move_aside` (the one process that writes the workdir, resuming
    training) a truncated or corrupt one is renamed `<name>.unreadable-<n>`, never deleted, so the resumed
    run writes that step again; one that could not be read for another reason (permissions, an I/O
    error) stops the writer with BadFileError, naming it. An unsafe one stops everything. None if there
    is none."""
    for step, path in list_checkpoints(ckpt_dir):
        try:
            return step, load_checkpoint(path, map_location)
        except UnsafeCheckpointError:
            raise
        except BadFileError as e:
            io_error = _os_error(e.__cause__)  # the reading failed, not the bytes: the file may be fine
            if move_aside and io_error is not None:
                # Resuming before it would end at its step, which a checkpoint is never written over.
                raise BadFileError(f"checkpoint {path} could not be read ({os.strerror(io_error.errno) if io_error.errno else io_error}); "
                                   "fix its access, or move it aside to resume from the one before") from e
            aside = _move_aside(path) if move_aside else None
            logging.warning("checkpoint %s is unreadable (%s); %sfalling back to the previous one", path,
                            _first_line(e.__cause__ or e), f"moved aside to {aside}, " if aside else "")
    return None


def _move_aside(path: str) -> Optional[str]:
    """Rename path to the first free `<path>.unreadable-<n>`; the new name (None if path is gone)."""
    n = 1
    while os.path.exists(f"{path}.unreadable-{n}"):
        n += 1
    try:
        os.replace(path, f"{path}.unreadable-{n}")
    except FileNotFoundError:
        return None
    return f"{path}.unreadable-{n}"


class WorkdirMismatchError(ConfigError):
    """The config differs from the one the workdir was made with in a key that defines its checkpoints."""


def read_run_config(workdir: str) -> Optional[dict]:
    """The workdir's config.json as a dict, or None when there is none; BadFileError naming the file
    when it is not a JSON object."""
    path = os.path.join(workdir, RUN_CONFIG)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            saved = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadFileError(f"{path} is not the JSON config this toolkit writes ({_first_line(e)}); move it "
                           "aside to start the workdir afresh, or use another --workdir") from e
    if not isinstance(saved, dict):
        raise BadFileError(f"{path} holds a JSON {type(saved).__name__}, not the config object this toolkit "
                           "writes; move it aside to start the workdir afresh, or use another --workdir")
    return saved


def check_run_config(workdir: str, config) -> List[tuple]:
    """Refuse (WorkdirMismatchError, naming each key and both values) a config that differs from the
    workdir's config.json in a key that defines its checkpoints; return the run-time keys that differ,
    as (key, workdir value, new value). A workdir without a checkpoint has nothing to protect: any
    config may take it over (`start_run` rewrites its config.json). Writes nothing."""
    saved = read_run_config(workdir)
    if saved is None:
        return []
    refused, allowed = config_differences(saved, config)
    if refused and has_checkpoints(workdir):
        raise WorkdirMismatchError(
            f"{workdir} was made with another config ({os.path.join(workdir, RUN_CONFIG)}): "
            f"{describe_differences(refused)}\n"
            f"use the config it was made with, or another --workdir")
    return allowed


def has_checkpoints(workdir: str) -> bool:
    return bool(list_checkpoints(os.path.join(workdir, "checkpoints")))


def start_run(workdir: str, config) -> None:
    """Create the workdir and, on its first run, write config.json atomically; on later runs log the
    run-time keys that differ from it (call check_run_config first). A workdir whose config.json has
    no checkpoint beside it takes the new config, and the log says so."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, RUN_CONFIG)
    check_run_config(workdir, config)  # again, under the workdir's lock: checkpoints may have come since
    saved = read_run_config(workdir)
    if saved is None:
        atomic_write_text(path, config.to_json(indent=2), what="the run's config")
        return
    refused, changed = config_differences(saved, config)
    if refused and not has_checkpoints(workdir):
        atomic_write_text(path, config.to_json(indent=2), what="the run's config")
        logging.info("%s had no checkpoint, so this run's config replaces it (%s)", path, describe_differences(refused))
    elif changed:
        logging.info("run-time keys that differ from %s: %s", path,
                     ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changed))
