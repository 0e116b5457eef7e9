"""Name -> network class registry, so configs pick a network by `config.model.name`."""
from __future__ import annotations

from typing import Callable, Dict, Type

import torch.nn as nn

_MODELS: Dict[str, Type[nn.Module]] = {}


def register_model(name: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
    """Class decorator: `@register_model(name="ncsnpp")` makes the class buildable by name."""

    def wrap(cls: Type[nn.Module]) -> Type[nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} is already registered to {_MODELS[name].__name__}")
        _MODELS[name] = cls
        return cls

    return wrap


def list_models() -> list:
    return sorted(_MODELS)


def get_model(name: str) -> Type[nn.Module]:
    """The class registered under `name`; a ValueError lists the registered names otherwise."""
    if name not in _MODELS:
        raise ValueError(f"unknown model name {name!r}; registered models: {', '.join(list_models())}")
    return _MODELS[name]
