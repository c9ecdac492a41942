"""``ConditioningSweep``: κ_W and κ_X over a grid of step sizes η, on the batch a
:class:`~jaxnorm.observers.GradientConditioning` records, with a plateau verdict.

κ_W (Def. 2.5) and κ_X (Def. 3.4, eq. 3.16) of "Gradient Conditioning in Deep Neural
Networks" (master thesis, Brigham Young University, 2022) are finite-difference ratios:
what a value at one η means depends on η (ReLU kinks above, float32 round-off below;
:mod:`~jaxnorm.diagnostics.hessian_conditioning`). This observer evaluates both at every
η of ``etas`` at every ``k``-th sample of its ``GradientConditioning`` (``every`` a
multiple of the conditioning observer's, so each sweep step has a conditioning line and
the same batch: ``conditioning._batches(step)``'s first; the same κ_X perturbation
key; the same Def. 2.7 directions ±ḡ/‖ḡ‖_∞ for κ_W), so the grid's entry at the
conditioning observer's ``eta`` is the recorded ``kappa_w``/``kappa_x`` of that line
(no mask) and the sweep can be read next to ``kappa_w_hessian``/``kappa_w_directional``.
The values are those of :func:`~jaxnorm.diagnostics.hessian_conditioning.kappa_w_sweep`
and :func:`~jaxnorm.diagnostics.hessian_conditioning.kappa_x_sweep` (absolute η), which
this observer calls on that batch.

Record (``metrics.jsonl`` kind ``conditioning_sweep``; the grid is the line's ``etas``
annotation):

* ``kappa_w@<η>``, ``kappa_x@<η>`` -- κ at each η (keys by :func:`eta_key`);
* ``kappa_w_limit`` -- κ_W's η → 0 value along those directions, ``‖Hĝ‖·‖w‖/‖g‖``
  (:func:`~jaxnorm.diagnostics.hessian_conditioning.directional_condition_number`);
* for ``q`` in ``kappa_w``, ``kappa_x``: ``q_plateau_start`` / ``q_plateau_stop`` (grid
  indices of the longest run of consecutive η agreeing within ``rtol``:
  :func:`~jaxnorm.diagnostics.hessian_conditioning.plateau`), ``q_plateau`` -- the
  median κ over that run when it spans at least ``min_plateau`` grid points, else NaN
  (no η-independent value on this grid) -- and ``kappa_w_contains_limit`` (1.0 when
  the κ_W plateau agrees with ``kappa_w_limit`` within ``rtol``, i.e. the finite
  difference has converged to the differentiable value; 0.0 else).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm.diagnostics.hessian_conditioning import kappa_w_sweep, kappa_x_sweep
from jaxnorm.diagnostics.per_example import batch_loss_fn
from jaxnorm.observers.conditioning import GradientConditioning

__all__ = ["ConditioningSweep", "DEFAULT_ETAS", "eta_key"]

#: Half-decades from 1e-6 to 1e-1: the bottom is float32 round-off territory for digits
#: nets (‖w‖ of order 10), the top is where the thesis's perturbations cross ReLU kinks;
#: 1e-3, the thesis's η, is on the grid.
DEFAULT_ETAS: tuple[float, ...] = tuple(float(f"{10.0 ** (e / 2):.3g}") for e in range(-12, -1))


def eta_key(quantity: str, eta: float) -> str:
    """``'kappa_w@0.001'``: the record key of ``quantity`` at step size ``eta``."""
    return f"{quantity}@{eta:.3g}"


class ConditioningSweep:
    """Observer: the η sweep of κ_W and κ_X on ``conditioning``'s recorded batch (module
    docstring).

    Args:
      conditioning: the run's :class:`GradientConditioning` (its pool, batches, ``every``,
        ``bn_mode``, κ_X sizes ``n``/``m``, weight decay).
      etas: the grid, ascending, every η > 0.
      rtol: plateau agreement (``max <= (1 + rtol)·min``).
      min_plateau: grid points a plateau must span for ``*_plateau`` to be reported.
      every: the interval in steps (default: ``conditioning.every``); a multiple of it.

    Raises:
      ValueError: an empty, unsorted or non-positive grid; ``rtol <= 0``;
        ``min_plateau`` outside [2, len(etas)]; ``every`` not a positive multiple of
        ``conditioning.every``; a conditioning observer with a mask (the sweep is
        unmasked).
    """

    name = "conditioning_sweep"
    sink = "metrics"

    def __init__(self, conditioning: GradientConditioning, etas: Sequence[float] = DEFAULT_ETAS, *,
                 rtol: float = 0.05, min_plateau: int = 3, every: Optional[int] = None):  # fmt: skip
        grid = np.asarray(etas, np.float64)
        if grid.ndim != 1 or grid.size < 2 or not np.all(grid > 0) or not np.all(np.diff(grid) > 0):
            raise ValueError(f"etas must be an ascending grid of at least two step sizes > 0, got {list(etas)}.")
        if not rtol > 0:
            raise ValueError(f"the plateau tolerance rtol must be > 0, got {rtol}.")
        if not 2 <= min_plateau <= grid.size:
            raise ValueError(f"min_plateau must lie in [2, {grid.size}] (the grid's size), got {min_plateau}.")
        if conditioning.mask is not None:
            raise ValueError("ConditioningSweep measures unmasked κ: give it a GradientConditioning without mask_fraction.")
        self.conditioning, self.etas, self.rtol, self.min_plateau = conditioning, tuple(float(e) for e in grid), rtol, min_plateau
        self.every = conditioning.every if every is None else every
        if self.every < 1 or self.every % conditioning.every:
            raise ValueError(f"every must be a positive multiple of the conditioning interval {conditioning.every}, got {self.every}.")
        self.annotations = {"etas": list(self.etas), "rtol": rtol, "min_plateau": min_plateau}

    def _summary(self, quantity: str, values, p) -> dict[str, jax.Array]:
        members = (jnp.arange(len(self.etas)) >= p.start) & (jnp.arange(len(self.etas)) < p.stop)
        value = jnp.nanmedian(jnp.where(members, values, jnp.nan))
        out = {eta_key(quantity, e): v for e, v in zip(self.etas, values)}
        out.update({f"{quantity}_plateau_start": p.start.astype(jnp.float32), f"{quantity}_plateau_stop": p.stop.astype(jnp.float32),
                    f"{quantity}_plateau": jnp.where(p.length >= self.min_plateau, value, jnp.nan)})  # fmt: skip
        return out

    def __call__(self, state) -> dict[str, jax.Array]:
        c = self.conditioning
        xs, ys, key = c._batches(state.step)
        x, y = xs[0], ys[0]
        _, k_x = jax.random.split(key)  # GradientConditioning's κ_X key
        loss = batch_loss_fn(c.module, state.variables, x, y, bn_mode="batch", weight_decay=c.weight_decay)
        # kappa_w_sweep's default directions are the Def. 2.7 pair ±ḡ/‖ḡ‖_∞, its limit ‖Hĝ‖·‖w‖/‖g‖.
        w = kappa_w_sweep(loss, state.params, self.etas, rtol=self.rtol)
        xv = kappa_x_sweep(c.module, state.variables, x, y, self.etas, key=k_x, n=c.n_x, m=c.m_x, rtol=self.rtol,
                           bn_mode=c.bn_mode, chunk_size=c.chunk_size, weight_decay=c.weight_decay)  # fmt: skip
        out = {**self._summary("kappa_w", w.values, w.plateau), **self._summary("kappa_x", xv.values, xv.plateau)}
        out["kappa_w_limit"] = w.limit
        out["kappa_w_contains_limit"] = (w.plateau.contains_limit & (w.plateau.length >= self.min_plateau)).astype(jnp.float32)
        return out
