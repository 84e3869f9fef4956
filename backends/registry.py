"""Named registries: the extension points the CLI lists (`bbvp list ...`).

An entry is registered once, by the decorator, which also sets a registered class's ``name``. Three
kinds of names, resolved one way by :meth:`Registry.get`:

- a plain name (``cma``): that entry's factory;
- a prefixed name (``ng:TBPSA``, ``hf:DIR``, ``clip:DIR``, ``https://HOST/...``): the entry registered
  as the prefix (``ng:``, ``https://``), its factory called with the rest of the name first;
- anything else, where the registry has a ``fallback`` (a data set's folder path): the fallback, with
  the whole name first, if it takes the name.

An entry's options are the keyword parameters its factory takes beyond those every entry of that
registry is given by the run (``given``): ``bbvp list`` shows them with their defaults.
"""

from __future__ import annotations

import functools
import inspect
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from backends.errors import ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])  # an entry's factory: a class or a function


@dataclass(frozen=True)
class Entry:
    """One registered name: its factory, description, and whether it is a prefix."""

    name: str
    factory: Any  # the registry's F
    description: str
    example: str | None = None  # a prefix's example of a whole name (ng: -> ng:OnePlusOne)

    @property
    def is_prefix(self) -> bool:
        return self.name.endswith(":") or self.name.endswith("://")


@dataclass(frozen=True)
class Fallback:
    """What a name that is neither registered nor prefixed may still be: ``accepts(name)`` says whether it is."""

    description: str
    accepts: Callable[[str], bool]
    factory: Any


class Registry(Generic[F]):
    """Maps names to factories (of type ``F``) with a one-line description; refuses duplicate names."""

    def __init__(self, kind: str, given: tuple[str, ...] = ()):
        self.kind = kind
        self.given = given  # the parameters the run passes to every factory: not options
        self._entries: dict[str, Entry] = {}
        self.fallback: Fallback | None = None

    def register(self, name: str, description: str, example: str | None = None) -> Callable[[F], F]:
        """Decorator that registers a factory (a class or a function) under ``name`` (a prefix if it ends in
        ``:`` or ``://``, ``example`` then a whole name it takes); a class gets ``name`` as its ``name``
        attribute."""

        def decorate(factory: F) -> F:
            if name in self._entries:
                raise ConfigurationError(f"{self.kind} {name!r} is already registered")
            entry = Entry(name, factory, description, example)
            self._entries[name] = entry
            if isinstance(factory, type) and not entry.is_prefix:
                factory.name = name  # type: ignore[attr-defined]
            return factory

        return decorate

    def set_fallback(self, description: str, accepts: Callable[[str], bool], factory: Callable[..., Any]) -> None:
        """What to build for a name that is neither registered nor prefixed, where ``accepts(name)``."""
        self.fallback = Fallback(description, accepts, factory)

    def get(self, name: str) -> F:
        """The factory for ``name`` (a prefixed or fallback one with its argument bound); a clear error listing
        the known names otherwise."""
        factory, argument = self._resolve(name)
        return factory if argument is None else functools.partial(factory, argument)  # type: ignore[return-value]

    def factory_of(self, name: str) -> F:
        """The registered factory (a class: its flags) that ``name`` resolves to, nothing bound."""
        return self._resolve(name)[0]

    def entry(self, name: str) -> Entry | None:
        """The entry ``name`` belongs to: its own, or the longest prefix it starts with (also as :meth:`names`
        shows a prefix, ``prefix<...>``); None for any other name."""
        name = name.removesuffix("<...>")
        if name in self._entries:
            return self._entries[name]
        prefixes = [entry for entry in self._entries.values() if entry.is_prefix and name.startswith(entry.name)]
        return max(prefixes, key=lambda e: len(e.name)) if prefixes else None

    def example(self, name: str) -> str:
        """A whole name for the entry ``name`` shows: the name itself, a prefix's example."""
        entry = self.entry(name)
        return entry.example if entry is not None and entry.is_prefix and entry.example else name

    def _resolve(self, name: str) -> tuple[F, str | None]:
        """(factory, the argument a prefix or the fallback takes, None for a plain name)."""
        entry = self.entry(name) if not name.endswith("<...>") else None
        if entry is not None and not entry.is_prefix:
            return entry.factory, None
        if entry is not None:
            if len(name) == len(entry.name):
                raise ConfigurationError(f"{self.kind} {name!r} needs what follows the prefix: {entry.description}")
            return entry.factory, name[len(entry.name):]
        if self.fallback is not None and self.fallback.accepts(name):
            return self.fallback.factory, name
        also = f", or {self.fallback.description}" if self.fallback is not None else ""
        raise ConfigurationError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}{also}")

    def names(self) -> list[str]:
        """The registered names, a prefix shown as ``prefix<...>``."""
        return [f"{name}<...>" if entry.is_prefix else name for name, entry in self._entries.items()]

    def describe(self) -> list[tuple[str, str]]:
        """(name, description) pairs in registration order."""
        return [(shown, entry.description) for shown, entry in zip(self.names(), self._entries.values(), strict=True)]

    def arguments(self, name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments of entry ``name`` that ``settings`` holds (a run's settings by option name)."""
        return {option: settings[option] for option in self.options(name) if option in settings}

    def options(self, name: str) -> dict[str, object]:
        """The keyword options of the entry ``name`` belongs to and their defaults (none for a fallback name)."""
        entry = self.entry(name)
        if entry is None:
            self._resolve(name)  # a fallback name takes no options; any other raises the error naming the entries
            return {}
        factory = entry.factory.__init__ if isinstance(entry.factory, type) else entry.factory  # type: ignore[misc]
        skip = set(self.given) | {"self"}
        parameters = list(inspect.signature(factory).parameters.values())
        if entry.is_prefix:
            parameters = parameters[1 + (parameters[0].name == "self"):]  # the name's rest comes first
        return {p.name: p.default for p in parameters
                if p.name not in skip and p.default is not inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def parse_options(self, name: str, text: str | None, flag: str) -> dict[str, Any]:
        """The options ``key=value,key=value`` (``--optimizer-options``, ...) for entry ``name``, each value a TOML
        literal (``0.3``, ``true``, ``"text"``; a bare word is taken as text); an unknown key or a value of the
        wrong type is an error naming ``flag``, the entry and its options."""
        if not text:
            return {}
        known = self.options(name)
        listing = ", ".join(f"{key}={value!r}" for key, value in known.items()) or "none"
        parsed: dict[str, Any] = {}
        for item in text.split(","):
            key, equals, literal = (part.strip() for part in item.partition("="))
            if not equals or not key:
                raise ConfigurationError(f"{flag} {text!r}: {item.strip()!r} is not key=value")
            if key not in known:
                raise ConfigurationError(f"{flag}: {self.kind} {name!r} has no option {key!r}; its options: {listing}")
            try:
                value = tomllib.loads(f"value = {literal}")["value"]
            except tomllib.TOMLDecodeError:
                value = literal
            default = known[key]
            if isinstance(default, float) and type(value) is int:
                value = float(value)
            if default is not None and type(value) is not type(default):
                raise ConfigurationError(f"{flag}: {self.kind} {name!r} option {key} takes a {type(default).__name__} "
                                         f"(default {default!r}), got {literal!r}")
            parsed[key] = value
        return parsed

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` resolves to an entry (a plain, prefixed or fallback name)."""
        if not isinstance(name, str):
            return False
        try:
            self._resolve(name)
        except ConfigurationError:
            return False
        return True
