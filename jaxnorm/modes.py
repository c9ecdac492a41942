"""The BatchNorm mode of a forward pass: one vocabulary for the whole library.

Every function that runs a model and has to decide what BatchNorm does takes
``bn_mode=`` with a value from :data:`BN_MODES`:

``'batch'``
    BN normalizes with the statistics of the batch it is given, and gradients flow
    through those statistics: training's forward pass (flax ``train=True``). For
    per-example gradients this is the *coupled* definition (each example's loss term
    with statistics depending on the whole batch); for the Hessian it is init2winit's
    train-mode Hessian; for evaluation it is TENT's test-batch-statistics baseline.
``'running'``
    BN normalizes with its running (or population) statistics: the network as deployed
    (flax ``train=False``), PyHessian's eval-mode Hessian.
``'frozen'``
    The batch's statistics, computed once at the current weights and treated as
    constants (not differentiated); per-example gradients and weight-space losses only
    (:mod:`jaxnorm.diagnostics.per_example`).

No mode ever updates running statistics: only the training step does. Each function
documents which modes it accepts; an unknown value, or a name from the older
vocabularies (``'coupled'``, ``'train'``, ``'eval'``), raises a ValueError that names
the mode to use instead.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax

BN_MODES = ("batch", "running", "frozen")

#: The names earlier versions used, and what they are called now.
_RENAMED = {"coupled": "batch", "train": "batch", "eval": "running"}

_DROPOUT_KEY = jax.random.PRNGKey(0)


def check_bn_mode(bn_mode: str, allowed: Sequence[str] = BN_MODES, *, where: str = "bn_mode") -> str:
    """Returns ``bn_mode`` if it is one of ``allowed``; otherwise a ValueError naming the
    allowed modes (and the new name of a renamed one)."""
    if bn_mode in allowed:
        return bn_mode
    hint = f" ({bn_mode!r} is now called {_RENAMED[bn_mode]!r})" if bn_mode in _RENAMED else ""
    raise ValueError(f"{where} must be one of {list(allowed)}, got {bn_mode!r}{hint}.")


def apply(module, variables, x, *, bn_mode: str, rng: Optional[jax.Array] = None):
    """``module``'s output on ``x`` in ``bn_mode`` ``'batch'`` or ``'running'``; running
    statistics are not updated (in ``'batch'`` mode the updated statistics are dropped).

    ``rng`` is the dropout key of a ``'batch'`` pass (a fixed key by default); in
    ``'running'`` mode dropout is off."""
    check_bn_mode(bn_mode, ("batch", "running"))
    if bn_mode == "running":
        return module.apply(variables, x, train=False)
    out, _ = module.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng if rng is not None else _DROPOUT_KEY})
    return out
