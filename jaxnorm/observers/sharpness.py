"""``Sharpness``: the Hessian's top eigenvalue every k steps during ``fit``, warm-started.

The sharpness (Cohen et al. 2021, "Gradient descent on neural networks typically occurs
at the edge of stability"; the lecture “Normalization and Regularization” (CMU Deep Learning Systems)) is the largest eigenvalue of the
training loss's Hessian. This observer measures it on a fixed probe set -- the same
examples every time, so the curve over training reflects the weights, not the sample --
and writes ``metrics.jsonl`` lines

    {"kind": "sharpness", "step": s, "sharpness": λ, "loss": L, "iterations": n,
     "bn_mode": "batch", "method": "lanczos"}

Each measurement starts from the previous one's eigenvector (the observer's *carry*,
see :mod:`jaxnorm.observers.protocol`): between two measurements the top eigenvector turns
little, so a warm start needs a fraction of the iterations of a cold one. The carry is
saved with every checkpoint, so a resumed run measures exactly what an uninterrupted
one does.

Methods (a registry, :data:`METHODS`):

* ``'lanczos'`` (default): the largest Ritz value of ``num_iters`` Lanczos steps with
  full reorthogonalization -- the top *algebraic* eigenvalue even while a negative
  eigenvalue is larger in magnitude (early in training it can be);
* ``'power_iteration'``: PyHessian's method, at most ``num_iters`` HVPs with relative
  tolerance ``tol`` (``iterations`` records how many ran); the eigenvalue of largest
  magnitude, which is the sharpness only once the positive end dominates.

BatchNorm: ``bn_mode='batch'`` (default; batch statistics of each probe batch,
differentiated through: the Hessian of the objective training descends) or ``'running'``
(running statistics, PyHessian's choice); every line records it, and the loss's name as
``objective``. The probe set is split
into ``len(labels) // batch_size`` batches (use the training batch size: in train mode
the Hessian depends on it) and the loss is their average, as
:func:`~jaxnorm.diagnostics.hessian.hessian_loss_fn` defines it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxnorm.observers.probe import probe_batches
from jaxnorm.modes import check_bn_mode
from jaxnorm.diagnostics.curvature import check_curvature
from jaxnorm.diagnostics.hessian import BN_MODES, hessian_loss_fn, lanczos, power_iteration, top_eigenpairs

__all__ = ["METHODS", "Sharpness"]


def _by_lanczos(loss, params, v0, num_iters: int, tol, curvature: str = "hessian") -> tuple[jax.Array, Any, jax.Array]:
    vals, vecs = top_eigenpairs(lanczos(loss, params, num_iters, v0=v0, curvature=curvature), 1)
    _, unravel = ravel_pytree(params)
    return vals[0], unravel(vecs[0]), jnp.asarray(num_iters, jnp.int32)


def _by_power_iteration(loss, params, v0, num_iters: int, tol, curvature: str = "hessian") -> tuple[jax.Array, Any, jax.Array]:
    r = power_iteration(loss, params, v0=v0, num_iters=num_iters, tol=tol, curvature=curvature)
    return r.eigenvalue, r.eigenvector, r.iterations


# (loss, params, v0, num_iters, tol, curvature='hessian') -> (top eigenvalue, its eigenvector (params-shaped), products used)
METHODS: dict[str, Callable] = {"lanczos": _by_lanczos, "power_iteration": _by_power_iteration}


class Sharpness:
    """Observer: the top Hessian eigenvalue on a fixed probe set every ``every`` steps.

    Args:
      module: the model as trained (``build_model(config, classes)``; for
        :func:`~jaxnorm.train.fit_many` over mixed ablation variants the
        ``bn_ablation`` superset).
      images, labels: the probe set (float32 in [0, 1], int32), kept on the device: a
        few thousand examples at most.
      mean, std: the dataset's normalization constants.
      every: interval in steps.
      batch_size: probe batch size (default: all examples in one batch); the probe set
        is cut to a multiple of it.
      method: ``'lanczos'`` (default) or ``'power_iteration'``.
      num_iters: Lanczos steps, or the power-iteration cap (HVPs per measurement).
      tol: power iteration's relative tolerance (unused by Lanczos).
      bn_mode: ``'batch'`` (default) or ``'running'`` (:mod:`jaxnorm.modes`).
      loss: the loss whose Hessian is measured: a name from
        :data:`jaxnorm.objective.LOSSES` (default ``'ce'``) or a per-example callable.
      weight_decay: λ of the training loss's ``0.5·λ·Σ‖W‖²`` (kernels), to measure the
        Hessian of exactly what is trained.
      seed: the key of the first (cold) start vector.
      curvature: the matrix whose top eigenvalue is tracked: ``'hessian'`` (default),
        ``'ggn'`` or ``'fisher'`` (:data:`jaxnorm.diagnostics.curvature.CURVATURES`);
        recorded in the annotations (as ``curvature``) when it is not the Hessian.

    Raises:
      ValueError: unknown method, curvature or BN mode, ``every``/``num_iters`` < 1, a probe set
        smaller than one batch, or a BN probe batch of one example.
    """

    name = "sharpness"
    sink = "metrics"

    def __init__(
        self,
        module,
        images,
        labels,
        mean,
        std,
        *,
        every: int = 100,
        batch_size: Optional[int] = None,
        method: str = "lanczos",
        num_iters: int = 20,
        tol: float = 1e-3,
        bn_mode: str = "batch",
        loss="ce",
        weight_decay: float = 0.0,
        seed: int = 0,
        curvature: str = "hessian",
    ):
        check_curvature(curvature)
        if method not in METHODS:
            raise ValueError(f"unknown sharpness method {method!r}; known: {sorted(METHODS)}.")
        check_bn_mode(bn_mode, BN_MODES)
        if every < 1 or num_iters < 1:
            raise ValueError(f"need every >= 1 and num_iters >= 1; got {every} and {num_iters}.")
        self.x, self.y = probe_batches(images, labels, mean, std, batch_size)
        self.module, self.every, self.method, self.num_iters, self.tol = module, every, method, num_iters, tol
        self.bn_mode, self.weight_decay, self.seed, self.loss = bn_mode, weight_decay, seed, loss
        self.curvature = curvature
        self.annotations = {"bn_mode": bn_mode, "method": method, **({"objective": loss} if isinstance(loss, str) else {})}
        if curvature != "hessian":
            self.annotations["curvature"] = curvature

    def init_carry(self, state) -> Any:
        """The first start vector: a unit Gaussian direction, params-shaped."""
        leaves, treedef = jax.tree.flatten(state.params)
        keys = jax.random.split(jax.random.PRNGKey(self.seed), len(leaves))
        v = [jax.random.normal(k, l.shape, jnp.float32) for k, l in zip(keys, leaves)]
        norm = jnp.sqrt(sum(jnp.vdot(a, a) for a in v))
        return jax.tree.unflatten(treedef, [a / norm for a in v])

    def __call__(self, state, carry) -> tuple[dict[str, jax.Array], Any]:
        loss = hessian_loss_fn(self.module, state.variables, self.x, self.y, bn_mode=self.bn_mode, weight_decay=self.weight_decay, loss=self.loss)
        value, vector, used = METHODS[self.method](loss, state.params, carry, self.num_iters, self.tol, curvature=self.curvature)
        return {"sharpness": value, "loss": loss(state.params), "iterations": used}, vector
