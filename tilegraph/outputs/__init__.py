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


#: Output kinds by name (built-in, registered, and from the ``tilegraph.outputs`` entry points).
KINDS: Registry[type[OutputKind]] = Registry(
    "output kind", "tilegraph.outputs", {"image": "tilegraph.outputs.image:ImageKind"}, base=OutputKind
)

#: Register an :class:`OutputKind` subclass under ``name`` (default ``cls.name``); returns ``cls``.
register_kind = KINDS.add


def get_kind(name: str) -> OutputKind:
    """A new instance of the output kind registered as ``name``."""
    return KINDS.get(name)()
