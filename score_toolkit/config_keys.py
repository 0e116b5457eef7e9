"""Dotted config keys ("training.n_iters"): read one (`get_key`), set several (`set_keys`), list
every key of a config with its value (`config_keys`). Nothing here imports torch."""


def get_key(config, key: str):
    """The value of a dotted key: get_key(config, "training.n_iters") is config.training.n_iters."""
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def set_keys(config, **overrides):
    """Set dotted config keys ("training.n_iters": 5, ...) in place; returns the config."""
    for key, value in overrides.items():
        node = config
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return config


def config_keys(config, prefix: str = "") -> dict:
    """{"training.n_iters": 6000, ...}: every key of a ConfigDict, nested dicts included, with its value."""
    out = {}
    for k, v in config.items():
        out[prefix + k] = v
        if hasattr(v, "items"):
            out.update(config_keys(v, f"{prefix}{k}."))
    return out
