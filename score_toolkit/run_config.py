"""Which config keys may change between the runs of one workdir: the run-time keys
(`RUN_TIME_KEYS`: how long, where, how to sample and evaluate, how fast) against the keys that
define its checkpoints, and the differences between a workdir's saved config and this run's
(`config_differences`, `describe_differences`). `checkpoints` refuses a workdir by these."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

# Keys that may differ between runs of one workdir: how long and how often (training.n_iters and the
# frequencies), where (device, num_threads, data.root: the files' location, not their content),
# how to sample and evaluate (sampling.*, eval.*), and how fast to compute the same steps (memory
# format, Adam's implementation, compilation; training.precision changes the steps and stays fixed).
# Every other key (data, SDE, model, loss, optimizer, batch size, seed: the seed draws the initial
# weights, the data stream and the 2-D data sets) defines what the workdir's checkpoints are. A key that only one side has (added to or removed from the
# configs since the workdir was made) is allowed too: a new key's default keeps the old behaviour.
RUN_TIME_KEYS = ("training.n_iters", "training.log_freq", "training.snapshot_freq", "training.checkpoint_freq",
                 "training.keep_checkpoints", "device", "num_threads", "data.root", "sampling.*", "eval.*",
                 "training.channels_last", "optim.impl", "compile", "autoencoder.n_iters", "autoencoder.log_freq",
                 "autoencoder.checkpoint_freq", "autoencoder.keep_checkpoints", "autoencoder.n_eval")
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


# What exported weights are: the data they model, the SDE and the network (and whether it was trained
# on continuous or discrete noise labels). The optimizer, batch size, seed, the amount of data and the
# training-only settings (augmentation, EMA rate, dropout, label dropout) made them, but any config may
# sample from them.
WEIGHTS_KEYS = ("data.", "sde.", "model.", "training.continuous", "distill.method", "distill.sigma_min",
                "distill.sigma_data")
NOT_WEIGHTS_KEYS = ("data.n_train", "data.n_test", "data.random_flip", "model.ema_rate", "model.dropout",
                    "model.p_uncond")


def weights_config(config) -> Dict[str, Any]:
    """The flattened keys of `config` that define exported weights (`WEIGHTS_KEYS`, run-time keys left out)."""
    return {k: v for k, v in flatten(json.loads(config.to_json())).items()
            if k.startswith(WEIGHTS_KEYS) and k not in NOT_WEIGHTS_KEYS and not is_run_time_key(k)}


def exported_weights(state_dict: Dict[str, Any], step: int, config) -> Dict[str, Any]:
    """The layout of an exported weights file (`--mode export`, config.eval.weights_path): the network's
    weights, their training step and `weights_config(config)`."""
    return {"model": state_dict, "step": step, "config": weights_config(config)}


def weights_differences(saved: Dict[str, Any], config) -> List[tuple]:
    """(key, exported value, this config's value) for every weights-defining key that differs; a key
    that one side lacks (added to the configs since the export) is not a difference."""
    here = weights_config(config)
    return [(k, saved[k], here[k]) for k in sorted(set(saved) & set(here)) if saved[k] != here[k]]
