"""Gradient diagnostics: per-example gradients under BatchNorm, and the gradient
step-consistency and batch-dissonance metrics of the gradient-conditioning thesis (“Gradient Conditioning in Deep Neural Networks”, BYU 2022).

* :mod:`~jaxnorm.diagnostics.per_example` -- ``per_example_grads(module, variables, x, y,
  bn_mode=...)`` with BatchNorm ``'running'``, ``'frozen'`` or ``'batch'`` (coupled); chunking,
  masks, input gradients; ``per_example_gram``/``per_example_sq_norms`` (metrics
  without materializing every gradient); ``batch_loss_fn``/``mean_gradient``.
* :mod:`~jaxnorm.diagnostics.layerwise` -- ``per_example_statistics``: squared norms, Gram,
  per-coordinate second moment and mean of the per-example gradients from each layer's
  inputs and output gradients (Goodfellow 2015; ghost norms), without materializing them.
* :mod:`~jaxnorm.diagnostics.masking` -- ``random_mask`` (§1.6), ``flatten``.
* :mod:`~jaxnorm.diagnostics.step_consistency` -- κ_W (Def. 2.5), perturbation samplers
  (Defs. 2.6, 2.7, random, isotropic random), the Def. 4.1 forms, the SGD-step estimate,
  each perturbation's own terms (``per_perturbation=True``).
* :mod:`~jaxnorm.diagnostics.input_conditioning` -- κ_X (Defs. 3.4, 3.5, eq. 3.16), the
  targeted, uniform and interpolation input samplers (Fig. 3.2), the ``(n, m)`` ratios.
* :mod:`~jaxnorm.diagnostics.effective_rank` -- stable rank, relative gradient rank (Def. 3.7).
* :mod:`~jaxnorm.diagnostics.dissonance` -- confusion (3.11), diversity (3.12), coherence (3.13).
* :mod:`~jaxnorm.diagnostics.step_tracker` -- the in-training κ_W estimate as an optax
  transformation, and its observer ``StepConditioning``.
* :mod:`~jaxnorm.diagnostics.hessian` -- ``hvp`` (forward-over-reverse), ``power_iteration``,
  ``lanczos`` (full reorthogonalization), ``hutchinson_trace``, ``hutchpp_trace`` (Hutch++),
  ``spectral_density`` (SLQ), ``block_loss_fn`` (per-layer blocks), ``hessian_loss_fn`` (BN
  ``'batch'`` or ``'running'``, any loss of :mod:`jaxnorm.objective`); every solver takes
  ``curvature=``, ``loop=`` (``'lax'``/``'host'``, automatic), ``precision=``, ``linearize=``
  and records them (``SolverInfo``).
* :mod:`~jaxnorm.diagnostics.model_curvature` -- one call from a model and a batch, as
  PyHessian users expect: ``top_eigenvalues(module, variables, x, y, k)`` (Lanczos, with each
  pair's residual) and ``hessian_trace(module, variables, x, y)`` (Hutch++ or Hutchinson).
* :mod:`~jaxnorm.diagnostics.curvature` -- the curvature registry ``CURVATURES``
  (``'hessian'``, ``'ggn'`` generalized Gauss-Newton, ``'fisher'`` empirical Fisher),
  ``SplitLoss`` (outputs + per-example loss), ``ggn_vp``, ``fisher_vp``, ``curvature_vp``.
* :mod:`~jaxnorm.diagnostics.hessian_conditioning` -- Def. 2.4's κ = ‖H‖‖w‖/‖g‖ and the
  directional ‖Hĝ‖‖w‖/‖g‖ (``hessian_condition_number``, ``directional_condition_number``),
  the η sweeps of κ_W and κ_X with a plateau verdict (``kappa_w_sweep``, ``kappa_x_sweep``,
  ``plateau``): when the finite-difference κ is a lower bound of Def. 2.4 and when not.
* :mod:`~jaxnorm.diagnostics.sampler_comparison` -- ``SamplerComparison``: every sampler's
  per-draw terms during ``fit`` (Figs. 2.4, 3.2, 4.3);
  :mod:`~jaxnorm.diagnostics.mask_effectiveness` -- metrics on mask coordinates of fixed
  draws (Figs. 2.3-4.2); :mod:`~jaxnorm.diagnostics.lemma_simulation` (Figs. 2.1, 2.2);
  :mod:`~jaxnorm.diagnostics.shattered` (Balduzzi et al.'s 1-D toy, Fig. 3.5);
  :mod:`~jaxnorm.diagnostics.mirrored` -- ``MirroredPairs`` (looks-linear pairs, Fig. 3.11).
* :mod:`~jaxnorm.observers.conditioning` -- ``GradientConditioning``: any subset of the
  metrics every k steps during ``fit``.
* :mod:`~jaxnorm.observers.sharpness` -- ``Sharpness``: the top Hessian eigenvalue every
  k steps during ``fit``, warm-started from the previous eigenvector.
"""

