"""The compiled steps: one SGD step on an on-device batch, and a whole-split evaluation.

Both are pure functions of explicit state, built once per run by the factories below
and jitted by the caller. The train step gathers its batch from the device-resident
training set with indices from the epoch's permutation, augments it with a key derived
from (seed, epoch, step), and returns the new state and the step's metrics: no host
transfer happens inside.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnorm.data.augmentation import AugmentConfig, augment, normalize
from jaxnorm.data.batches import step_keys, training_batch
from jaxnorm.data.batching import TRAIN_EVAL_STEP, iterate_eval, step_key
from jaxnorm.diagnostics.layerwise import PerExampleStats, statistics_of_forward
from jaxnorm.modes import apply as apply_in_mode, check_bn_mode
from jaxnorm.observers.protocol import is_stateful
from jaxnorm.objective import accuracy, check_l2_scope, get_loss, l2_penalty
from jaxnorm.train.optim import hyperparams
from jaxnorm.train.state import TrainState

Metrics = dict[str, jax.Array]


class StepView(NamedTuple):
    """What a training-batch observer sees inside the step (:func:`make_train_step`'s
    ``in_step``; :mod:`jaxnorm.observers.protocol`).

    Attributes:
      state: the :class:`TrainState` before the step (``θ_t``: the gradients are taken
        here; the record is filed under ``state.step``).
      new_state: the state after the update (``θ_{t+1}``).
      x, y: the batch as the model saw it (normalized, augmented).
      grads: the objective's batch gradient (data term + L2), what the optimizer got.
      loss: the objective's value on the batch.
      stats: :class:`~jaxnorm.diagnostics.PerExampleStats` of the per-example gradients
        of the objective (each example's loss term, not divided by b, plus the L2
        term's gradient), with the fields the step's observers asked for.
      objective: ``params -> objective`` on this batch, as trained (BatchNorm in batch
        mode, the step's dropout key): for Hessian-vector products.
    """

    state: Any
    new_state: Any
    x: jax.Array
    y: jax.Array
    grads: Any
    loss: jax.Array
    stats: PerExampleStats
    objective: Callable


def make_train_step(
    module,
    tx: optax.GradientTransformationExtraArgs,
    *,
    batch_size: int,
    mean,
    std,
    loss="ce",
    weight_decay: Optional[float] = None,
    l2_scope: str = "weights",
    augment_config: Optional[AugmentConfig] = None,
    batch_sharding=None,
    in_step: Sequence = (),
) -> Callable:
    """Builds ``train_step(state, data, perm, seed, epoch, step_in_epoch) -> (state, metrics)``.

    Args:
      module: a flax model (``apply(variables, x, train=..., mutable=..., rngs=...)``).
      tx: the optimizer (called with ``value=loss`` for plateau schedules).
      batch_size: examples per step.
      mean, std: per-channel normalization constants of the dataset.
      loss: the per-example loss: a name from :data:`jaxnorm.objective.LOSSES` or a
        callable ``(logits, labels) -> (b,)``.
      weight_decay: λ of the objective's L2 term ``0.5 λ Σ ||θ||²``. None (the
        default): the optimizer state's ``l2`` hyperparameter
        (:func:`jaxnorm.train.optim.hyperparams`; 0 if it has none) -- data, so runs
        with different λ share the step (``adamw`` decays the weights itself: its
        ``l2`` is 0).
      l2_scope: the parameters θ the L2 term covers, a name from
        :data:`jaxnorm.objective.L2_SCOPES` (``'weights'``: the kernels;
        ``'all_but_bias'``: DeepOBS-PyTorch's, BN's γ included). A ``bn_ablation``
        run's switched-off γ is left out (:func:`jaxnorm.objective.l2_penalty`).
      augment_config: training augmentation; None: normalization only.
      batch_sharding: if given, the batch is constrained to it (data parallelism).
      in_step: training-batch observers (``in_step = True``,
        :mod:`jaxnorm.observers.protocol`) measured inside this step. Then the step is
        ``train_step(state, data, perm, seed, epoch, step_in_epoch, carries) -> (state,
        metrics, records, carries)`` (``carries``/``records``: dicts by observer name;
        a stateless observer's carry is ``()``), and its gradient comes from
        :func:`jaxnorm.diagnostics.statistics_of_forward`: the per-example statistics
        the observers ask for (``observer.statistics``) from the step's own forward and
        backward pass, the batch gradient as the mean of the per-example terms (equal
        to autodiff's up to floating-point reassociation). Examples must not interact
        (no BatchNorm in batch mode): otherwise a ValueError at trace time.

    The returned function's arguments: ``data = (images, labels)`` device arrays of the
    whole training set (float32 in [0, 1], int32); ``perm`` the epoch's permutation;
    ``seed``, ``epoch``, ``step_in_epoch`` int scalars (traced: no recompiles). Metrics:
    ``loss`` (objective incl. L2), ``ce`` (the mean data term, whatever ``loss`` is:
    the key is historical), ``acc`` (batch accuracy).
    """
    per_example_loss = get_loss(loss)
    check_l2_scope(l2_scope)
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)

    def _step(state: TrainState, data, perm, seed, epoch, step_in_epoch, carries):
        images, labels = data
        aug_key, dropout_key = step_keys(seed, epoch, step_in_epoch)
        x, y = training_batch(images, labels, perm, aug_key, step_in_epoch, batch_size, mean, std, augment_config)
        if batch_sharding is not None:
            x = jax.lax.with_sharding_constraint(x, batch_sharding)
            y = jax.lax.with_sharding_constraint(y, batch_sharding)

        decay = _l2_coefficient(state.opt_state) if weight_decay is None else weight_decay

        def forward(params):
            variables = {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
            logits, updates = module.apply(
                variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": dropout_key}
            )
            return per_example_loss(logits, y), (jnp.mean(accuracy(logits, y)), updates.get("batch_stats", state.batch_stats))

        # The switches are the superset's per-run γ on/off (batch_stats; constants).
        penalty = None if _is_zero(decay) else (lambda params: decay * l2_penalty(params, l2_scope, state.batch_stats))

        if not in_step:
            def loss_fn(params):
                losses, aux = forward(params)
                data_term = jnp.mean(losses)
                return data_term if penalty is None else data_term + penalty(params), (data_term, *aux)

            (objective, (ce, acc, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        else:
            # The L2 term's gradient is the same for every example: a shift of each g_i.
            shift = None if penalty is None else jax.grad(penalty)(state.params)
            want = tuple(sorted({q for o in in_step for q in o.statistics}))
            ce, (acc, batch_stats), stats = statistics_of_forward(forward, state.params, compute=want, shift=shift)
            objective = ce if penalty is None else ce + penalty(state.params)
            grads = stats.mean_grad
        updates, opt_state = tx.update(grads, state.opt_state, state.params, value=objective)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )
        metrics = {"loss": objective, "ce": ce, "acc": acc}
        if not in_step:
            return new_state, metrics
        view = StepView(state, new_state, x, y, grads, objective, stats, _objective_fn(forward, penalty))
        records, carries = {}, dict(carries)
        for o in in_step:
            if is_stateful(o):
                records[o.name], carries[o.name] = o(view, carries[o.name])
            else:
                records[o.name] = o(view)
        return new_state, metrics, records, carries

    if in_step:
        return lambda state, data, perm, seed, epoch, step_in_epoch, carries: _step(state, data, perm, seed, epoch, step_in_epoch, carries)
    return lambda state, data, perm, seed, epoch, step_in_epoch: _step(state, data, perm, seed, epoch, step_in_epoch, None)


def _objective_fn(forward, penalty):
    """``params -> objective`` on the step's batch (BN batch mode and dropout as trained)."""

    def objective(params):
        value = jnp.mean(forward(params)[0])
        return value if penalty is None else value + penalty(params)

    return objective




def _l2_coefficient(opt_state):
    """λ of the objective's L2 term from the optimizer state (0.0 if it holds none)."""
    try:
        return hyperparams(opt_state)["l2"]
    except (ValueError, KeyError):
        return 0.0


def _is_zero(decay) -> bool:
    """A Python 0 (no L2 term is traced at all); an array λ is data, even when 0."""
    return isinstance(decay, (int, float)) and decay == 0


def make_evaluate(module, *, mean, std, bn_mode: str = "running", loss="ce") -> Callable:
    """Builds ``evaluate(state, images, labels, mask) -> {'loss_sum', 'correct', 'count'}``.

    ``images``/``labels``/``mask`` are a split laid out as ``(num_batches, batch, ...)``
    (see :func:`layout_eval`); the batches run in one ``lax.scan``, so a whole split is
    one compiled call.

    ``loss_sum`` sums the per-example ``loss`` (a name from
    :data:`jaxnorm.objective.LOSSES` or a callable). BN modes (:mod:`jaxnorm.modes`):

      * ``'running'``: ``train=False`` -- BN uses its running statistics (the default).
      * ``'batch'``: BN normalizes each eval batch by its own statistics (TENT's
        baseline); running statistics are not changed. Dropout layers are also in
        training mode then (the models have one ``train`` flag), with a fixed key.
        Padded batches would bias the statistics, so :func:`layout_eval` drops the
        incomplete last batch in this mode.
    """
    one_batch = _eval_batch(module, mean, std, bn_mode, loss)

    def evaluate(state: TrainState, images, labels, mask):
        return _scan_totals(lambda batch: one_batch(state, *batch), (images, labels, mask))

    return evaluate


def make_drawn_evaluate(
    module, *, size: int, batch_size: int, mean, std, bn_mode: str = "running", loss="ce", augment_config: Optional[AugmentConfig] = None
) -> Callable:
    """Builds ``evaluate(state, data, seed, epoch) -> {'loss_sum', 'correct', 'count'}``
    on a training-loss set redrawn at every evaluation, as DeepOBS-PyTorch's ``train_eval``
    set is (Schneider et al., "DeepOBS: A Deep Learning Optimizer Benchmark Suite", 2019):
    ``size`` examples drawn without replacement from all of ``data = (images, labels)``
    (the device-resident training set) and passed through the training augmentation
    ``augment_config`` (None: normalization only).

    The draw and the augmentation use ``step_key(seed, epoch, TRAIN_EVAL_STEP)`` (a step
    no epoch reaches): a function of ``(seed, epoch)`` alone, so a resumed run redraws the
    same set, and ``seed``/``epoch`` are traced (one compilation for every evaluation).
    Batches and BN modes as in :func:`make_evaluate` (``'batch'``: the incomplete last
    batch is dropped, so ``count`` is ``size`` rounded down to whole batches).

    Raises:
      ValueError: ``size`` or ``batch_size`` < 1, or (``'batch'`` mode) ``batch_size > size``.
    """
    if size < 1 or batch_size < 1:
        raise ValueError(f"a drawn evaluation set needs size and batch_size >= 1, got {size} and {batch_size}.")
    if bn_mode == "batch" and batch_size > size:
        raise ValueError(f"eval batch size {batch_size} exceeds the {size} examples of the drawn set.")
    one_batch = _eval_batch(module, mean, std, bn_mode, loss, augment_config)
    num_batches = size // batch_size if bn_mode == "batch" else -(-size // batch_size)
    total = num_batches * batch_size

    def evaluate(state: TrainState, data, seed, epoch):
        images, labels = data
        draw_key, aug_key = jax.random.split(step_key(seed, epoch, TRAIN_EVAL_STEP))
        drawn = jax.random.permutation(draw_key, labels.shape[0])[:size]  # without replacement
        # Padding repeats the first drawn index; its mask is 0 (batch mode pads nothing).
        idx = jnp.concatenate([drawn, jnp.broadcast_to(drawn[:1], (max(total - size, 0),))])[:total]
        mask = (jnp.arange(total) < size).astype(jnp.float32)
        batches = (idx.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size), jnp.arange(num_batches))
        return _scan_totals(lambda b: one_batch(state, images[b[0]], labels[b[0]], b[1], jax.random.fold_in(aug_key, b[2])), batches)

    return evaluate


def _eval_batch(module, mean, std, bn_mode: str, loss, augment_config: Optional[AugmentConfig] = None):
    """``(state, x, y, mask[, key]) -> totals`` of one evaluation batch: normalized (or,
    with ``augment_config`` and a key, augmented as in training), then the masked sums."""
    check_bn_mode(bn_mode, ("running", "batch"))
    per_example_loss = get_loss(loss)
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)

    def one_batch(state, x, y, m, key=None):
        x = normalize(x, mean, std) if augment_config is None else augment(key, x, augment_config, mean, std)
        logits = apply_in_mode(module, state.variables, x, bn_mode=bn_mode)
        return {
            "loss_sum": jnp.sum(per_example_loss(logits, y) * m),
            "correct": jnp.sum(accuracy(logits, y) * m),
            "count": jnp.sum(m),
        }

    return one_batch


def _scan_totals(batch_totals, batches):
    """The per-batch totals summed over ``batches`` (leading axis) in one ``lax.scan``."""

    def body(carry, batch):
        return jax.tree.map(jnp.add, carry, batch_totals(batch)), None

    zero = {"loss_sum": jnp.zeros(()), "correct": jnp.zeros(()), "count": jnp.zeros(())}
    return jax.lax.scan(body, zero, batches)[0]


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
