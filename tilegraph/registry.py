"""Lazy registries of named components: blend modes, passes, sinks, output kinds.

Each registry knows its built-in entries as ``"module:attribute"`` strings (nothing is imported
until an entry is used), takes new ones from :meth:`Registry.register` (code in a notebook) and
from an entry-point group (installed plug-ins), as zarr does for codecs::

    [project.entry-points."tilegraph.blenders"]
    mymode = "mypkg.blend:MyBlender"

This module imports nothing heavy.
"""

from __future__ import annotations

import importlib
import threading
from typing import Generic, TypeVar

from tilegraph.errors import InputError

__all__ = ["Registry", "load_target"]

T = TypeVar("T")


def load_target(target: str) -> object:
    """Import ``"package.module:attribute"`` and return the attribute."""
    module, _, attr = target.partition(":")
    obj: object = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Named components of one kind.

    Parameters
    ----------
    kind
        What the entries are, for messages (``"blend mode"``).
    group
        Entry-point group scanned once, on the first lookup of an unknown name or listing.
    builtins
        ``{name: "module:attribute"}`` of the entries that ship with tilegraph.
    base
        The contract: every entry must be a subclass of it (checked when it is loaded or added).
    """

    def __init__(self, kind: str, group: str, builtins: dict[str, str], *, base: type) -> None:
        self.kind = kind
        self.group = group
        self.base = base
        self._targets: dict[str, str | object] = dict(builtins)
        self._loaded: dict[str, T] = {}
        self._scanned = False
        self._lock = threading.Lock()

    def check(self, entry: object) -> None:
        """Raise ``TypeError`` unless ``entry`` is a subclass of :attr:`base`."""
        if not (isinstance(entry, type) and issubclass(entry, self.base)):
            raise TypeError(f"a {self.kind} must be a {self.base.__name__} subclass, got {entry!r}")

    def add(self, cls: T, *, name: str | None = None, replace: bool = False) -> T:
        """Register the class ``cls`` under ``name`` (default its ``name`` attribute); returns ``cls``."""
        self.check(cls)
        self.register(name or cls.name, cls, replace=replace)  # type: ignore[attr-defined]
        return cls

    def register(self, name: str, entry: T | str, *, replace: bool = False) -> None:
        """Add ``entry`` (an object or a ``"module:attribute"`` path) under ``name``.

        Raises
        ------
        ValueError
            ``name`` is taken and ``replace`` is False.
        """
        with self._lock:
            if not replace and (name in self._targets or name in self._loaded):
                raise ValueError(
                    f"{self.kind} {name!r} is already registered (pass replace=True to replace it)"
                )
            self._loaded.pop(name, None)
            self._targets[name] = entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (built-in entries included); unknown names are ignored."""
        with self._lock:
            self._targets.pop(name, None)
            self._loaded.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """Every registered name, built-in and plug-in, sorted."""
        self._scan()
        return tuple(sorted(set(self._targets) | set(self._loaded)))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def get(self, name: str) -> T:
        """The entry registered as ``name`` (imported on first use).

        Raises
        ------
        tilegraph.errors.InputError
            No such entry; the message lists the known names.
        """
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._targets:
            self._scan()
        if name not in self._targets:
            raise InputError(
                f"unknown {self.kind} {name!r}",
                hint=f"use one of {', '.join(repr(n) for n in self.names())}, or register one",
            )
        target = self._targets[name]
        entry = load_target(target) if isinstance(target, str) else target
        self.check(entry)
        with self._lock:
            self._loaded[name] = entry  # type: ignore[assignment]
        return entry  # type: ignore[return-value]

    def _scan(self) -> None:
        if self._scanned:
            return
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            self._targets.setdefault(ep.name, ep.value)
        self._scanned = True