from jaxnorm.diagnostics.dissonance import (
    coherence_from_gram,
    coherence_from_norms,
    diversity_from_norms,
    confusion_from_gram,
    cosine_matrix,
    diversity_from_gram,
    gradient_coherence,
    gradient_confusion,
    gradient_diversity,
)
from jaxnorm.diagnostics.effective_rank import (
    gaussian_stable_rank,
    relative_gradient_rank,
    relative_rank_from_gram,
    stable_rank,
    stable_rank_from_gram,
)
from jaxnorm.diagnostics.curvature import CURVATURES, SplitLoss, curvature_vp, fisher_vp, ggn_vp
from jaxnorm.diagnostics.hessian import (
    SolverInfo,
    TraceResult,
    block_loss_fn,
    flat_hvp,
    hessian_loss_fn,
    hutchinson_trace,
    hutchpp_trace,
    hvp,
    lanczos,
    outlier_ratio,
    power_iteration,
    spectral_density,
    top_eigenpairs,
)
from jaxnorm.diagnostics.hessian_conditioning import (
    HessianConditioning,
    KappaSweep,
    Plateau,
    directional_condition_number,
    hessian_condition_number,
    kappa_w_sweep,
    kappa_x_sweep,
    plateau,
)
from jaxnorm.diagnostics.input_conditioning import input_condition_number, input_perturbations
from jaxnorm.diagnostics.layerwise import PerExampleStats, per_example_statistics, statistics_of_forward
from jaxnorm.diagnostics.model_curvature import TRACE_METHODS, Eigenpairs, hessian_trace, top_eigenvalues
from jaxnorm.diagnostics.masking import GradientMask, flatten, num_coordinates, random_mask
from jaxnorm.diagnostics.per_example import (
    MODES,
    batch_loss_fn,
    frozen_batch_stats,
    mean_gradient,
    per_example_grads,
    per_example_gram,
    per_example_sq_norms,
)
from jaxnorm.diagnostics.step_consistency import (
    PERTURBATIONS,
    kappa_w,
    min_cosine_similarity,
    sgd_step_condition_number,
    weight_gradient_coherence,
    weight_gradient_diversity,
    weight_perturbations,
    weight_space_metrics,
)
from jaxnorm.diagnostics.step_tracker import find_step_conditioning, same_batch_step_conditioning, track_step_conditioning

__all__ = [
    "HessianConditioning",
    "KappaSweep",
    "Plateau",
    "directional_condition_number",
    "hessian_condition_number",
    "kappa_w_sweep",
    "kappa_x_sweep",
    "plateau",
    "top_eigenpairs",
    "top_eigenvalues",
    "hessian_trace",
    "Eigenpairs",
    "TRACE_METHODS",
    "spectral_density",
    "power_iteration",
    "outlier_ratio",
    "lanczos",
    "hvp",
    "hutchinson_trace",
    "hutchpp_trace",
    "SolverInfo",
    "TraceResult",
    "CURVATURES",
    "SplitLoss",
    "curvature_vp",
    "ggn_vp",
    "fisher_vp",
    "hessian_loss_fn",
    "flat_hvp",
    "block_loss_fn",
    "GradientMask",
    "MODES",
    "PerExampleStats",
    "per_example_statistics",
    "statistics_of_forward",
    "PERTURBATIONS",
    "batch_loss_fn",
    "coherence_from_gram",
    "coherence_from_norms",
    "diversity_from_norms",
    "confusion_from_gram",
    "cosine_matrix",
    "diversity_from_gram",
    "find_step_conditioning",
    "same_batch_step_conditioning",
    "flatten",
    "frozen_batch_stats",
    "gaussian_stable_rank",
    "gradient_coherence",
    "gradient_confusion",
    "gradient_diversity",
    "input_condition_number",
    "input_perturbations",
    "kappa_w",
    "mean_gradient",
    "min_cosine_similarity",
    "num_coordinates",
    "per_example_grads",
    "per_example_gram",
    "per_example_sq_norms",
    "random_mask",
    "relative_gradient_rank",
    "relative_rank_from_gram",
    "sgd_step_condition_number",
    "stable_rank",
    "stable_rank_from_gram",
    "track_step_conditioning",
    "weight_gradient_coherence",
    "weight_gradient_diversity",
    "weight_perturbations",
    "weight_space_metrics",
]
