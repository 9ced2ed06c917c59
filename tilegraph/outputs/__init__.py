"""Output kinds (``run(..., task=...)``): the :class:`OutputKind` contract, its registry and ``image``."""

from __future__ import annotations

from tilegraph.outputs.abc import Assembly, KindResult, OutputKind, Step, WindowContext
from tilegraph.registry import Registry

__all__ = [
    "KINDS",
    "Assembly",
    "KindResult",
    "OutputKind",
    "Step",
    "WindowContext",
    "get_kind",
    "register_kind",
]


def _check(entry: object) -> None:
    if not (isinstance(entry, type) and issubclass(entry, OutputKind)):
        raise TypeError(f"an output kind must be an OutputKind subclass, got {entry!r}")


#: Output kinds by name (built-in, registered, and from the ``tilegraph.outputs`` entry points).
KINDS: Registry[type[OutputKind]] = Registry(
    "output kind", "tilegraph.outputs", {"image": "tilegraph.outputs.image:ImageKind"}, check=_check
)


def register_kind(
    cls: type[OutputKind], *, name: str | None = None, replace: bool = False
) -> type[OutputKind]:
    """Register an :class:`OutputKind` subclass under ``name`` (default ``cls.name``); returns ``cls``."""
    _check(cls)
    KINDS.register(name or cls.name, cls, replace=replace)
    return cls


def get_kind(name: str) -> OutputKind:
    """A new instance of the output kind registered as ``name``."""
    return KINDS.get(name)()
