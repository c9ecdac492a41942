"""``BNEvaluation``: a held-out split evaluated with BatchNorm on three kinds of
statistics during ``fit``.

BatchNorm makes an example's prediction depend on its batch, so at test time it
normalizes with statistics gathered in training. This observer compares, on the same
weights:

* ``running`` -- the running averages the training step keeps (eval mode);
* ``population`` -- exact population statistics, recomputed from the training set at
  the current weights (Ioffe & Szegedy 2015, "Batch Normalization: Accelerating Deep
  Network Training by Reducing Internal Covariate Shift", Alg. 2;
  :func:`jaxnorm.diagnostics.bn_statistics.population_batch_stats`) over batches of the
  training batch size;
* ``batch`` -- each test batch's own statistics (:mod:`jaxnorm.modes` ``'batch'``), at
  several test batch sizes.

It writes ``metrics.jsonl`` lines (``b`` each test batch size)::

    {"kind": "bn_eval", "step": s, "running_loss", "running_acc", "population_loss",
     "population_acc", "batch<b>_loss", "batch<b>_acc", ...,
     "split": ..., "n": ..., "batch<b>_n": ..., "population_batch_size": m,
     "population_examples": ...}

(the last ones are constant annotations: ``n`` examples of the split counted by
``running``/``population``, ``batch<b>_n`` by the test batches of ``b``, whose
incomplete last batch is dropped).

Set ``every`` to the run's number of steps to measure the trained network only (the
observer also runs once before the first step, as every observer does).
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm.data.augmentation import normalize
from jaxnorm.data.splits import seeded_permutation
from jaxnorm.diagnostics.bn_statistics import evaluate_in_mode, population_batch_stats

__all__ = ["BNEvaluation"]


class BNEvaluation:
    """Observer: a split's loss and accuracy with running, population and test-batch
    BatchNorm statistics, every ``every`` steps.

    Args:
      module: the model as trained (``build_model(config, num_classes)``).
      train_images: the training examples for the population statistics (float32 in
        [0, 1], as stored); they are visited in the fixed order
        ``seeded_permutation(n, order_seed)`` (:mod:`jaxnorm.data.splits`), in batches
        of ``population_batch_size``, the incomplete last batch dropped.
      images, labels: the evaluated split (e.g. the test set), kept on the device.
      mean, std: the dataset's normalization constants.
      every: interval in steps.
      population_batch_size: m of Alg. 2: the training batch size.
      test_batch_sizes: the batch sizes of the test-batch evaluation (each >= 2; one
        larger than the split is the whole split); the split is visited in the fixed
        order ``seeded_permutation(len(labels), order_seed + 1)``, so that batches do
        not follow a stored order sorted by class.
      order_seed: the two orders' seed.
      split: the split's name, for the records.
      eval_batch_size: chunk size of the running/population evaluation (memory only).
      loss: a name from :data:`jaxnorm.objective.LOSSES` or a per-example callable.

    Raises:
      ValueError: ``every`` < 1; ``population_batch_size`` not in ``[2, len(train_images)]``;
        a test batch size < 2; an empty split.
    """

    name = "bn_eval"
    sink = "metrics"

    def __init__(
        self,
        module,
        train_images,
        images,
        labels,
        mean,
        std,
        *,
        every: int,
        population_batch_size: int,
        test_batch_sizes: Sequence[int] = (),
        order_seed: int = 0,
        split: str = "test",
        eval_batch_size: int = 500,
        loss: Union[str, Callable] = "ce",
    ):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}.")
        n_train, n = len(train_images), len(labels)
        if n < 1:
            raise ValueError("BNEvaluation needs a non-empty split.")
        if isinstance(population_batch_size, bool) or not isinstance(population_batch_size, int) or not 2 <= population_batch_size <= n_train:
            raise ValueError(f"population_batch_size must be an int in [2, {n_train}] (the training examples), got {population_batch_size!r}.")
        bad = [b for b in test_batch_sizes if isinstance(b, bool) or not isinstance(b, int) or b < 2]
        if bad:
            raise ValueError(f"test batch sizes must be ints >= 2 (BatchNorm needs two values per feature), got {bad}.")
        mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
        prep = lambda a: normalize(jnp.asarray(a, jnp.float32), mean, std)
        self.train_x = prep(np.asarray(train_images)[seeded_permutation(n_train, order_seed)])
        self.x, self.y = prep(images), jnp.asarray(labels, jnp.int32)
        order = seeded_permutation(n, order_seed + 1)
        self.x_shuffled, self.y_shuffled = self.x[order], self.y[order]
        self.module, self.every, self.loss = module, every, loss
        self.population_batch_size, self.eval_batch_size = population_batch_size, eval_batch_size
        self.test_batch_sizes = tuple(sorted({min(b, n) for b in test_batch_sizes}))
        self.annotations = {
            "split": split,
            "n": n,
            "population_batch_size": population_batch_size,
            "population_examples": n_train // population_batch_size * population_batch_size,
            **{f"batch{b}_n": n // b * b for b in self.test_batch_sizes},
        }

    def __call__(self, state) -> dict[str, jax.Array]:
        variables = state.variables
        ev = lambda v, x, y, mode, b: evaluate_in_mode(self.module, v, x, y, bn_mode=mode, batch_size=b, loss=self.loss)
        out = {}
        running = ev(variables, self.x, self.y, "running", self.eval_batch_size)
        stats = population_batch_stats(self.module, variables, self.train_x, batch_size=self.population_batch_size)
        population = ev({**variables, "batch_stats": stats}, self.x, self.y, "running", self.eval_batch_size)
        for method, r in (("running", running), ("population", population)):
            out[f"{method}_loss"], out[f"{method}_acc"] = r["loss"], r["acc"]
        for b in self.test_batch_sizes:
            r = ev(variables, self.x_shuffled, self.y_shuffled, "batch", b)
            out[f"batch{b}_loss"], out[f"batch{b}_acc"] = r["loss"], r["acc"]
        return out
