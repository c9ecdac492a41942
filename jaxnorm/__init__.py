"""jaxnorm: a functional JAX/Flax library for studying what normalization does to deep networks.

The public API, in one place:

* :mod:`jaxnorm.norms` -- pure functions with explicit state: ``batch_norm`` (every
  ablation variant, ghost groups, synchronized over a mapped axis), ``BatchStats``,
  ``population_stats``, ``layer_norm``, ``group_norm``, ``instance_norm``,
  ``weight_norm``, ``weight_standardize``, momentum converters.
* :mod:`jaxnorm.layers` -- ``Norm`` (flax module), the norm-name vocabulary ``NORMS``
  (``vanilla``, ``bn``, ``bn_gamma``, ``bn_beta``, ``bn_gamma_beta``, ``layer``,
  ``group``, ``instance``), ``crelu``, activations.
* :mod:`jaxnorm.inits` -- named initializers (Glorot, He, orthogonal, N(0, c/n), looks-linear).
* :mod:`jaxnorm.models` -- ``get_model(name, **kwargs)``: ``3c3d``, ``allcnnc``, ``mlp``,
  ``deep_fc``, ``convnet``.
* :mod:`jaxnorm.data` -- ``load(name, split)`` (tfds CIFAR/MNIST, offline digits),
  on-device batching and augmentation, CIFAR-10-C corruptions.
* :mod:`jaxnorm.modes` -- the BatchNorm-mode vocabulary ``bn_mode`` (``'batch'``,
  ``'running'``, ``'frozen'``) of every function that runs a model.
* :mod:`jaxnorm.objective` -- the training losses by name (``'ce'``, ``'mse'``) and
  the L2 term on weights.
* :mod:`jaxnorm.results` -- a run folder's files (``config.json``, ``metrics.jsonl``, ...)
  with atomic writes, and their readers.
* :mod:`jaxnorm.diagnostics` -- per-example gradients under BatchNorm, gradient
  conditioning and dissonance metrics, Hessian-vector products, Lanczos, SLQ.
* :mod:`jaxnorm.observers` -- measurements taken during training (γ/β, sparsity,
  conditioning, sharpness, probes).
* :mod:`jaxnorm.train` -- ``TrainConfig`` -> ``fit`` / ``fit_many``: the one training
  engine every study runs on (optimizers, schedules, checkpoints, devices).
* :mod:`jaxnorm.study` -- the study protocol (setups -> groups of runs -> an analysis of
  the stored files) and the command line every ``experiments/<study>.py`` shares.
* :mod:`jaxnorm.analysis` -- reads stored runs: tables, statistics, plots.
* :mod:`jaxnorm.adapt` -- test-time BatchNorm adaptation (test-batch statistics, TENT).

Layering (each imports only those before it): norms <- layers <- models; data;
objective, results; diagnostics; observers; train. ``analysis`` reads stored files and
never imports ``train``. ``docs/concepts.md`` explains the BatchNorm modes, run folders
and studies; ``make docs`` builds this reference.
"""

from jaxnorm import adapt, analysis, data, diagnostics, inits, layers, models, norms, objective, observers, results, train
from jaxnorm.inits import get_init
from jaxnorm.layers import ABLATION_VARIANTS, NORMS, Norm, crelu, make_norm
from jaxnorm.models import get_model, model_names
from jaxnorm.norms import (
    BatchStats,
    PopulationAccumulator,
    batch_norm,
    flax_momentum_to_torch,
    group_norm,
    instance_norm,
    layer_norm,
    population_stats,
    torch_momentum_to_flax,
    weight_norm,
    weight_standardize,
)

__version__ = "0.1.0"

__all__ = [
    "ABLATION_VARIANTS",
    "adapt",
    "analysis",
    "data",
    "diagnostics",
    "objective",
    "observers",
    "results",
    "train",
    "BatchStats",
    "NORMS",
    "Norm",
    "PopulationAccumulator",
    "batch_norm",
    "crelu",
    "flax_momentum_to_torch",
    "get_init",
    "get_model",
    "group_norm",
    "inits",
    "instance_norm",
    "layer_norm",
    "layers",
    "make_norm",
    "model_names",
    "models",
    "norms",
    "population_stats",
    "torch_momentum_to_flax",
    "weight_norm",
    "weight_standardize",
]
