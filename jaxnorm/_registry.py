"""One lookup for every name registry (norms, activations, initializers, models)."""

from __future__ import annotations

from typing import Mapping, TypeVar

V = TypeVar("V")


def lookup(table: Mapping[str, V], name: str, what: str) -> V:
    """``table[name]``, or a ValueError naming ``what`` and listing the known names."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown {what} {name!r}; known: {sorted(table)}") from None
