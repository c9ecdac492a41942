"""The compiled steps: one SGD step on an on-device batch, and a whole-split evaluation.

Both are pure functions of explicit state, built once per run by the factories below
and jitted by the caller. The train step gathers its batch from the device-resident
training set with indices from the epoch's permutation, augments it with a key derived
from (seed, epoch, step), and returns the new state and the step's metrics: no host
transfer happens inside.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnorm.data.augmentation import AugmentConfig, augment, normalize
from jaxnorm.data.batching import batch_indices, iterate_eval, step_key
from jaxnorm.objective import accuracy, cross_entropy, l2_penalty
from jaxnorm.train.state import TrainState

Metrics = dict[str, jax.Array]


def make_train_step(
    module,
    tx: optax.GradientTransformationExtraArgs,
    *,
    batch_size: int,
    mean,
    std,
    weight_decay: float = 0.0,
    augment_config: Optional[AugmentConfig] = None,
    batch_sharding=None,
) -> Callable:
    """Builds ``train_step(state, data, perm, seed, epoch, step_in_epoch) -> (state, metrics)``.

    Args:
      module: a flax model (``apply(variables, x, train=..., mutable=..., rngs=...)``).
      tx: the optimizer (called with ``value=loss`` for plateau schedules).
      batch_size: examples per step.
      mean, std: per-channel normalization constants of the dataset.
      weight_decay: λ of ``0.5 λ Σ ||W||²`` (weights only).
      augment_config: training augmentation; None: normalization only.
      batch_sharding: if given, the batch is constrained to it (data parallelism).

    The returned function's arguments: ``data = (images, labels)`` device arrays of the
    whole training set (float32 in [0, 1], int32); ``perm`` the epoch's permutation;
    ``seed``, ``epoch``, ``step_in_epoch`` int scalars (traced: no recompiles). Metrics:
    ``loss`` (objective incl. L2), ``ce`` (cross-entropy), ``acc`` (batch accuracy).
    """
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)

    def train_step(state: TrainState, data, perm, seed, epoch, step_in_epoch):
        images, labels = data
        idx = batch_indices(perm, step_in_epoch, batch_size)
        x, y = images[idx], labels[idx]
        aug_key, dropout_key = jax.random.split(step_key(seed, epoch, step_in_epoch))
        if augment_config is None:
            x = normalize(x, mean, std)
        else:
            x = augment(aug_key, x, augment_config, mean, std)
        if batch_sharding is not None:
            x = jax.lax.with_sharding_constraint(x, batch_sharding)
            y = jax.lax.with_sharding_constraint(y, batch_sharding)

        def loss_fn(params):
            variables = {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
            logits, updates = module.apply(
                variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": dropout_key}
            )
            ce = jnp.mean(cross_entropy(logits, y))
            loss = ce + weight_decay * l2_penalty(params) if weight_decay else ce
            return loss, (ce, jnp.mean(accuracy(logits, y)), updates.get("batch_stats", state.batch_stats))

        (loss, (ce, acc, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )
        return new_state, {"loss": loss, "ce": ce, "acc": acc}

    return train_step


def make_evaluate(module, *, mean, std, mode: str = "running") -> Callable:
    """Builds ``evaluate(state, images, labels, mask) -> {'loss_sum', 'correct', 'count'}``.

    ``images``/``labels``/``mask`` are a split laid out as ``(num_batches, batch, ...)``
    (see :func:`layout_eval`); the batches run in one ``lax.scan``, so a whole split is
    one compiled call.

    Modes:
      * ``'running'``: ``train=False`` -- BN uses its running statistics (the default).
      * ``'batch'``: BN normalizes each eval batch by its own statistics (TENT's
        baseline); running statistics are not changed. Dropout layers are also in
        training mode then (the models have one ``train`` flag), with a fixed key.
        Padded batches would bias the statistics, so :func:`layout_eval` drops the
        incomplete last batch in this mode.
    """
    if mode not in ("running", "batch"):
        raise ValueError(f"eval mode must be 'running' or 'batch', got {mode!r}.")
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)

    def one_batch(state, x, y, m):
        x = normalize(x, mean, std)
        if mode == "running":
            logits = module.apply(state.variables, x, train=False)
        else:
            logits, _ = module.apply(
                state.variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(0)}
            )
        return {
            "loss_sum": jnp.sum(cross_entropy(logits, y) * m),
            "correct": jnp.sum(accuracy(logits, y) * m),
            "count": jnp.sum(m),
        }

    def evaluate(state: TrainState, images, labels, mask):
        def body(carry, batch):
            out = one_batch(state, *batch)
            return jax.tree.map(jnp.add, carry, out), None

        zero = {"loss_sum": jnp.zeros(()), "correct": jnp.zeros(()), "count": jnp.zeros(())}
        totals, _ = jax.lax.scan(body, zero, (images, labels, mask))
        return totals

    return evaluate


def layout_eval(images, labels, batch_size: int, *, drop_remainder: bool = False):
    """Host-side: lays a split out as whole batches with a 0/1 mask
    (:func:`jaxnorm.data.iterate_eval`'s padding; ``drop_remainder`` keeps full batches only).

    Returns ``(images, labels, mask)`` shaped ``(num_batches, batch_size, ...)``.
    """
    n = len(labels)
    if drop_remainder and n < batch_size:
        raise ValueError(f"eval batch size {batch_size} exceeds the {n} examples of the split.")
    idx, mask = iterate_eval(n, batch_size)
    if drop_remainder:
        keep = mask.all(axis=1)
        idx, mask = idx[keep], mask[keep]
    return np.asarray(images)[idx], np.asarray(labels)[idx], mask.astype(np.float32)
