"""Named registries: the extension points the CLI lists (`bbvp list ...`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories with a one-line description; refuses duplicate names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, tuple[Callable[..., T], str]] = {}

    def register(self, name: str, description: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a factory (a class or a function) under ``name``."""

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = (factory, description)
            return factory

        return decorate

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name``; a clear error listing the known names otherwise."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self._entries)}")
        return self._entries[name][0]

    def names(self) -> list[str]:
        return list(self._entries)

    def describe(self) -> list[tuple[str, str]]:
        """(name, description) pairs in registration order."""
        return [(name, description) for name, (_, description) in self._entries.items()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries
