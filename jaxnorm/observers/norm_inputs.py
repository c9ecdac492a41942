"""``NormInputs``: what chosen norm layers receive on a fixed probe batch, during ``fit``.

The lecture's picture of LayerNorm vs BatchNorm (CMU lecture “Normalization and Regularization”, "LayerNorm
illustration") is a matrix Z (batch × features) of a layer's pre-norm activations:
LayerNorm standardizes its rows, BatchNorm its columns. This observer records that Z
(:func:`jaxnorm.diagnostics.bn_statistics.norm_inputs`) into ``trajectories.npz`` as
``norm_inputs/<layer>`` (stacked over the recorded steps, ``norm_inputs/steps``), so
that an analysis can normalize it either way from the stored file.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax

from jaxnorm.diagnostics.bn_statistics import norm_inputs
from jaxnorm.modes import check_bn_mode

__all__ = ["NormInputs"]


class NormInputs:
    """Observer: the inputs of norm layers on a fixed probe batch every ``every`` steps.

    Args:
      module: the model as trained.
      probe: ``(batch, ...)`` model inputs (normalized), the same every time.
      every: interval in steps.
      layers: the layers, by module path joined with ``'/'`` (e.g. ``('norm1',)``);
        None: every norm layer. A name the model lacks is a ValueError when the observer
        is first traced (in ``fit``, before the first step).
      bn_mode: ``'batch'`` (default: training's forward) or ``'running'``; it matters only
        for layers after a BatchNorm layer (:mod:`jaxnorm.modes`).

    Raises:
      ValueError: ``every`` < 1 or an unknown ``bn_mode``.
    """

    name = "norm_inputs"
    sink = "trajectories"

    def __init__(self, module, probe, *, every: int, layers: Optional[Sequence[str]] = None, bn_mode: str = "batch"):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}.")
        check_bn_mode(bn_mode, ("batch", "running"))
        self.module, self.probe, self.every, self.bn_mode = module, probe, every, bn_mode
        self.layers = None if layers is None else tuple(layers)

    def __call__(self, state) -> dict[str, jax.Array]:
        return norm_inputs(self.module, state.variables, self.probe, bn_mode=self.bn_mode, layers=self.layers)
