"""Optimizers and learning-rate schedules, as optax transformations whose
hyperparameters are data.

Optimizers (:data:`OPTIMIZERS`):

* ``sgd`` -- SGD with optional (Nesterov) heavy-ball momentum (the studies' default);
* ``adam`` -- Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization"); weight
  decay, like SGD's, is the L2 term of the objective (coupled);
* ``adamw`` -- Adam with decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight
  Decay Regularization"): ``update = -lr·(adam + λ·W)`` on the weight kernels (or the
  ``l2_scope``'s parameters); the objective then has no L2 term. Equals
  ``optax.adamw(schedule, weight_decay=λ, mask=kernels)``.

Hyperparameters as data: the learning rate, momentum and weight decay live in the
optimizer state (``optax.inject_hyperparams``; read them with :func:`hyperparams`), so
runs that differ only in them share one compiled step (:func:`jaxnorm.train.fit_many`
stacks their states). For ``sgd``/``adam`` the train step reads λ from there for the
objective's L2 term ``0.5 λ Σ ||W||²``.

Schedules (:data:`SCHEDULES`) are multipliers of the base learning rate (1 at the
start), so the base rate stays data:

* ``constant`` -- the ablation study's setting (Table 3.1 of the BatchNorm ablation thesis (“Dissecting BatchNorm: An Ablation Study on the Core Components”, Tübingen 2023));
* ``step`` -- multiply by ``factor`` at the given epochs (DeepOBS All-CNN-C reference:
  lr 0.05 divided by 10 at epochs 200, 250, 300);
* ``plateau`` -- multiply by ``factor`` when the training loss, averaged over an
  epoch, has not improved by ``rtol`` for ``patience`` epochs (“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022:
  CIFAR-10, batch 64, "learning rate decreased on plateau"). Its update needs the loss:
  ``tx.update(grads, state, params, value=loss)``; :func:`make_optimizer` always
  returns a transformation that accepts ``value`` (others ignore it);
* ``cosine`` -- half a cosine from 1 to ``alpha`` (default 0) over the steps after the
  warmup (Loshchilov & Hutter, "SGDR");
* ``linear`` -- linearly from 1 to ``end`` (default 0) over the steps after the warmup.

``warmup_steps=k`` (any schedule but ``plateau``) ramps the multiplier linearly from 0
at step 0 to 1 at step k first (optax's ``warmup_cosine_decay_schedule`` convention), then
runs the schedule on the remaining steps.

Freezing: ``make_optimizer(..., frozen=regex)`` zeroes the update of every parameter
whose path (``'norm3/scale'``, ``'conv1/kernel'``; the ``/``-joined keys of the params pytree)
matches the regex, so it keeps its initial value bit for bit (BN-only training, γ/β
learned in chosen layers only).
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Optional, Sequence

import jax
import optax
from optax import contrib

from jaxnorm._registry import lookup
from jaxnorm._tree import param_paths
from jaxnorm.diagnostics.step_tracker import track_step_conditioning as _step_tracker
from jaxnorm.objective import check_l2_scope, in_l2_scope


def _constant(steps_per_epoch: int, decay_steps: int):
    return None, []


def _step(steps_per_epoch: int, decay_steps: int, *, epochs: Sequence[int] = (), factor: float = 0.1):
    boundaries = {int(e) * steps_per_epoch: factor for e in epochs}
    return optax.piecewise_constant_schedule(1.0, boundaries), []


def _plateau(
    steps_per_epoch: int,
    decay_steps: int,
    *,
    factor: float = 0.1,
    patience: int = 5,
    rtol: float = 1e-4,
    cooldown: int = 0,
    min_scale: float = 1e-4,
):
    tail = contrib.reduce_on_plateau(
        factor=factor,
        patience=patience,
        rtol=rtol,
        atol=0.0,
        cooldown=cooldown,
        accumulation_size=steps_per_epoch,
        min_scale=min_scale,
    )
    return None, [tail]


def _cosine(steps_per_epoch: int, decay_steps: int, *, alpha: float = 0.0):
    return optax.cosine_decay_schedule(1.0, max(decay_steps, 1), alpha=alpha), []


def _linear(steps_per_epoch: int, decay_steps: int, *, end: float = 0.0):
    return optax.linear_schedule(1.0, end, max(decay_steps, 1)), []


SCHEDULES: dict[str, Callable] = {"constant": _constant, "step": _step, "plateau": _plateau, "cosine": _cosine, "linear": _linear}
OPTIMIZERS = ("sgd", "adam", "adamw")
#: Optimizers whose weight decay is the objective's L2 term (the others decouple it).
COUPLED_DECAY = ("sgd", "adam")


def _decay_mask(scope: str):
    return lambda params: jax.tree_util.tree_map_with_path(lambda p, _: in_l2_scope(p, scope), params)


def _inner(learning_rate, momentum, weight_decay, l2, *, optimizer: str, use_momentum: bool, nesterov: bool, b1, b2, eps, multiplier, l2_scope):
    """The optimizer proper; ``learning_rate``, ``momentum``, ``weight_decay`` and ``l2``
    arrive as arrays from the optimizer state (``optax.inject_hyperparams``). ``l2`` is
    not used here: it is the objective's L2 coefficient, which the train step reads
    (λ for the coupled optimizers, 0 for ``adamw``)."""
    parts = []
    if optimizer == "sgd":
        if use_momentum:
            parts.append(optax.trace(decay=momentum, nesterov=nesterov))
    else:
        parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
        if optimizer == "adamw":
            parts.append(optax.add_decayed_weights(weight_decay, mask=_decay_mask(l2_scope)))
    if multiplier is not None:
        parts.append(optax.scale_by_schedule(multiplier))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)


def hyperparams(opt_state) -> dict:
    """The injected hyperparameters (``learning_rate``, ``momentum``, ``weight_decay`` and
    ``l2``, the objective's L2 coefficient: λ for sgd/adam, 0 for adamw) of
    an optimizer state made by :func:`make_optimizer` (arrays; stacked over runs in
    :func:`~jaxnorm.train.fit_many`).

    Raises:
      ValueError: the state holds no injected hyperparameters.
    """
    is_inject = lambda x: isinstance(x, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState))
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_inject) if is_inject(x)]
    if not found:
        raise ValueError("this optimizer state has no injected hyperparameters; build the optimizer with make_optimizer.")
    return dict(found[0].hyperparams)


def freeze_labels(frozen: str, params):
    """``params``' structure with leaves ``'frozen'`` (path matches ``frozen`` by
    ``re.search``) or ``'trainable'``.

    Raises:
      ValueError: ``frozen`` is not a valid regex, or matches no parameter (listing the
        available paths).
    """
    try:
        pattern = re.compile(frozen)
    except re.error as e:
        raise ValueError(f"frozen={frozen!r} is not a valid regular expression: {e}.") from None
    paths = param_paths(params)
    hits = [bool(pattern.search(p)) for p in paths]
    if not any(hits):
        raise ValueError(f"frozen={frozen!r} matches no parameter; the parameters are: {paths}.")
    treedef = jax.tree_util.tree_structure(params)
    return jax.tree_util.tree_unflatten(treedef, ["frozen" if h else "trainable" for h in hits])


def make_optimizer(
    learning_rate: float,
    *,
    optimizer: str = "sgd",
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    l2_scope: str = "weights",
    schedule: str = "constant",
    schedule_kwargs: Mapping | None = None,
    warmup_steps: int = 0,
    total_steps: Optional[int] = None,
    steps_per_epoch: int = 1,
    optimizer_kwargs: Mapping | None = None,
    frozen: Optional[str] = None,
    track_step_conditioning: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """The optimizer of a run (module docstring).

    Args:
      learning_rate: base step size (data: in the optimizer state).
      optimizer: ``'sgd'``, ``'adam'`` or ``'adamw'``.
      momentum: SGD's heavy-ball coefficient (0: plain SGD, no momentum buffer; data,
        but whether there is a buffer is structure).
      nesterov: Nesterov momentum (SGD).
      weight_decay: λ (data). ``sgd``/``adam``: the objective's L2 term, applied by the
        train step (:data:`COUPLED_DECAY`); ``adamw``: decoupled decay of the kernels.
      l2_scope: ``adamw`` only: which parameters it decays, a name from
        :data:`jaxnorm.objective.L2_SCOPES` (``'all_but_bias'``: every leaf not named
        ``bias``; a ``bn_ablation`` run's switched-off γ is then decayed too, unused: the
        layer uses 1 in its place). The coupled optimizers' scope is the train step's.
      schedule: a name from :data:`SCHEDULES`; schedule_kwargs: its options
        (``epochs``/``factor`` for step; ``factor``/``patience``/``rtol``/``cooldown``/
        ``min_scale`` for plateau; ``alpha`` for cosine; ``end`` for linear).
      warmup_steps: linear warmup from 0 over this many steps (not with ``plateau``).
      total_steps: the run's length; needed by ``cosine`` and ``linear``.
      steps_per_epoch: converts epoch-based options to steps.
      optimizer_kwargs: Adam's ``b1``, ``b2``, ``eps`` (defaults 0.9, 0.999, 1e-8).
      frozen: a regex, or None. Parameters whose path (:func:`param_paths`) it matches
        (``re.search``) get an exactly zero update: they keep their initial values
        (gradients, e.g. of an L2 term, are still computed, and momentum still tracks
        them, but nothing is applied). The mask is built from the params at ``init``.
      track_step_conditioning: put :func:`jaxnorm.diagnostics.step_tracker.track_step_conditioning`
        first in the chain: the in-training κ_W estimate at every step (two extra
        params-sized buffers in the optimizer state; updates unchanged).

    Raises:
      ValueError: unknown optimizer or schedule, non-positive learning rate, negative
        momentum or weight decay, an unknown ``l2_scope``, momentum with Adam, a negative warmup, warmup with
        ``plateau``, ``cosine``/``linear`` without ``total_steps``, unknown optimizer
        options, or an invalid ``frozen`` regex; at ``init``, a ``frozen`` regex that
        matches no parameter (the message lists the parameter paths).
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}.")
    if momentum < 0:
        raise ValueError(f"momentum must be >= 0, got {momentum}.")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
    check_l2_scope(l2_scope)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {list(OPTIMIZERS)}")
    if optimizer != "sgd" and (momentum or nesterov):
        raise ValueError(f"momentum/nesterov are SGD options; {optimizer} has b1 (optimizer_kwargs) instead.")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
    if schedule in ("cosine", "linear") and not total_steps:
        raise ValueError(f"schedule {schedule!r} needs total_steps (the run's length).")
    if schedule == "plateau" and warmup_steps:
        raise ValueError("warmup_steps cannot be combined with the 'plateau' schedule.")
    adam = {"b1": 0.9, "b2": 0.999, "eps": 1e-8}
    unknown = sorted(set(optimizer_kwargs or {}) - set(adam))
    if unknown or (optimizer == "sgd" and optimizer_kwargs):
        raise ValueError(f"unknown optimizer options {unknown or sorted(optimizer_kwargs)} for {optimizer!r}; Adam takes {sorted(adam)}.")
    adam.update(optimizer_kwargs or {})
    decay_steps = max((total_steps or 0) - warmup_steps, 1)
    multiplier, tail = lookup(SCHEDULES, schedule, "schedule")(steps_per_epoch, decay_steps, **dict(schedule_kwargs or {}))
    if warmup_steps:
        after = multiplier if multiplier is not None else optax.constant_schedule(1.0)
        multiplier = optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup_steps), after], [warmup_steps])
    # Structure from the Python float (inside, momentum is a traced array).
    use_momentum = momentum_structure(momentum)
    core = optax.inject_hyperparams(
        lambda learning_rate, momentum, weight_decay, l2: _inner(
            learning_rate, momentum, weight_decay, l2, optimizer=optimizer, use_momentum=use_momentum, nesterov=nesterov, multiplier=multiplier, l2_scope=l2_scope, **adam
        )
    )(
        learning_rate=float(learning_rate),
        momentum=float(momentum),
        weight_decay=float(weight_decay),
        l2=float(weight_decay) if optimizer in COUPLED_DECAY else 0.0,
    )
    parts = [core, *tail]
    if track_step_conditioning:
        parts.insert(0, _step_tracker())  # first: it needs the raw gradients
    if frozen is not None:
        try:
            re.compile(frozen)
        except re.error as e:
            raise ValueError(f"frozen={frozen!r} is not a valid regular expression: {e}.") from None
        # Last in the chain: whatever the optimizer computes, a frozen leaf's update is 0.
        freeze = optax.multi_transform(
            {"trainable": optax.identity(), "frozen": optax.set_to_zero()},
            lambda params: freeze_labels(frozen, params),
        )
        parts.append(freeze)
    return optax.with_extra_args_support(optax.chain(*parts))


def momentum_structure(momentum: float) -> bool:
    """Whether an SGD optimizer with this momentum keeps a momentum buffer (structure,
    not data: runs trained as one program must agree on it)."""
    return float(momentum) > 0
