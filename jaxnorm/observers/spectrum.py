"""``SpectralDensity``: the Hessian's eigenvalue density on a fixed probe set during ``fit``.

The density comes from stochastic Lanczos quadrature
(:func:`jaxnorm.diagnostics.spectral_density`; Ghorbani, Krishnan and Xiao, "An
Investigation into Neural Net Optimization via Hessian Eigenvalue Density", 2019): for
each of ``num_vectors`` Gaussian start vectors, ``order`` Lanczos steps give Ritz values
θ_j (the *nodes*) and weights τ_j (the squared first components of the tridiagonal
matrix's eigenvectors, summing to 1 per vector), and the density is the average of
``Σ_j τ_j N(t; θ_j, σ²)`` on a grid. The observer writes to ``trajectories.npz``
(sink ``'trajectories'``), stacked over the steps it was called at::

    spectrum/steps    (T,)                    the steps
    spectrum/grid     (T, num_points)         the points t
    spectrum/density  (T, num_points)         the density at t (integrates to ~1)
    spectrum/nodes    (T, num_vectors, order) Ritz values θ_j (ascending per vector)
    spectrum/weights  (T, num_vectors, order) quadrature weights τ_j

Typical use: ``every`` = the run's total steps, so the density is recorded at
initialization (step 0, before the first update) and at the end. The start vectors are
the same at every call (``seed``), so two densities of one run differ only by the
weights.

Every node lies in ``[λ_min, λ_max]`` of the Hessian (Cauchy interlacing), and the k-th
largest node of one vector is at most λ_k; the extreme nodes converge to the extreme
eigenvalues first, interior ones only when ``order`` is well above their rank. So the
top-k nodes of one vector estimate the top-k eigenvalues (e.g. the outlier ratio
λ_1/λ_k) only for k well below ``order``.

BatchNorm and the loss as in :class:`jaxnorm.observers.Sharpness`: ``bn_mode='batch'``
(default; batch statistics of each probe batch, differentiated through: the Hessian of
the objective training descends) or ``'running'``; the probe set is split into
``len(labels) // batch_size`` batches (default: one batch of all of it) and the loss is
their average, as :func:`~jaxnorm.diagnostics.hessian.hessian_loss_fn` defines it.
"""

from __future__ import annotations

from typing import Optional

import jax

from jaxnorm.observers.probe import probe_batches
from jaxnorm.diagnostics.curvature import check_curvature
from jaxnorm.diagnostics.hessian import BN_MODES, hessian_loss_fn, spectral_density
from jaxnorm.modes import check_bn_mode

__all__ = ["SpectralDensity"]


class SpectralDensity:
    """Observer: the Hessian's SLQ eigenvalue density on a fixed probe set every
    ``every`` steps (and before the first step).

    Args:
      module: the model as trained (``build_model(config, classes)``).
      images, labels: the probe set (float32 in [0, 1], int32), kept on the device.
      mean, std: the dataset's normalization constants.
      every: interval in steps (the run's total steps: at initialization and at the end).
      batch_size: probe batch size (default: all examples in one batch, the full-batch
        objective); the probe set is cut to a multiple of it.
      order: Lanczos steps per start vector (at most the number of parameters; checked
        when the observer first runs, where that number is known).
      num_vectors: Gaussian start vectors averaged over.
      num_points: grid points of the density.
      sigma: the Gaussian width (default: 1% of the nodes' spread, see
        :func:`~jaxnorm.diagnostics.spectral_density`).
      bn_mode: ``'batch'`` (default) or ``'running'`` (:mod:`jaxnorm.modes`).
      loss: a name from :data:`jaxnorm.objective.LOSSES` (default ``'ce'``) or a
        per-example callable.
      weight_decay: λ of the training loss's ``0.5·λ·Σ‖W‖²`` (kernels).
      curvature: the matrix whose density is estimated, a name of
        :data:`jaxnorm.diagnostics.curvature.CURVATURES` (``'hessian'``, default; ``'ggn'``,
        the Gauss-Newton matrix; ``'fisher'``, the empirical Fisher).
      seed: the key of the start vectors (the same at every call).
      name: the record's name in ``trajectories.npz`` (default ``'spectrum'``).

    Raises:
      ValueError: ``every``, ``order``, ``num_vectors`` or ``num_points`` < 1, a
        non-positive ``sigma``, an unknown BN mode or curvature, a probe batch outside
        ``[2, len(labels)]``; at the first call, an ``order`` above the number of
        parameters.
    """

    sink = "trajectories"

    def __init__(
        self,
        module,
        images,
        labels,
        mean,
        std,
        *,
        every: int,
        batch_size: Optional[int] = None,
        order: int = 90,
        num_vectors: int = 5,
        num_points: int = 400,
        sigma: Optional[float] = None,
        bn_mode: str = "batch",
        loss="ce",
        weight_decay: float = 0.0,
        curvature: str = "hessian",
        seed: int = 0,
        name: str = "spectrum",
    ):
        check_bn_mode(bn_mode, BN_MODES)
        check_curvature(curvature)
        for what, v in (("every", every), ("order", order), ("num_vectors", num_vectors), ("num_points", num_points)):
            if v < 1:
                raise ValueError(f"SpectralDensity: {what} must be >= 1, got {v}.")
        if sigma is not None and not sigma > 0:
            raise ValueError(f"SpectralDensity: sigma must be > 0 or None, got {sigma}.")
        # (k, b, ...): hessian_loss_fn averages the batches' losses, as Sharpness does.
        self.x, self.y = probe_batches(images, labels, mean, std, batch_size, what="SpectralDensity: batch_size")
        self.module, self.every, self.name = module, every, name
        self.order, self.num_vectors, self.num_points, self.sigma = order, num_vectors, num_points, sigma
        self.bn_mode, self.loss, self.weight_decay, self.seed = bn_mode, loss, weight_decay, seed
        self.curvature = curvature

    def __call__(self, state) -> dict[str, jax.Array]:
        loss = hessian_loss_fn(self.module, state.variables, self.x, self.y, bn_mode=self.bn_mode, weight_decay=self.weight_decay, loss=self.loss)
        out = spectral_density(
            loss,
            state.params,
            key=jax.random.PRNGKey(self.seed),
            order=self.order,
            num_vectors=self.num_vectors,
            num_points=self.num_points,
            sigma=self.sigma,
            curvature=self.curvature,
        )
        out.pop("info")  # a SolverInfo (not an array): the record holds the arrays only
        return out
