"""Observers: measurements that :func:`jaxnorm.train.fit` takes every k steps.

The protocol (:mod:`~jaxnorm.observers.protocol`): an observer has a ``name``, an
interval ``every`` and a ``sink`` (``'metrics'``: ``metrics.jsonl`` lines;
``'trajectories'``: arrays in ``trajectories.npz``), and is called with the train state
(stateful observers also with their carry). Observers sit above :mod:`jaxnorm.diagnostics`
(they wrap its functions) and below :mod:`jaxnorm.train` (which calls them); they need
only the state's fields, never the trainer itself.

* ``GammaBetaRecorder`` -- every norm layer's γ/β (source document 001).
* ``ReluSparsity`` -- the fraction of post-norm activations a ReLU zeroes.
* ``GradientConditioning`` -- source document 002's metrics from per-example gradients.
* ``StepConditioning`` -- the in-training κ_W estimate kept by the optimizer.
* ``Sharpness`` -- the top Hessian eigenvalue, warm-started (stateful).
"""

from jaxnorm.observers.conditioning import METRICS, GradientConditioning
from jaxnorm.observers.gamma_beta import GammaBetaRecorder, norm_layers
from jaxnorm.observers.protocol import Observer, is_stateful
from jaxnorm.observers.relu_sparsity import ReluSparsity
from jaxnorm.observers.sharpness import Sharpness
from jaxnorm.observers.step_conditioning import StepConditioning

__all__ = [
    "GammaBetaRecorder",
    "GradientConditioning",
    "METRICS",
    "Observer",
    "ReluSparsity",
    "Sharpness",
    "StepConditioning",
    "is_stateful",
    "norm_layers",
]
