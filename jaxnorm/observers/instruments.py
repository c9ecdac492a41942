"""``Instruments``: a Cockpit-style instrument panel in one jitted observer.

Every ``every`` steps the observer draws one batch from a fixed pool of training examples
(a permutation keyed by ``seed`` and the step, so a resumed run measures the same
batches), computes the per-example gradient statistics it needs in ONE layer-wise pass
(:func:`jaxnorm.diagnostics.per_example_statistics`: no per-example gradient is held),
and writes ``{"kind": "instruments", "step": s, <quantity>: value, ...}`` to
``metrics.jsonl``. Quantities (``g_n`` example n's loss gradient, ``ḡ`` their mean, K
the Gram matrix; definitions in the modules named):

=======================  ===================================================================
``loss``                 mean loss of the observer's batch (one more forward pass; not in the presets)
``grad_norm``            ‖ḡ‖
``update_size``          ‖θ_t − θ_s‖ since the previous observation s (one step's update at ``every=1``)
``distance``             ‖θ_t − θ_0‖ from the parameters training started from (the carry; a resumed run restores it)
``norm_test``            Byrd et al. (2012); :mod:`~jaxnorm.diagnostics.gradient_tests`
``inner_product_test``   Bollapragada et al. (2018)
``orthogonality_test``   Bollapragada et al. (2018)
``coherence``            Def. 3.13 of the gradient-conditioning thesis (:mod:`~jaxnorm.diagnostics.dissonance`)
``per_example_diversity``  Def. 3.12 over the batch's per-example gradients (Yin et al. 2018)
``confusion``            Def. 3.11: minus the most negative pairwise cosine (0 if none is negative)
``relative_rank``        Def. 3.7: stable rank of the per-example gradients over its Gaussian reference
``mean_gsnr``            Liu et al. (2020), needs the per-coordinate second moment
``hessian_trace``        Hutchinson's estimate, ``trace_probes`` Rademacher probes (one vectorized product)
``top_eigenvalue``       power iteration, ``eig_iters`` HVPs unrolled in the observer's program
=======================  ===================================================================

Presets (:data:`PRESETS`, after Cockpit's configurations of the same names; Schneider,
Dangel, Hennig, "Cockpit: A Practical Debugging Tool for the Training of Deep Neural
Networks", NeurIPS 2021): ``economy`` -- everything the squared norms ``‖g_n‖²`` and
projections ``g_nᵀḡ`` give (O(b): the three tests, coherence, diversity) plus the
gradient norm and the parameter distances; ``business`` -- adds what needs the whole
Gram matrix (confusion, relative rank), GSNR (the second moment) and the Hessian trace;
``full`` -- adds the top Hessian eigenvalue. Cockpit's α (a line
search quantity), TIC and the gradient histograms are not included. What each preset
costs is measured in ``experiments/benchmarks/instruments.py`` (BENCHMARKS.md).

Two observers compute them. :class:`TrainBatchInstruments` measures the training batch
inside the training step, reusing the step's forward and backward pass (Cockpit's way,
and the cheap one: models whose examples do not interact). :class:`Instruments`,
described next, measures a batch of its own after the step (any model).

BatchNorm (:class:`Instruments`): the per-example quantities use ``bn_mode`` (``'frozen'``, default: the batch's
statistics as constants -- the per-example gradients are then well defined and the
layer-wise identities exact; or ``'running'``); the Hessian quantities use training's
``'batch'`` mode. The observer measures on its own batch, after the step: it adds a
forward and backward pass of that batch (plus the Hessian products of the larger
presets) to every observed step.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxnorm.data.augmentation import normalize
from jaxnorm.diagnostics.dissonance import coherence_from_norms, confusion_from_gram, diversity_from_norms
from jaxnorm.diagnostics.effective_rank import relative_rank_from_gram
from jaxnorm.diagnostics.gradient_tests import Projections, inner_product_test, mean_gsnr, norm_test, orthogonality_test
from jaxnorm.diagnostics.hessian import hessian_loss_fn, hutchinson_trace, power_iteration
from jaxnorm.diagnostics.layerwise import per_example_statistics
from jaxnorm.diagnostics.masking import num_coordinates
from jaxnorm.modes import check_bn_mode
from jaxnorm.objective import get_loss

# No "loss" in the presets: the training batch's loss is in every "train" line already,
# and the observer batch's costs one more forward pass (ask for it by name). economy needs
# only O(b) statistics (squared norms and projections); business adds the Gram matrix's
# quantities, GSNR and the Hessian trace.
ECONOMY = ("grad_norm", "update_size", "distance", "norm_test", "inner_product_test", "orthogonality_test",
           "coherence", "per_example_diversity")  # fmt: skip
BUSINESS = ECONOMY + ("confusion", "relative_rank", "mean_gsnr", "hessian_trace")
FULL = BUSINESS + ("top_eigenvalue",)
#: Preset name -> quantities, cheapest first.
PRESETS: dict[str, tuple[str, ...]] = {"economy": ECONOMY, "business": BUSINESS, "full": FULL}
QUANTITIES = ("loss",) + FULL

_PROJECTED = {"norm_test", "inner_product_test", "orthogonality_test", "coherence", "per_example_diversity"}
_GRAM = {"confusion", "relative_rank"}
_TESTS = {"norm_test": norm_test, "inner_product_test": inner_product_test, "orthogonality_test": orthogonality_test}


def _norm(tree) -> jax.Array:
    return jnp.linalg.norm(ravel_pytree(tree)[0])


def _diff(a, b):
    return jax.tree.map(jnp.subtract, a, b)


def _quantities(preset, quantities) -> tuple[str, ...]:
    if quantities is None:
        if preset not in PRESETS:
            raise ValueError(f"unknown instrument preset {preset!r}; known: {list(PRESETS)}.")
        quantities = PRESETS[preset]
    quantities = tuple(dict.fromkeys(quantities))
    unknown = sorted(set(quantities) - set(QUANTITIES))
    if unknown or not quantities:
        raise ValueError(f"unknown instrument quantity(ies) {unknown or list(quantities)}; known: {list(QUANTITIES)}.")
    return quantities


def _statistics(want) -> tuple[str, ...]:
    """The per-example statistics the quantities ``want`` need."""
    return ("mean_grad",) + (("sq_norms", "projections") if want & _PROJECTED else ()) + \
        (("gram",) if want & _GRAM else ()) + (("second_moment",) if "mean_gsnr" in want else ())  # fmt: skip


def _panel(want, stats, params, previous, initial, hessian_loss, key, trace_probes, eig_iters) -> dict:
    """The quantities ``want`` from a batch's statistics (both observers' kernel)."""
    out = {}
    if "grad_norm" in want:
        out["grad_norm"] = _norm(stats.mean_grad)
    if "update_size" in want:
        out["update_size"] = _norm(_diff(params, previous))
    if "distance" in want:
        out["distance"] = _norm(_diff(params, initial))
    if want & _PROJECTED:
        pieces = Projections(stats.sq_norms, stats.projections)
        for name, fn in _TESTS.items():
            if name in want:
                out[name] = fn(pieces)
        b = stats.sq_norms.shape[0]
        sum_sq = b * b * jnp.mean(stats.projections)  # ‖Σ g_i‖² = b² ‖ḡ‖²
        if "coherence" in want:
            out["coherence"] = coherence_from_norms(sum_sq, stats.sq_norms)
        if "per_example_diversity" in want:
            out["per_example_diversity"] = diversity_from_norms(sum_sq, stats.sq_norms)
    if "confusion" in want:
        out["confusion"] = confusion_from_gram(stats.gram)
    if "relative_rank" in want:
        out["relative_rank"] = relative_rank_from_gram(stats.gram, num_coordinates(params))
    if "mean_gsnr" in want:
        out["mean_gsnr"] = mean_gsnr(stats.mean_grad, stats.second_moment)
    # Unrolled into this program ('unroll'): a handful of products, and XLA:CPU runs
    # convolutions inside a lax loop several times slower (jaxnorm.diagnostics.hessian).
    if "hessian_trace" in want:
        out["hessian_trace"] = hutchinson_trace(hessian_loss, params, key=key, num_samples=trace_probes,
                                                probes_per_call=trace_probes, loop="unroll").estimate  # fmt: skip
    if "top_eigenvalue" in want:
        out["top_eigenvalue"] = power_iteration(hessian_loss, params, key=key, num_iters=eig_iters, tol=0.0, loop="unroll").eigenvalue
    return out


def _check_counts(every, trace_probes, eig_iters):
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}.")
    if trace_probes < 1 or eig_iters < 1:
        raise ValueError(f"trace_probes and eig_iters must be >= 1, got {trace_probes} and {eig_iters}.")


class Instruments:
    """The instrument-panel observer (module docstring).

    Args:
      module: the model as trained.
      images, labels: the pool of training examples (float32 in [0, 1], int32), kept on
        the device.
      mean, std: the dataset's normalization constants.
      preset: a name of :data:`PRESETS`, or ``quantities`` instead.
      quantities: any subset of :data:`QUANTITIES` (overrides ``preset``).
      every: interval in steps.
      batch_size: examples per measurement (>= 2; Cockpit measures the training batch:
        pass the training batch size).
      bn_mode: per-example BatchNorm semantics, ``'frozen'`` or ``'running'``.
      loss, weight_decay: the run's loss and λ (the gradients are the training objective's).
      trace_probes: Rademacher probes of the Hutchinson trace (``hessian_trace``).
      eig_iters: power-iteration HVPs of ``top_eigenvalue``.
      seed: seeds the batch draws and the probes.

    Raises:
      ValueError: an unknown preset or quantity, a bad ``bn_mode``, ``every < 1``,
        ``batch_size`` outside [2, pool size], ``trace_probes`` or ``eig_iters`` < 1.
    """

    name = "instruments"
    sink = "metrics"

    def __init__(self, module, images, labels, *, mean, std, preset: str = "economy", quantities: Sequence[str] | None = None,
                 every: int = 1, batch_size: int = 128, bn_mode: str = "frozen", loss="ce", weight_decay: float = 0.0,
                 trace_probes: int = 4, eig_iters: int = 10, seed: int = 0):  # fmt: skip
        quantities = _quantities(preset, quantities)
        check_bn_mode(bn_mode, ("frozen", "running"))
        _check_counts(every, trace_probes, eig_iters)
        if not 2 <= batch_size <= len(labels):
            raise ValueError(f"need 2 <= batch_size <= pool size ({len(labels)}), got {batch_size}.")
        get_loss(loss)  # an unknown loss name fails here, not inside the first compiled step
        self.module, self.quantities, self.every, self.bn_mode = module, quantities, every, bn_mode
        self.images, self.labels = jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)
        self.mean, self.std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
        self.batch_size, self.loss, self.weight_decay = batch_size, loss, weight_decay
        self.trace_probes, self.eig_iters, self.seed = trace_probes, eig_iters, seed

    def init_carry(self, state):
        """The parameters the distances are measured from: ``fit`` calls this with the state
        training starts from (θ_0; checkpoints keep the carry, so a resumed run keeps it)."""
        return {"initial": state.params, "previous": state.params}

    def _batch(self, step):
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), step)
        idx = jax.random.permutation(key, len(self.labels))[: self.batch_size]
        return normalize(self.images[idx], self.mean, self.std), self.labels[idx]

    def __call__(self, state, carry):
        want = set(self.quantities)
        x, y = self._batch(state.step)
        stats = per_example_statistics(self.module, state.variables, x, y, bn_mode=self.bn_mode, loss=self.loss,
                                       weight_decay=self.weight_decay, compute=_statistics(want))  # fmt: skip
        hloss = None
        if want & {"hessian_trace", "top_eigenvalue"}:
            hloss = hessian_loss_fn(self.module, state.variables, x, y, bn_mode="batch", weight_decay=self.weight_decay, loss=self.loss)
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed + 1), state.step)
        out = _panel(want, stats, state.params, carry["previous"], carry["initial"], hloss, key, self.trace_probes, self.eig_iters)
        if "loss" in want:
            logits = self.module.apply(state.variables, x, train=False) if self.bn_mode == "running" else \
                self.module.apply(state.variables, x, train=True, mutable=["batch_stats"])[0]
            out["loss"] = jnp.mean(get_loss(self.loss)(logits, y))
        return out, {"initial": carry["initial"], "previous": state.params}


class TrainBatchInstruments:
    """The instrument panel measured on the TRAINING batch, inside the training step, from
    the step's own forward and backward pass -- as Cockpit does
    (:mod:`jaxnorm.observers.protocol`, training-batch observers). The quantities and
    presets are :class:`Instruments`'; the differences:

    * the per-example gradients are those of the step's objective on its batch (its
      augmentation, dropout mask and L2 term), taken at θ_t and filed under step t;
    * ``update_size`` is this step's own update ‖θ_{t+1} − θ_t‖ (at ``every=1``
      Cockpit's ``UpdateSize``), ``distance`` is ‖θ_t − θ_0‖;
    * ``loss`` is the step's objective; ``hessian_trace``/``top_eigenvalue`` are of the
      step's objective on its batch (dropout as drawn);
    * the batch gradient the optimizer applies is computed from the same per-example
      terms (:func:`jaxnorm.diagnostics.statistics_of_forward`): the observed step costs
      about one plain step plus the statistics (BENCHMARKS.md), and its update equals a
      plain step's up to floating-point reassociation.

    Examples must not interact: a model with BatchNorm in batch mode raises a ValueError
    when the step is traced (use :class:`Instruments`, which measures a pool batch with
    frozen statistics).

    Args:
      preset, quantities, every, trace_probes, eig_iters, seed: as :class:`Instruments`.

    Raises:
      ValueError: an unknown preset or quantity, ``every``, ``trace_probes`` or
        ``eig_iters`` < 1.
    """

    name = "instruments"
    sink = "metrics"
    in_step = True

    def __init__(self, *, preset: str = "economy", quantities: Sequence[str] | None = None, every: int = 1,
                 trace_probes: int = 4, eig_iters: int = 10, seed: int = 0):  # fmt: skip
        self.quantities = _quantities(preset, quantities)
        _check_counts(every, trace_probes, eig_iters)
        self.every, self.trace_probes, self.eig_iters, self.seed = every, trace_probes, eig_iters, seed
        self.statistics = _statistics(set(self.quantities))

    def init_carry(self, state):
        """θ_0, the parameters training starts from (checkpoints keep it)."""
        return {"initial": state.params}

    def __call__(self, view, carry):
        want = set(self.quantities)
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed + 1), view.state.step)
        # "previous" = θ_{t+1}: update_size is this step's own update ‖θ_{t+1} − θ_t‖.
        out = _panel(want, view.stats, view.state.params, view.new_state.params, carry["initial"], view.objective, key,
                     self.trace_probes, self.eig_iters)  # fmt: skip
        if "loss" in want:
            out["loss"] = view.loss
        return out, carry
