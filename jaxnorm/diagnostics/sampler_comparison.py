"""Perturbation samplers compared: the terms of κ_W, the minimum cosine and κ_X for every
sampler on the same batch, as an observer of training (“Gradient Conditioning in Deep
Neural Networks”, BYU thesis 2022, Figs. 2.4, 3.2 and 4.3).

The thesis draws 64 perturbation directions with each sampling method during the
training of an 11-layer ConvNet with normalization (no skip connections) and
bootstraps the expected maximum over 16 of them. :class:`SamplerComparison` records,
every ``every`` steps and for one batch drawn from a fixed pool, each draw's own term
(:mod:`jaxnorm.analysis.samplers` does the bootstrap from the stored terms):

* weight space, for each sampler of
  :data:`~jaxnorm.diagnostics.step_consistency.PERTURBATIONS` asked for: the ``(n,)``
  ratios ``‖ḡ(w + ω_k) − ḡ(w)‖·‖w‖ / (‖ω_k‖·‖ḡ(w)‖)`` (their max is κ_W, Def. 2.5) and
  cosines ``cos(ḡ(w + ω_k), ḡ(w))`` (their min is Def. 4.1's eq. 4.1), with ḡ the
  batch gradient of training (BatchNorm on the batch's statistics). ``'limited_targeted'``
  has only the two directions ±ḡ/‖ḡ‖_∞ (Def. 2.7), so it records 2 terms, not n;
* input space, for each sampler of
  :data:`~jaxnorm.diagnostics.input_conditioning.INPUT_PERTURBATIONS` asked for: the
  ``(n, m)`` terms of eq. 3.16 over the first m examples (per-example gradients with the
  batch's statistics frozen).

Records go to ``trajectories.npz`` as ``samplers/w_ratio.<sampler>``,
``samplers/w_cosine.<sampler>`` and ``samplers/x_ratio.<sampler>`` (stacked over the
observation steps, ``samplers/steps``). Draws are keyed by the run's own key and the step,
so seeds are independent replicates and a resumed run draws the same directions.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxnorm.data.augmentation import normalize
from jaxnorm.diagnostics.input_conditioning import INPUT_PERTURBATIONS, input_condition_number, input_perturbation_samples
from jaxnorm.diagnostics.per_example import batch_loss_fn, per_example_grads
from jaxnorm.diagnostics.step_consistency import DEFAULT_ETA, PERTURBATIONS, weight_perturbations, weight_space_metrics

__all__ = ["SamplerComparison"]


class SamplerComparison:
    """Observer recording every sampler's per-draw terms (module docstring).

    Args:
      module: the model as trained.
      images, labels: the pool of training examples (float32 in [0, 1], int32) batches
        are drawn from; mean, std: the dataset's normalization.
      every: interval in steps.
      batch_size: examples per batch (b; the thesis: 64).
      n: draws per sampler (the thesis: 64; <= b for the targeted samplers).
      m: examples κ_X's terms are taken over (<= b).
      weight_samplers, input_samplers: names of the two registries (empty: skip that space).
      eta: the perturbation scale η (the thesis: 0.001).
      input_chunk: κ_X draws evaluated per loop iteration (divides n): on a CPU each
        iteration is unrolled into straight-line code, so a few iterations of a few
        draws compile far faster than n unrolled draws.

    Raises:
      ValueError: unknown sampler names, sizes out of range, a pool smaller than b.
    """

    name = "samplers"
    sink = "trajectories"

    def __init__(self, module, images, labels, *, mean, std, every: int, batch_size: int = 64, n: int = 64, m: int = 16,
                 weight_samplers: Sequence[str] = ("targeted", "limited_targeted", "random", "random_isotropic"),
                 input_samplers: Sequence[str] = tuple(INPUT_PERTURBATIONS), eta: float = DEFAULT_ETA,
                 input_chunk: int = 8):  # fmt: skip
        for given, known, what in ((weight_samplers, PERTURBATIONS, "weight"), (input_samplers, INPUT_PERTURBATIONS, "input")):
            unknown = sorted(set(given) - set(known))
            if unknown:
                raise ValueError(f"unknown {what} sampler(s) {unknown}; known: {sorted(known)}.")
        if not weight_samplers and not input_samplers:
            raise ValueError("need at least one weight or input sampler.")
        if every < 1 or not 2 <= batch_size <= len(labels):
            raise ValueError(f"need every >= 1 and 2 <= batch_size <= pool size {len(labels)}; got {every}, {batch_size}.")
        if not 1 <= n <= batch_size or not 1 <= m <= batch_size:
            raise ValueError(f"n and m must lie in [1, batch_size={batch_size}]; got n={n}, m={m}.")
        if input_chunk < 1 or n % input_chunk:
            raise ValueError(f"input_chunk must divide n={n}, got {input_chunk}.")
        if not eta > 0:
            raise ValueError(f"the perturbation scale eta must be > 0, got {eta}.")
        self.module, self.every, self.batch_size, self.n, self.m, self.eta = module, every, batch_size, n, m, eta
        self.weight_samplers, self.input_samplers, self.input_chunk = tuple(weight_samplers), tuple(input_samplers), input_chunk
        self.images, self.labels = jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)
        self.mean, self.std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

    def __call__(self, state) -> dict[str, jax.Array]:
        key = jax.random.fold_in(state.rng, state.step)
        k_batch, k_w, k_x = jax.random.split(key, 3)
        idx = jax.random.permutation(k_batch, len(self.labels))[: self.batch_size]
        x, y = normalize(self.images[idx], self.mean, self.std), self.labels[idx]
        variables, params = state.variables, state.params
        gp, gx = per_example_grads(self.module, variables, x, y, bn_mode="frozen", wrt="both")
        out: dict[str, jax.Array] = {}
        # Every sampler's draws go through one vmapped gradient (weights) and one loop
        # (inputs): one compiled program for all samplers instead of one per sampler.
        if self.weight_samplers:
            loss = batch_loss_fn(self.module, variables, x, y, bn_mode="batch")
            mean_grad = jax.grad(loss)(params)
            drawn = [
                weight_perturbations(kind, jax.random.fold_in(k_w, i), params, 2 if kind == "limited_targeted" else self.n,
                                     eta=self.eta, per_example=gp, mean_grad=mean_grad)  # Def. 2.7: only ±ḡ/‖ḡ‖_∞
                for i, kind in enumerate(self.weight_samplers)
            ]  # fmt: skip
            sizes = [jax.tree.leaves(d)[0].shape[0] for d in drawn]
            terms = weight_space_metrics(loss, params, jax.tree.map(lambda *a: jnp.concatenate(a), *drawn), per_perturbation=True)
            start = 0
            for kind, size in zip(self.weight_samplers, sizes):
                out[f"w_ratio.{kind}"] = terms["ratio"][start : start + size]
                out[f"w_cosine.{kind}"] = terms["cosine"][start : start + size]
                start += size
        if self.input_samplers:
            shape = (self.n, self.m) + x.shape[1:]
            drawn = [input_perturbation_samples(kind, jax.random.fold_in(k_x, i), x, self.n, eta=self.eta, m=self.m, input_grads=gx)
                     for i, kind in enumerate(self.input_samplers)]  # fmt: skip
            # Shared draws (n, ...) as per-example ones (n, m, ...), to share one loop.
            deltas = jnp.concatenate([d if d.shape == shape else jnp.broadcast_to(d[:, None], shape) for d in drawn])
            chunks = deltas.reshape((-1, self.input_chunk) + shape[1:])
            terms = jax.lax.map(
                lambda d: input_condition_number(self.module, variables, x, y, key=k_x, bn_mode="frozen", m=self.m,
                                                 perturbations=d, ratios=True), chunks)  # fmt: skip
            terms = terms.reshape((len(self.input_samplers), self.n, self.m))
            for i, kind in enumerate(self.input_samplers):
                out[f"x_ratio.{kind}"] = terms[i]
        return out
