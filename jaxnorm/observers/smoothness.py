"""``Smoothness``: the loss landscape along the gradient every k steps during ``fit``.

Santurkar, Tsipras, Ilyas & Madry (2018), "How does batch normalization help
optimization?" (Fig. 4), measure at the current weights w, with g = ∇L(w) and for a
range of step sizes η:

* **loss landscape**: L(w − ηg) -- the band (min, max over η) shows how much the loss
  changes along the gradient;
* **gradient predictiveness**: ‖∇L(w − ηg) − g‖₂ -- how well the gradient at w predicts
  the gradient a step away;
* **effective β-smoothness**: max over η of ‖∇L(w − ηg) − g‖₂ / ‖ηg‖₂ -- the gradient's
  Lipschitz constant along the step actually taken.

:func:`smoothness_probe` computes them for any ``loss(params) -> scalar`` (all η in one
``vmap``); :class:`Smoothness` is the observer that does so on a fixed probe set, the
same examples every time (so the curve over training reflects the weights, not the
sample), and writes ``metrics.jsonl`` lines

    {"kind": "smoothness", "step": s, "loss": L(w), "grad_norm": ‖g‖,
     "loss_min", "loss_max", "grad_change_min", "grad_change_max", "beta_smoothness",
     "bn_mode": "batch", "probe_examples": n}

With plain SGD (no momentum, no weight decay) and η = the learning rate, w − ηg is
exactly the step training would take on the probe set.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxnorm.observers.probe import probe_batches
from jaxnorm.modes import apply as apply_in_mode, check_bn_mode
from jaxnorm.objective import get_loss, l2_penalty

__all__ = ["BN_MODES", "Smoothness", "smoothness_probe"]

BN_MODES = ("batch", "running")  # jaxnorm.modes: the training objective, or running statistics


def _norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _axpy(a, x, y):
    """``y + a·x`` leafwise (``a`` a scalar, possibly traced)."""
    return jax.tree.map(lambda xi, yi: yi + a * xi, x, y)


def smoothness_probe(loss: Callable, params, etas) -> dict[str, jax.Array]:
    """The three smoothness measurements of Santurkar et al. (2018, Fig. 4) at ``params``.

    Args:
      loss: ``params -> scalar`` (data, BN mode and any noise closed over: the same
        function for every η).
      params: a pytree.
      etas: ``(k,)`` step sizes (> 0); all evaluated at once (``vmap`` over η).

    Returns float32 scalars: ``loss`` L(w) and ``grad_norm`` ‖g‖ (g = ∇L(w)); over η,
    ``loss_min`` / ``loss_max`` of L(w − ηg), ``grad_change_min`` / ``grad_change_max``
    of ‖∇L(w − ηg) − g‖₂, and ``beta_smoothness`` = max ‖∇L(w − ηg) − g‖₂ / (η‖g‖₂).
    Pure and jit-able; nothing mutates.
    """
    value, g = jax.value_and_grad(loss)(params)
    g_norm = _norm(g)

    def at(eta):
        moved, g_moved = jax.value_and_grad(loss)(_axpy(-eta, g, params))
        return moved, _norm(_axpy(-1.0, g, g_moved))

    etas = jnp.asarray(etas, jnp.float32)
    losses, changes = jax.vmap(at)(etas)
    return {
        "loss": value,
        "grad_norm": g_norm,
        "loss_min": jnp.min(losses),
        "loss_max": jnp.max(losses),
        "grad_change_min": jnp.min(changes),
        "grad_change_max": jnp.max(changes),
        "beta_smoothness": jnp.max(changes / (etas * g_norm)),
    }


def check_etas(etas: Sequence[float]) -> tuple[float, ...]:
    """``etas`` as a tuple of floats; ValueError unless a non-empty list of finite numbers > 0."""
    try:
        out = tuple(float(e) for e in etas)
    except (TypeError, ValueError):
        raise ValueError(f"etas must be a non-empty list of finite numbers > 0, got {etas!r}.") from None
    if not out or any(isinstance(e, bool) for e in etas) or not all(math.isfinite(e) and e > 0 for e in out):
        raise ValueError(f"etas must be a non-empty list of finite numbers > 0, got {etas!r}.")
    return out


class Smoothness:
    """Observer: :func:`smoothness_probe` of the training loss on a fixed probe set every
    ``every`` steps (sink ``'metrics'``).

    The loss is the training objective on the probe set: the mean per-example ``loss``
    (+ ``0.5·weight_decay·Σ‖W‖²`` on the kernels) of each probe batch, averaged over the
    batches. In ``bn_mode='batch'`` (default; :mod:`jaxnorm.modes`) BatchNorm normalizes
    each probe batch with its own statistics at the probed weights, differentiated
    through -- what training descends; running statistics are never updated. Layers
    that draw from the ``'dropout'`` stream in training mode (dropout, the noise of
    :class:`jaxnorm.layers.Norm`) get the key ``fold_in(PRNGKey(seed), step)``: one draw
    per measurement, the same for every η (so the probe moves the weights only), fresh
    at every measurement as training's is at every step. ``'running'``: the network as
    evaluated (running statistics, no noise, no dropout).

    Args:
      module: the model as trained (``build_model(config, classes)``; for
        :func:`~jaxnorm.train.fit_many` over mixed ablation variants the
        ``bn_ablation`` superset).
      images, labels: the probe set (float32 in [0, 1] NHWC / (n, d), int32 (n,)), kept
        on the device.
      mean, std: the dataset's normalization constants.
      etas: the probed step sizes (> 0).
      every: interval in steps.
      batch_size: probe batch size (default: all examples in one batch; use the
        training batch size: in ``'batch'`` mode the loss depends on it); the probe set
        is cut to a multiple of it.
      bn_mode: ``'batch'`` (default) or ``'running'``.
      loss: a name from :data:`jaxnorm.objective.LOSSES` (default ``'ce'``) or a
        per-example callable ``(logits, labels) -> (b,)``.
      weight_decay: λ of the training objective's L2 term (0: none).
      seed: the key of the probe's dropout/noise draws.

    Raises:
      ValueError: bad ``etas``, ``every`` < 1, an unknown BN mode, a probe set smaller
        than one batch, a batch of one in ``'batch'`` mode, or mismatched images/labels.
    """

    name = "smoothness"
    sink = "metrics"

    def __init__(
        self,
        module,
        images,
        labels,
        mean,
        std,
        *,
        etas: Sequence[float],
        every: int = 20,
        batch_size: Optional[int] = None,
        bn_mode: str = "batch",
        loss="ce",
        weight_decay: float = 0.0,
        seed: int = 0,
    ):
        self.etas = check_etas(etas)
        check_bn_mode(bn_mode, BN_MODES)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}.")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
        low = 2 if bn_mode == "batch" else 1
        self.x, self.y = probe_batches(images, labels, mean, std, batch_size, min_batch=low, what=f"batch_size (bn_mode {bn_mode!r})")
        k, batch_size = self.y.shape
        self.module, self.every, self.bn_mode, self.weight_decay, self.seed = module, every, bn_mode, weight_decay, seed
        self.per_example = get_loss(loss)
        self.annotations = {"bn_mode": bn_mode, "probe_examples": k * batch_size, **({"objective": loss} if isinstance(loss, str) else {})}

    def loss_fn(self, state) -> Callable:
        """``params -> scalar``: the probe objective at ``state`` (its batch_stats and step)."""
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), state.step)
        stats = state.batch_stats

        def loss(params):
            variables = {"params": params, **({"batch_stats": stats} if stats else {})}

            def one(xy):
                logits = apply_in_mode(self.module, variables, xy[0], bn_mode=self.bn_mode, rng=key)
                return jnp.mean(self.per_example(logits, xy[1]))

            data = jnp.mean(jax.lax.map(one, (self.x, self.y)))
            return data + self.weight_decay * l2_penalty(params) if self.weight_decay else data

        return loss

    def __call__(self, state) -> dict[str, jax.Array]:
        return smoothness_probe(self.loss_fn(state), state.params, self.etas)
