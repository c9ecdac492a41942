"""Parameter paths: the '/'-joined names of a params pytree's leaves (``'norm3/scale'``,
``'conv1/kernel'``), the vocabulary of freezing patterns, per-layer Hessian blocks and
the probes. Shared by train, diagnostics and observers (it imports none of them)."""

from __future__ import annotations

import jax


def key_name(k) -> str:
    """The name of one path entry (a dict key, attribute name or sequence index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_name(path) -> str:
    """A ``tree_flatten_with_path`` path as ``'a/b/c'``."""
    return "/".join(key_name(k) for k in path)


def param_paths(params) -> list[str]:
    """The '/'-joined path of every leaf of ``params`` (e.g. ``'norm3/scale'``), in leaf order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return [path_name(path) for path, _ in flat]
