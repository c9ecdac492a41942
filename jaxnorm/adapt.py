"""Test-time adaptation of BatchNorm: running statistics, test-batch statistics, TENT.

A BatchNorm network predicts a stream of test batches in one of three modes (:data:`MODES`),
each a pure step ``(module, state, x) -> (logits, state)`` on a :class:`TentState`:

* ``'running'`` -- eval mode: every BN layer normalizes by the running averages collected
  in training (``train=False``). The usual way; nothing changes.
* ``'batch'`` -- each test batch is normalized by its own statistics (the training-mode
  forward, ``train=True``), and the running statistics are *not* updated: the step is the
  train-mode forward minus its state update. Schneider et al. (2020) show this alone
  recovers much of the accuracy lost under covariate shift (corruptions).
* ``'tent'`` -- test-batch statistics as in ``'batch'``, and BN's affine parameters γ/β
  (``scale``/``bias`` of every norm layer; nothing else) are trained online by minimizing
  the mean Shannon entropy of the batch's predictions (Wang et al. 2021).

TENT's order, as in Wang et al.'s code (``forward_and_adapt``): one forward pass on batch t
with the current γ/β gives the logits that are returned *and* the entropy whose gradient
updates γ/β; the update then serves batch t + 1 ("predict and update on the same batch,
online across batches"). With ``steps = k`` the batch is seen k times and the logits are
those of the last forward; ``predict_after_update=True`` instead returns a fresh forward
after the k updates. ``episodic=True`` resets γ/β and the optimizer state to the source
model's before every batch (Wang et al.'s episodic variant: each batch adapted on its own).
:func:`reset` does the same by hand, e.g. between streams (corruption types).

Optimizer (any optax transformation, over the γ/β leaves only): Wang et al. used Adam, lr
1e-3 (β = 0.9, 0.999), batch 128 on CIFAR-10/100-C, and SGD with momentum 0.9, lr 2.5e-4,
batch 64 on ImageNet-C; :func:`init_tent` defaults to the former.

    state = init_tent(variables)                      # variables = model.init(...)
    step = make_step(module, "tent")                  # jitted (state, x) -> (logits, state)
    logits, state = step(state, x)                    # x normalized as in training
    logits, state = run_stream(step, state, images, batch_size=128)

Models with dropout are not meant for ``'batch'``/``'tent'`` (``train=True`` would switch it
on; flax asks for a ``'dropout'`` rng). Other norm kinds: their γ/β are adapted too, and
``'batch'`` equals ``'running'`` for norms without running statistics.

References:
  D. Wang, E. Shelhamer, S. Liu, B. Olshausen, T. Darrell. Tent: fully test-time adaptation
  by entropy minimization. ICLR 2021.
  S. Schneider, E. Rusak, L. Eck, O. Bringmann, W. Brendel, M. Bethge. Improving robustness
  against common corruptions by covariate shift adaptation. NeurIPS 2020.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.struct as struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnorm._registry import lookup

Params = Any


def entropy(logits: jax.Array) -> jax.Array:
    """Shannon entropy (nats) of ``softmax(logits)`` over the last axis: −Σ p log p.

    Computed in float32 from ``log_softmax`` (no log 0). Shape: ``logits.shape[:-1]``.
    """
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def _key_name(k) -> str:
    return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def _path(path) -> str:
    return "/".join(_key_name(k) for k in path)


def is_norm_affine(path: str) -> bool:
    """Whether a params path (``'norm3/scale'``, ``'block/norm1/bias'``) is a norm layer's
    γ or β: its last key is ``scale``/``bias`` and the one before starts with ``norm`` (how
    :mod:`jaxnorm.models` names norm layers, as :func:`jaxnorm.observers.norm_layers`)."""
    keys = path.split("/")
    return len(keys) >= 2 and keys[-2].startswith("norm") and keys[-1] in ("scale", "bias")


def norm_affine(params: Params) -> dict[str, jax.Array]:
    """The norm layers' γ/β leaves of ``params``, keyed by path (``{'norm1/scale': ...}``)."""
    return {p: leaf for p, leaf in ((_path(k), v) for k, v in jax.tree_util.tree_leaves_with_path(params)) if is_norm_affine(p)}


def with_affine(params: Params, affine: dict[str, jax.Array]) -> Params:
    """``params`` with the leaves named in ``affine`` replaced (the others: the same objects)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    return treedef.unflatten([affine.get(_path(k), v) for k, v in leaves])


class TentState(struct.PyTreeNode):
    """What a test-time step carries (a pytree; the optimizer is static).

    Attributes:
      params: the source model's params, never changed; its γ/β are the source values.
      batch_stats: the source model's running statistics, never changed.
      affine: the current γ/β (``{path: array}``, see :func:`norm_affine`); the model is
        applied with these in place of ``params``' own.
      opt_state: the optimizer's state over ``affine``.
      updates: how many TENT updates ``affine`` has had since the last reset (int32).
      optimizer: the optax transformation (static: a compiled step is reused for states
        holding the same optimizer object; a new one, e.g. another ``optax.adam(1e-3)``
        call, compiles again).
    """

    params: Params
    batch_stats: Params
    affine: dict
    opt_state: Any
    updates: jax.Array
    optimizer: optax.GradientTransformation = struct.field(pytree_node=False)

    @property
    def variables(self) -> dict:
        """The model's current variables: ``params`` with the adapted γ/β, ``batch_stats``."""
        return {"params": with_affine(self.params, self.affine), "batch_stats": self.batch_stats}


def init_tent(variables: dict, optimizer: Optional[optax.GradientTransformation] = None) -> TentState:
    """The state of a fresh stream for a trained model's ``variables``.

    Args:
      variables: ``{'params': ..., 'batch_stats': ...}`` (``batch_stats`` may be absent).
      optimizer: for TENT's γ/β; default ``optax.adam(1e-3)`` (Wang et al., CIFAR).

    Raises:
      ValueError: no ``params``, or no norm layer with a learned γ or β (a ``'bn'`` or
        ``'vanilla'`` network: nothing for TENT to adapt; ``'running'``/``'batch'`` still
        work with :func:`source_state`).
    """
    state = source_state(variables, optimizer)
    if not state.affine:
        raise ValueError(
            "init_tent: the model has no norm layer with a learned scale or bias (params named "
            "'norm*/scale' or 'norm*/bias'): TENT has nothing to adapt. Use norm='bn_gamma_beta' (or bn_gamma/bn_beta)."
        )
    return state


def source_state(variables: dict, optimizer: Optional[optax.GradientTransformation] = None) -> TentState:
    """Like :func:`init_tent` but also for a model without γ/β (for ``'running'``/``'batch'``)."""
    if not hasattr(variables, "keys") or "params" not in variables:
        raise ValueError("expected the model's variables, a dict with 'params' (and 'batch_stats').")
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    params = variables["params"]
    affine = norm_affine(params)
    return TentState(
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        affine=affine,
        opt_state=optimizer.init(affine),
        updates=jnp.zeros((), jnp.int32),
        optimizer=optimizer,
    )


def reset(state: TentState) -> TentState:
    """γ/β and the optimizer state back to the source model's (a new episode or stream)."""
    affine = norm_affine(state.params)
    return state.replace(affine=affine, opt_state=state.optimizer.init(affine), updates=jnp.zeros((), jnp.int32))


def _forward(module, variables, x, train: bool) -> jax.Array:
    if not train:
        return module.apply(variables, x, train=False)
    logits, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])  # stats update discarded
    return logits


def running_step(module, state: TentState, x: jax.Array) -> tuple[jax.Array, TentState]:
    """``'running'``: eval mode, running statistics (with the state's current γ/β)."""
    return _forward(module, state.variables, x, train=False), state


def batch_step(module, state: TentState, x: jax.Array) -> tuple[jax.Array, TentState]:
    """``'batch'``: the batch's own statistics; running statistics and γ/β untouched."""
    return _forward(module, state.variables, x, train=True), state


def tent_step(
    module,
    state: TentState,
    x: jax.Array,
    *,
    steps: int = 1,
    episodic: bool = False,
    predict_after_update: bool = False,
) -> tuple[jax.Array, TentState]:
    """``'tent'``: predict ``x`` with test-batch statistics and update γ/β on its entropy.

    Pure (jit it with ``module`` and the options closed over, e.g. :func:`make_step`).

    Args:
      module: the flax model, applied as ``module.apply(variables, x, train=True)``.
      state: from :func:`init_tent`.
      x: one batch, preprocessed as in training (at least 2 examples: BN statistics).
      steps: updates on this batch (Wang et al.: 1).
      episodic: reset γ/β and the optimizer before this batch (see :func:`reset`).
      predict_after_update: return the logits of a forward after the updates instead of
        those of the (last) forward the update was computed from (Wang et al.'s order).

    Returns:
      ``(logits, new_state)``: only ``affine``, ``opt_state`` and ``updates`` change.
    """
    _check_steps(steps)
    if episodic:
        state = reset(state)

    def objective(affine):
        variables = {"params": with_affine(state.params, affine), "batch_stats": state.batch_stats}
        logits = _forward(module, variables, x, train=True)
        return jnp.mean(entropy(logits)), logits

    def update(carry, _):
        affine, opt_state = carry
        (_, logits), grads = jax.value_and_grad(objective, has_aux=True)(affine)
        moves, opt_state = state.optimizer.update(grads, opt_state, affine)
        return (optax.apply_updates(affine, moves), opt_state), logits

    # A Python loop, not lax.scan: even fully unrolled, a scan lowers to a while loop (of one
    # trip), and XLA's CPU backend runs the convolutions of a while body about 10x slower
    # than the same program without the loop (measured: the 4-layer digits ConvNet's TENT
    # step, batch 64, ~140 ms vs ~10 ms). ``steps`` is a small static int.
    carry = (state.affine, state.opt_state)
    for _ in range(int(steps)):
        carry, logits = update(carry, None)
    affine, opt_state = carry
    logits = objective(affine)[1] if predict_after_update else logits
    return logits, state.replace(affine=affine, opt_state=opt_state, updates=state.updates + steps)


_TENT_OPTIONS = ("steps", "episodic", "predict_after_update")


def _check_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"tent: steps must be an int >= 1, got {steps!r}.")


MODES: dict[str, Callable] = {"running": running_step, "batch": batch_step, "tent": tent_step}
"""The evaluation modes by name: ``step(module, state, x, **options) -> (logits, state)``."""


#: TENT's optimizers for γ/β by name: ``(learning_rate, momentum) -> optax transformation``
#: (Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization": Adam with lr 1e-3
#: on CIFAR-10/100-C, SGD with momentum 0.9 and lr 2.5e-4 on ImageNet-C).
TENT_OPTIMIZERS = {
    "adam": lambda lr, momentum: optax.adam(lr),
    "sgd": lambda lr, momentum: optax.sgd(lr, momentum=momentum or None),
}


def tent_optimizer(name: str, learning_rate: float, momentum: float = 0.0) -> optax.GradientTransformation:
    """TENT's optimizer :data:`TENT_OPTIMIZERS` ``[name]`` with the learning rate held as
    data (:func:`optax.inject_hyperparams`), so one compiled step serves a grid of learning
    rates: set one with :func:`with_learning_rate`."""
    make = lookup(TENT_OPTIMIZERS, name, "TENT optimizer")
    return optax.inject_hyperparams(lambda learning_rate: make(learning_rate, momentum))(learning_rate=learning_rate)


