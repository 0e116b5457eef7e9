"""The config files the command line reads: the shipped `configs/*.py` and their descriptions
(`config_files`), a `--config` path resolved here or among the installed configs
(`resolve_config_path`), a file's `get_config([arg])` (`load_config`), a config printed key by key
(`format_config`), and `--config.<key>` overrides checked against the config's keys, with the
nearest keys suggested for a misspelt one (`check_override_keys`). Failures are UsageErrors."""
import ast
import difflib
import glob
import importlib.util
import os
import re
from typing import List

import configs
from score_toolkit.config_keys import config_keys
from score_toolkit.errors import UsageError

CONFIG_DIR = os.path.dirname(os.path.abspath(configs.__file__))
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "swissroll_vp_mlp.py")


def config_files() -> List[tuple]:
    """(file name, first line of its docstring) of every configs/*.py that defines get_config."""
    out = []
    for path in sorted(glob.glob(os.path.join(CONFIG_DIR, "*.py"))):
        with open(path) as f:
            tree = ast.parse(f.read())
        if any(isinstance(n, ast.FunctionDef) and n.name == "get_config" for n in tree.body):
            out.append((os.path.basename(path), (ast.get_docstring(tree) or "").strip().split("\n")[0]))
    return out


def resolve_config_path(value: str) -> str:
    """`configs/x.py[:arg]` as given when that file exists here, else the installed configs/x.py;
    UsageError naming the config files when neither exists."""
    path, sep, arg = value.partition(":")
    if os.path.isfile(path):
        return value
    installed = os.path.join(CONFIG_DIR, os.path.basename(path))
    if os.path.isfile(installed):
        return installed + sep + arg
    names = ", ".join(name for name, _ in config_files())
    raise UsageError(f"--config {path}: no such file; the config files in {display_path(CONFIG_DIR)}/ are: {names}")


def load_config(value: str):
    """get_config([arg]) of a resolved `path[:arg]`; a ValueError or missing file it raises is a UsageError."""
    path, _, arg = value.partition(":")
    spec = importlib.util.spec_from_file_location("_checked_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ValueError(f"defines no get_config(); the config files are: "
                             f"{', '.join(name for name, _ in config_files())}")
        return module.get_config(*([arg] if arg else []))
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"--config {display_path(value)}: {e}") from e


def format_config(config) -> str:
    return "\n".join(f"config.{k} = {v!r}" for k, v in config_keys(config).items() if not hasattr(v, "items"))


def unknown_key_message(key: str, keys, command) -> str:
    """`config.<key>: no such key; did you mean ...?` with up to three close keys, scored mostly on the
    last part (training.lrr -> optim.lr) and partly on the path before it; the nearest and any
    within 0.05 of it. `command` (cli.Command) gives the command line that lists every key."""
    def score(candidate: str) -> float:
        parent, _, leaf = candidate.rpartition(".")
        want_parent, _, want_leaf = key.rpartition(".")
        return (0.75 * difflib.SequenceMatcher(None, want_leaf, leaf).ratio()
                + 0.25 * difflib.SequenceMatcher(None, want_parent, parent).ratio())

    ranked = sorted(((score(k), k) for k in keys), reverse=True)
    close = [f"config.{k}" for s, k in ranked[:3] if s >= max(0.6, ranked[0][0] - 0.05)]
    guess = f"did you mean {' or '.join(close)}?" if close else "no key is close to it"
    return f"config.{key}: no such key; {guess}\nall keys: {command.line('config', overrides=False)}"


def check_override_keys(config, argv: List[str], command) -> None:
    keys = config_keys(config)
    for arg in argv[1:]:
        m = re.match(r"^--?(?:no)?config\.([^=\s]+)", arg)
        if m and m.group(1) not in keys:
            raise UsageError(unknown_key_message(m.group(1), keys, command))


def display_path(path: str) -> str:
    """A path relative to the current folder when it lies inside it, else absolute."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel
