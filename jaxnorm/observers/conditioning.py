"""``GradientConditioning``: any subset of the gradient metrics every k steps during ``fit``.

Each call draws fresh batches from a fixed pool of training examples (a permutation
keyed by the run's step, so a resumed run measures the same batches) and computes the
requested metrics, sharing the expensive pieces: one set of per-example gradients for
every per-example metric, one set of perturbed gradients for κ_W and the Def. 4.1
forms, one batch gradient per batch for confusion and diversity. Records go to
``metrics.jsonl`` as ``{"kind": "conditioning", "step": s, <metric>: value, ...}``
plus the sample sizes ``n_batches`` and ``batch_size`` (diversity depends on them).

Metrics (“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022; definitions in the modules named):

=============================  ==========================================================
``kappa_w``                    κ_W, Def. 2.5 (:mod:`~jaxnorm.diagnostics.step_consistency`)
``kappa_w_hessian``            Def. 2.4, ‖H‖₂·‖w‖/‖∇L‖ (Lanczos; :mod:`~jaxnorm.diagnostics.hessian_conditioning`)
``kappa_w_directional``        ‖H ĝ‖·‖w‖/‖∇L‖: κ_W's η → 0 limit along the gradient
``min_cosine``                 Def. 4.1, eq. 4.1
``weight_gradient_diversity``  Def. 4.1, eq. 4.2
``weight_gradient_coherence``  Def. 4.1, eq. 4.3
``kappa_x``                    κ_X, eq. 3.16 (:mod:`~jaxnorm.diagnostics.input_conditioning`)
``weight_rank``                relative rank of per-example weight gradients, Def. 3.7
``input_rank``                 relative rank of per-example input gradients, Def. 3.7
``confusion``                  Def. 3.11 over all pairs of ``n_batches`` batch gradients
``diversity``                  Def. 3.12 over ``n_batches`` batch gradients
``per_example_diversity``      Def. 3.12 over one batch's per-example gradients (Yin et al.)
``coherence``                  Def. 3.13 over one batch's per-example gradients
=============================  ==========================================================

The two Hessian forms are the differentiable values the finite-difference κ_W is
compared with: κ_W at finite η can sit above both when its steps cross ReLU kinks (see
:mod:`~jaxnorm.diagnostics.hessian_conditioning`). ``kappa_w_directional`` uses the
mask (§1.6) as κ_W does; ``kappa_w_hessian`` is unmasked (‖H‖₂ of the whole Hessian).

Batch gradients (κ_W, the Hessian forms, Def. 4.1, confusion, diversity) are training's gradients
(``bn_mode='batch'``: BatchNorm with the batch's statistics, differentiated through);
per-example quantities use ``bn_mode`` (default ``'frozen'``; see
:mod:`~jaxnorm.diagnostics.per_example`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from jaxnorm.data.augmentation import normalize
from jaxnorm.modes import check_bn_mode
from jaxnorm.diagnostics._mapping import map_chunks
from jaxnorm.diagnostics.dissonance import confusion_from_gram, gradient_coherence, gradient_diversity
from jaxnorm.diagnostics.effective_rank import relative_gradient_rank
from jaxnorm.diagnostics.hessian_conditioning import directional_condition_number, hessian_condition_number
from jaxnorm.diagnostics.input_conditioning import input_condition_number
from jaxnorm.diagnostics.masking import flatten, random_mask
from jaxnorm.diagnostics.per_example import batch_loss_fn, per_example_grads
from jaxnorm.diagnostics.step_consistency import PERTURBATIONS, weight_perturbations, weight_space_metrics

__all__ = ["METRICS", "GradientConditioning"]

WEIGHT_SPACE = ("kappa_w", "min_cosine", "weight_gradient_diversity", "weight_gradient_coherence")
HESSIAN = ("kappa_w_hessian", "kappa_w_directional")
PER_EXAMPLE = ("weight_rank", "input_rank", "per_example_diversity", "coherence")
BATCHES = ("confusion", "diversity")
METRICS: tuple[str, ...] = WEIGHT_SPACE + HESSIAN + ("kappa_x",) + PER_EXAMPLE + BATCHES


class GradientConditioning:
    """Observer computing ``metrics`` every ``every`` steps (see the module docstring).

    Args:
      module: the model as trained (``build_model(config, classes)``).
      images, labels: a pool of training examples (float32 in [0, 1], int32); the
        observer keeps them on the device, so pass a few thousand at most.
      mean, std: the dataset's normalization constants.
      metrics: names from :data:`METRICS` (default: all).
      every: interval in steps (the thesis samples about twice per epoch).
      bn_mode: per-example BatchNorm semantics, ``'frozen'`` (default) or ``'running'``
        (``'batch'`` (coupled) per-example gradients are available from
        :func:`~jaxnorm.diagnostics.per_example.per_example_grads` but cost b backward
        passes and do not define κ_X).
      batch_size: examples per batch (the thesis: the training batch size, 64).
      num_batches: batches for confusion and diversity (>= 2).
      weight_perturbation: ``'limited_targeted'`` (default, the thesis's choice),
        ``'targeted'`` or ``'random'``.
      num_weight_perturbations: n for κ_W and Def. 4.1 (1 or 2 for limited targeted).
      num_input_perturbations: n for κ_X (<= batch_size).
      input_examples: m, the examples κ_X is averaged over (eq. 3.16; <= batch_size).
        κ_X costs n per-example gradient passes over m examples, the dearest metric.
      eta: perturbation scale η.
      hessian_order: Lanczos steps for ``kappa_w_hessian`` (one HVP each; at most the
        number of parameters).
      mask_fraction: compute on a random ``fraction`` of each parameter leaf's
        coordinates (§1.6; None: all), drawn once here.
      chunk_size: per-example gradients this many at a time.
      weight_decay: the run's λ (gradients of the training objective).
      seed: seeds the batch draws, perturbations and the mask.

    Raises:
      ValueError: unknown metric/mode/perturbation, num_batches < 2 with a batch
        metric, a pool smaller than ``num_batches * batch_size``, or bad sizes.
    """

    name = "conditioning"
    sink = "metrics"

    def __init__(
        self,
        module,
        images,
        labels,
        *,
        mean,
        std,
        metrics: Sequence[str] = METRICS,
        every: int = 50,
        bn_mode: str = "frozen",
        batch_size: int = 64,
        num_batches: int = 4,
        weight_perturbation: str = "limited_targeted",
        num_weight_perturbations: int = 2,
        num_input_perturbations: int = 8,
        input_examples: int = 16,
        eta: float = 1e-3,
        hessian_order: int = 20,
        mask_fraction: Optional[float] = None,
        chunk_size: Optional[int] = None,
        weight_decay: float = 0.0,
        seed: int = 0,
    ):
        metrics = tuple(metrics)
        unknown = sorted(set(metrics) - set(METRICS))
        if unknown or not metrics:
            raise ValueError(f"unknown conditioning metric(s) {unknown or metrics}; known: {list(METRICS)}.")
        check_bn_mode(bn_mode, ("frozen", "running"))
        if weight_perturbation not in PERTURBATIONS:
            raise ValueError(f"unknown weight perturbation {weight_perturbation!r}; known: {sorted(PERTURBATIONS)}.")
        if every < 1 or batch_size < 2 or num_batches < 1:
            raise ValueError(f"need every >= 1, batch_size >= 2, num_batches >= 1; got {every}, {batch_size}, {num_batches}.")
        if num_batches < 2 and set(metrics) & set(BATCHES):
            raise ValueError("confusion and diversity compare batch gradients: num_batches must be >= 2.")
        if not 1 <= num_input_perturbations <= batch_size:
            raise ValueError(f"num_input_perturbations must lie in [1, batch_size={batch_size}], got {num_input_perturbations}.")
        if not eta > 0:
            raise ValueError(f"the perturbation scale eta must be > 0, got {eta}.")
        if not (isinstance(hessian_order, int) and hessian_order >= 1):
            raise ValueError(f"hessian_order must be an integer >= 1, got {hessian_order!r}.")
        max_w = {"limited_targeted": 2, "targeted": batch_size}.get(weight_perturbation)
        if num_weight_perturbations < 1 or (max_w is not None and num_weight_perturbations > max_w):
            raise ValueError(
                f"num_weight_perturbations must lie in [1, {max_w or 'inf'}] for {weight_perturbation!r}, "
                f"got {num_weight_perturbations}."
            )
        if not 1 <= input_examples <= batch_size:
            raise ValueError(f"input_examples must lie in [1, batch_size={batch_size}], got {input_examples}.")
        need = num_batches * batch_size
        if len(labels) < need:
            raise ValueError(f"the pool holds {len(labels)} examples; num_batches * batch_size = {need} are drawn per call.")
        self.module, self.metrics, self.every, self.bn_mode = module, metrics, every, bn_mode
        self.images, self.labels = jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)
        self.mean, self.std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
        self.batch_size, self.num_batches = batch_size, num_batches
        self.weight_perturbation, self.n_w, self.n_x = weight_perturbation, num_weight_perturbations, num_input_perturbations
        self.m_x = input_examples
        self.eta, self.chunk_size, self.weight_decay, self.seed = eta, chunk_size, weight_decay, seed
        self.hessian_order = hessian_order
        self.mask = None
        if mask_fraction is not None:
            shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, train=False), self.images[:1])
            self.mask = random_mask(jax.random.PRNGKey(seed + 1), shapes["params"], mask_fraction)

    def _batches(self, step):
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), step)
        idx = jax.random.permutation(key, len(self.labels))[: self.num_batches * self.batch_size]
        x = normalize(self.images[idx], self.mean, self.std)
        shape = (self.num_batches, self.batch_size)
        return x.reshape(shape + x.shape[1:]), self.labels[idx].reshape(shape), key

    def __call__(self, state) -> dict[str, jax.Array]:
        xs, ys, key = self._batches(state.step)
        x, y = xs[0], ys[0]
        variables, params = state.variables, state.params
        wanted = set(self.metrics)
        out: dict[str, jax.Array] = {}
        k_w, k_x = jax.random.split(key)
        common = dict(chunk_size=self.chunk_size, weight_decay=self.weight_decay)

        need_per_example = wanted & set(PER_EXAMPLE) or (wanted & set(WEIGHT_SPACE) and self.weight_perturbation == "targeted")
        if need_per_example:
            gp, gx = per_example_grads(self.module, variables, x, y, bn_mode=self.bn_mode, wrt="both", **common)
            g = flatten(gp, 1, self.mask)
            for m, fn in {
                "weight_rank": lambda: relative_gradient_rank(g),
                "input_rank": lambda: relative_gradient_rank(gx.reshape(gx.shape[0], -1)),
                "per_example_diversity": lambda: gradient_diversity(g),
                "coherence": lambda: gradient_coherence(g),
            }.items():
                if m in wanted:
                    out[m] = fn()
        if wanted & set(WEIGHT_SPACE + HESSIAN):
            loss = batch_loss_fn(self.module, variables, x, y, bn_mode="batch", weight_decay=self.weight_decay)
        if "kappa_w_hessian" in wanted:
            out["kappa_w_hessian"] = hessian_condition_number(loss, params, order=self.hessian_order).kappa
        if "kappa_w_directional" in wanted:
            out["kappa_w_directional"] = directional_condition_number(loss, params, mask=self.mask)
        if wanted & set(WEIGHT_SPACE):
            omegas = weight_perturbations(
                self.weight_perturbation,
                k_w,
                params,
                self.n_w,
                eta=self.eta,
                per_example=gp if self.weight_perturbation == "targeted" else None,
                mean_grad=jax.grad(loss)(params) if self.weight_perturbation == "limited_targeted" else None,
            )
            ws = weight_space_metrics(loss, params, omegas, mask=self.mask)
            out.update({m: ws[m] for m in WEIGHT_SPACE if m in wanted})
        if "kappa_x" in wanted:
            out["kappa_x"] = input_condition_number(
                self.module, variables, x, y, key=k_x, bn_mode=self.bn_mode, n=self.n_x, m=self.m_x, eta=self.eta, mask=self.mask, **common
            )
        if wanted & set(BATCHES):
            grad_of = lambda xb, yb: jax.grad(batch_loss_fn(self.module, variables, xb, yb, bn_mode="batch", weight_decay=self.weight_decay))(params)
            gb = flatten(map_chunks(lambda b: grad_of(*b), (xs, ys)), 1, self.mask)
            if "confusion" in wanted:
                out["confusion"] = confusion_from_gram(gb @ gb.T)
            if "diversity" in wanted:
                out["diversity"] = gradient_diversity(gb)
        out["n_batches"] = jnp.asarray(self.num_batches, jnp.float32)
        out["batch_size"] = jnp.asarray(self.batch_size, jnp.float32)
        return {m: out[m] for m in (*self.metrics, "n_batches", "batch_size")}
