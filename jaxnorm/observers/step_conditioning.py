"""``StepConditioning``: reads the in-training κ_W estimate that
:func:`jaxnorm.diagnostics.track_step_conditioning` keeps in the optimizer state, and
(given a pool of examples) measures the same step's κ on one batch."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxnorm.data.augmentation import normalize
from jaxnorm.diagnostics.per_example import batch_loss_fn
from jaxnorm.diagnostics.step_tracker import find_step_conditioning, same_batch_step_conditioning


class StepConditioning:
    """Observer: the in-training κ_W estimate every ``every`` steps, into ``metrics.jsonl``
    lines ``{"kind": "step_conditioning", "step", "kappa_sgd", "cosine_sgd", "grad_norm"}``
    (consecutive training batches; a few scalar reads, the tracker does the work inside
    the train step).

    With ``module`` and a pool (``images``, ``labels``, ``mean``, ``std``) the lines also
    hold ``kappa_same_batch`` and ``cosine_same_batch``:
    :func:`~jaxnorm.diagnostics.step_tracker.same_batch_step_conditioning` of the last
    step ``w_{t−1} → w_t`` (``w_{t−1}`` from the tracker) on one batch of ``batch_size``
    pool examples drawn afresh at each call (a permutation keyed by ``seed`` and the
    step, so a resumed run measures the same batches), with training's BatchNorm
    (``bn_mode='batch'``) and ``weight_decay``. NaN before the first step. Two gradients
    per call.

    Raises:
      ValueError: ``every < 1``; a pool without ``module`` (or the reverse), or smaller
        than ``batch_size``; ``batch_size < 2``.
    """

    name = "step_conditioning"
    sink = "metrics"

    def __init__(self, every: int = 1, module=None, images=None, labels=None, *, mean=None, std=None,
                 batch_size: int = 64, weight_decay: float = 0.0, seed: int = 0):  # fmt: skip
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}.")
        self.every, self.module = every, module
        if (module is None) != (images is None) or (images is None) != (labels is None):
            raise ValueError("the same-batch κ needs module, images and labels together (or none of them).")
        if module is not None:
            if mean is None or std is None:
                raise ValueError("the same-batch κ needs the dataset's mean and std (the pool is normalized as in training).")
            if batch_size < 2 or len(labels) < batch_size:
                raise ValueError(f"need 2 <= batch_size <= pool size; got batch_size {batch_size}, pool {len(labels)}.")
            self.images, self.labels = jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)
            self.mean, self.std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
        self.batch_size, self.weight_decay, self.seed = batch_size, weight_decay, seed

    def _batch(self, step):
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), step)
        idx = jax.random.permutation(key, len(self.labels))[: self.batch_size]
        return normalize(self.images[idx], self.mean, self.std), self.labels[idx]

    def __call__(self, state) -> dict[str, jax.Array]:
        s = find_step_conditioning(state.opt_state)
        out = {"kappa_sgd": s.kappa, "cosine_sgd": s.cosine, "grad_norm": s.grad_norm}
        if self.module is not None:
            out.update(zip(("kappa_same_batch", "cosine_same_batch"), self.same_batch(state, s)))
        return out

    def same_batch(self, state, tracker: Optional[object] = None) -> tuple[jax.Array, jax.Array]:
        """``(kappa_same_batch, cosine_same_batch)`` at ``state`` (class docstring)."""
        s = tracker if tracker is not None else find_step_conditioning(state.opt_state)
        x, y = self._batch(state.step)
        loss = batch_loss_fn(self.module, state.variables, x, y, bn_mode="batch", weight_decay=self.weight_decay)
        kappa, cosine = same_batch_step_conditioning(loss, state.params, s.prev_params)
        seen = s.count > 0  # before the first update prev_params is the zero buffer
        return jnp.where(seen, kappa, jnp.nan), jnp.where(seen, cosine, jnp.nan)
