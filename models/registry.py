"""Name -> network class registry, so configs pick a network by `config.model.name`."""
from __future__ import annotations

from typing import Callable, Type

import torch.nn as nn

from sde_lib.registry import Registry

MODELS = Registry("model")


def register_model(name: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
    """Class decorator: `@register_model(name="ncsnpp")` makes the class buildable by name."""
    return MODELS.register(name)


def list_models() -> list:
    return MODELS.names()


def get_model(name: str) -> Type[nn.Module]:
    """The class registered under `name`; a ValueError lists the registered names otherwise."""
    return MODELS.get(name)