def with_learning_rate(state: TentState, learning_rate: float) -> TentState:
    """``state`` (its optimizer from :func:`tent_optimizer`) with TENT's learning rate set to
    ``learning_rate``; the moments and everything else unchanged."""
    hyper = getattr(state.opt_state, "hyperparams", None)
    if hyper is None or "learning_rate" not in hyper:
        raise ValueError("with_learning_rate needs a state whose optimizer comes from adapt.tent_optimizer "
                         "(optax.inject_hyperparams with a learning_rate).")
    hyper = {**hyper, "learning_rate": jnp.asarray(learning_rate, jnp.float32)}
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyper))


def make_step(module, mode: str, **options) -> Callable[[TentState, jax.Array], tuple[jax.Array, TentState]]:
    """The jitted step ``(state, x) -> (logits, state)`` of ``mode`` (options: ``'tent'``'s
    ``steps``, ``episodic``, ``predict_after_update``). Raises ValueError for an unknown mode
    or options a mode does not take."""
    fn = lookup(MODES, mode, "adaptation mode")
    allowed = _TENT_OPTIONS if mode == "tent" else ()
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise ValueError(f"mode {mode!r} takes the options {list(allowed)}, got {bad}.")
    if "steps" in options:
        _check_steps(options["steps"])
    return jax.jit(functools.partial(fn, module, **options))


def run_stream(step: Callable, state: TentState, images, batch_size: int) -> tuple[jax.Array, TentState]:
    """Feeds ``images`` (``(n, ...)``, preprocessed) to ``step`` in order, ``batch_size`` at a
    time (the last batch may be smaller: one more compile); returns the ``(n, classes)``
    logits on the device and the final state. No host sync inside."""
    n = len(images)
    if batch_size < 2:
        raise ValueError(f"run_stream: batch_size must be >= 2 (batch statistics), got {batch_size}.")
    if n % batch_size == 1:
        raise ValueError(f"run_stream: {n} images in batches of {batch_size} leave a last batch of 1 (no batch statistics).")
    out = []
    for start in range(0, n, batch_size):
        logits, state = step(state, images[start : start + batch_size])
        out.append(logits)
    return jnp.concatenate(out), state


def make_steps(module, modes, *, tent_steps: int = 1) -> dict[str, Callable]:
    """``{mode: make_step(module, mode)}`` for ``modes`` (``'tent'`` with ``tent_steps``
    updates per batch): build once, stream many times (each :func:`make_step` is a new
    jitted function, so building per stream would recompile)."""
    return {m: make_step(module, m, **({"steps": tent_steps} if m == "tent" else {})) for m in modes}


@jax.jit
def _stream_metrics(logits, labels):
    correct = jnp.argmax(logits, -1) == labels
    return correct, jnp.mean(entropy(logits)), jnp.all(jnp.isfinite(logits))


def evaluate_stream(steps: dict, state: TentState, images, labels, batch_size: int) -> dict[str, dict]:
    """Streams ``images`` (``(n, ...)``, preprocessed as in training) through every step of
    ``steps`` (:func:`make_steps`), each starting from the same ``state`` (TENT is reset
    per stream, as Wang et al. reset per corruption).

    Returns ``{mode: {"correct": (n,) bool numpy, "error", "entropy" (mean prediction
    entropy, nats), "finite" (all logits finite), "updates" (TENT updates made)}}``; a
    mode whose logits are not all finite has ``finite`` False and its numbers are not
    meaningful. Errors as :func:`run_stream`."""
    labels = jnp.asarray(labels)
    out = {}
    for mode, step in steps.items():
        logits, final = run_stream(step, state, images, batch_size)
        ok, ent, finite = jax.device_get(_stream_metrics(logits, labels))
        out[mode] = {"correct": np.asarray(ok), "error": float(1 - ok.mean()), "entropy": float(ent), "finite": bool(finite),
                     "updates": int(final.updates)}
    return out


__all__ = [
    "MODES",
    "TentState",
    "batch_step",
    "entropy",
    "evaluate_stream",
    "init_tent",
    "is_norm_affine",
    "make_step",
    "make_steps",
    "norm_affine",
    "reset",
    "run_stream",
    "running_step",
    "source_state",
    "tent_optimizer",
    "tent_step",
    "with_affine",
    "with_learning_rate",
]
