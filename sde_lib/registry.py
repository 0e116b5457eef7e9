"""One name -> object registry for every pluggable kind: SDEs, networks, predictors, correctors,
samplers, time grids and point data sets.

    _THINGS = Registry("thing")
    @_THINGS.register("name")
    class Thing: ...
    _THINGS.get("name")      # a ValueError listing the registered names if unknown
"""
from __future__ import annotations

from typing import Any, Iterator, List


class Registry:
    def __init__(self, kind: str, case_insensitive: bool = False):
        self.kind, self.case_insensitive = kind, case_insensitive
        self._items: dict = {}

    def _key(self, name):
        return name.lower() if self.case_insensitive and isinstance(name, str) else name

    def register(self, name: str):
        """Decorator adding a class or function under `name`; it returns the object unchanged."""

        def wrap(obj):
            key = self._key(name)
            if key in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[key] = obj
            return obj

        return wrap

    def get(self, name: str) -> Any:
        key = self._key(name)
        if not isinstance(key, str) or key not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(self.names())}")
        return self._items[key]

    def names(self) -> List[str]:
        return sorted(self._items)

    def remove(self, name: str) -> None:
        self._items.pop(self._key(name))

    # Mapping-like reads, so `name in REGISTRY` and iteration work as for a dict.
    def __contains__(self, name) -> bool:
        return self._key(name) in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __getitem__(self, name: str) -> Any:
        return self.get(name)
