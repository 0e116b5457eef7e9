"""A name -> class registry: `@REGISTRY.register(name=...)` on a class, `REGISTRY.get(name)` to build one."""
from __future__ import annotations

from typing import List, Type


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._classes: dict = {}

    def register(self, name: str):
        """Class decorator adding the class under `name`."""

        def wrap(cls):
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._classes[name] = cls
            return cls

        return wrap

    def get(self, name: str) -> Type:
        if name not in self._classes:
            raise ValueError(f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(self.names())}")
        return self._classes[name]

    def names(self) -> List[str]:
        return sorted(self._classes)

    def remove(self, name: str) -> None:
        self._classes.pop(name)
