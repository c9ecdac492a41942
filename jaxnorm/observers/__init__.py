"""Observers: measurements that :func:`jaxnorm.train.fit` takes every k steps.

The protocol (:mod:`~jaxnorm.observers.protocol`): an observer has a ``name``, an
interval ``every`` and a ``sink`` (``'metrics'``: ``metrics.jsonl`` lines;
``'trajectories'``: arrays in ``trajectories.npz``), and is called with the train state
(stateful observers also with their carry). Observers sit above :mod:`jaxnorm.diagnostics`
(they wrap its functions) and below :mod:`jaxnorm.train` (which calls them); they need
only the state's fields, never the trainer itself.

* ``GammaBetaRecorder`` -- every norm layer's γ/β (“Dissecting BatchNorm: An Ablation Study on the Core Components”, Tübingen thesis 2023).
* ``ReluSparsity`` -- the fraction of post-norm activations a ReLU zeroes.
* ``GradientConditioning`` -- the metrics of the gradient-conditioning thesis (“Gradient Conditioning in Deep Neural Networks”, BYU 2022) from per-example gradients.
* ``StepConditioning`` -- the in-training κ_W estimate kept by the optimizer (and its same-batch form).
* ``ConditioningSweep`` -- κ_W and κ_X over a grid of step sizes η, with a plateau verdict.
* ``Sharpness`` -- the top Hessian eigenvalue, warm-started (stateful).
* ``SpectralDensity`` -- the Hessian's spectral density (stochastic Lanczos quadrature).
* ``Smoothness`` -- loss-landscape probes along the gradient (Santurkar et al. 2018).
* ``LayerStatistics`` -- per-layer activation RMS, gradient and weight norms.
* ``WeightNorms`` -- ‖W‖ of every kernel, marking the scale-invariant (pre-BN) ones.
* ``BNEvaluation`` -- evaluation with running, population and test-batch statistics.
* ``NormInputs`` -- a norm layer's input on a probe batch (rows vs columns).
* ``Instruments`` -- a Cockpit-style instrument panel (gradient tests, GSNR, norms, distances, Hessian trace and top eigenvalue) in one jitted observer, presets ``economy``/``business``/``full``; ``TrainBatchInstruments`` -- the same panel on the training batch, inside the step, reusing its backward pass.

Each lives in its own module (``jaxnorm.observers.<module>``) with the functions it
wraps (e.g. ``layer_statistics``, ``smoothness_probe``, ``scale_invariant_layers``).
"""

from jaxnorm.observers.bn_evaluation import BNEvaluation
from jaxnorm.observers.conditioning import METRICS, GradientConditioning
from jaxnorm.observers.conditioning_sweep import ConditioningSweep
from jaxnorm.observers.gamma_beta import GammaBetaRecorder, norm_layers
from jaxnorm.observers.instruments import PRESETS as INSTRUMENT_PRESETS, Instruments, TrainBatchInstruments
from jaxnorm.observers.layer_statistics import LayerStatistics, layer_statistics
from jaxnorm.observers.norm_inputs import NormInputs
from jaxnorm.observers.protocol import Observer, compiled, is_stateful
from jaxnorm.observers.relu_sparsity import ReluSparsity
from jaxnorm.observers.sharpness import Sharpness
from jaxnorm.observers.smoothness import Smoothness, smoothness_probe
from jaxnorm.observers.spectrum import SpectralDensity
from jaxnorm.observers.step_conditioning import StepConditioning
from jaxnorm.observers.weight_norms import WeightNorms, scale_invariant_layers

__all__ = [
    "BNEvaluation",
    "GammaBetaRecorder",
    "INSTRUMENT_PRESETS",
    "Instruments",
    "TrainBatchInstruments",
    "LayerStatistics",
    "NormInputs",
    "Smoothness",
    "SpectralDensity",
    "WeightNorms",
    "layer_statistics",
    "scale_invariant_layers",
    "smoothness_probe",
    "ConditioningSweep",
    "GradientConditioning",
    "METRICS",
    "Observer",
    "ReluSparsity",
    "Sharpness",
    "StepConditioning",
    "compiled",
    "is_stateful",
    "norm_layers",
]
