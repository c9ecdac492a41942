"""Edge of stability (Cohen et al., "Gradient Descent on Neural Networks Typically Occurs
at the Edge of Stability", 2021; the lecture “Normalization and Regularization” (CMU Deep Learning Systems)): full-batch gradient descent on a
fixed subset, the Hessian's top eigenvalue (sharpness) against the 2/η line, with and
without BatchNorm.

Each (norm, η, seed) is one engine run: ``TrainConfig(full_batch=True, loss='mse',
momentum=0, divergence_factor=100)`` -- plain ``w <- w - η ∇L(w)`` on the first
``subset`` training examples in their stored order, BatchNorm in training mode over the
whole subset. The runs of one norm (all η and seeds) train as one ``fit_many`` program
(η is optimizer-state data); a run that diverges stops being recorded while the others
go on. Observers:

* :class:`jaxnorm.observers.Sharpness` every ``every`` steps: the largest Ritz value of
  ``lanczos_order`` Lanczos steps (the top *algebraic* eigenvalue, which power
  iteration misses while a negative eigenvalue is larger in magnitude), warm-started
  from the previous top Ritz vector, of the training objective itself (the whole subset
  as one probe batch, MSE, BN on the batch's statistics: ``bn_mode='batch'``);
* :class:`jaxnorm.observers.spectrum.SpectralDensity` at step 0 and at the last step:
  the spectral density by stochastic Lanczos quadrature (Ghorbani et al., "An
  Investigation into Neural Net Optimization via Hessian Eigenvalue Density", 2019),
  whose Ritz values give the outlier ratio λ_1/λ_k.

Loss: squared error against one-hot targets (``'mse'``, as in most of Cohen et al.'s
experiments; with cross-entropy on a problem that is memorized, ``--loss ce``, the
sharpness collapses as the loss goes to 0). Cohen et al.: the sharpness rises until it
reaches 2/η and then hovers there while the loss keeps falling non-monotonically -- with
and without BN. A run has diverged once its loss exceeds 100x its first step's loss
(GD past the edge can climb for many steps with a finite loss).

    python -m experiments.sharpness                      # digits, tanh MLP, η in (0.05, 0.1, 0.2): ~2.5 min on 2 CPU cores
    python -m experiments.sharpness --quick              # 20 steps, one η: ~30 s (tests)
    python -m experiments.sharpness --steps 4000 --step-sizes 0.02 0.05 --loss ce
    python -m experiments.sharpness --config cifar10_5k  # Cohen et al.'s fc-tanh on 5k CIFAR-10 images (a GPU; CIFAR-10 prepared)
    python -m experiments.sharpness --seeds 0 1 2        # three initializations per (norm, η)

Results in ``<results>/sharpness/<config>/``: ``study.json``; a run folder
``<norm>_lr<η>_s<seed>/`` per run (``config.json``; ``metrics.jsonl`` with a ``train``
line per sharpness interval (its mean), ``{"kind": "sharpness", "step", "sharpness", "loss", ...}`` lines and a
``divergence`` line if it diverged; ``trajectories.npz`` with ``spectrum/{steps, grid,
density, nodes, weights}`` at step 0 and at the end; ``status.json``; checkpoints);
``plots/sharpness.png``, ``plots/density.png`` and ``plots/summary.md``
(:mod:`jaxnorm.analysis.sharpness`).
"""

from __future__ import annotations

import dataclasses
import functools

from jaxnorm.analysis import sharpness as analysis
from jaxnorm.data import load
from jaxnorm.objective import LOSSES
from jaxnorm.observers import Sharpness
from jaxnorm.observers.spectrum import SpectralDensity
from jaxnorm.study import RunGroup, main as study_main, run_location
from jaxnorm.train import TrainConfig, build_model


@dataclasses.dataclass(frozen=True)
class SharpnessSetup:
    """One edge-of-stability study.

    Attributes:
      dataset, subset: the fixed training subset (one full batch).
      model, model_kwargs: the network (``norm`` is set per run).
      loss: ``'mse'`` or ``'ce'`` (:data:`jaxnorm.objective.LOSSES`).
      norms: the normalizations compared; step_sizes: the GD step sizes η.
      steps: GD steps per run; every: sharpness interval; lanczos_order: Lanczos steps
        per measurement.
      density_order, density_vectors, density_points: the spectral density (stochastic
        Lanczos quadrature) at initialization and at the end; outlier_k: the outlier
        ratio λ_1/λ_k (Ghorbani et al. 2019) from the same Lanczos runs, reported when
        ``density_order >= outlier_k + jaxnorm.analysis.sharpness.OUTLIER_MARGIN``.
      divergence_factor: a run has diverged once its loss is non-finite or exceeds this
        multiple of its first step's loss (on a GPU a run reached 2e31 before any NaN).
      eval_every, checkpoint_every: evaluation / checkpoint interval in steps.
      seeds: default initializations (``--seeds`` overrides).
    """

    name: str = "digits"
    dataset: str = "digits"
    subset: int = 1000
    model: str = "mlp"
    model_kwargs: dict = dataclasses.field(
        default_factory=lambda: {"depth": 3, "width": 64, "activation": "tanh", "kernel_init": "glorot_normal"}
    )
    loss: str = "mse"
    norms: tuple = ("vanilla", "bn_gamma_beta")
    step_sizes: tuple = (0.05, 0.1, 0.2)
    steps: int = 2000
    every: int = 10
    lanczos_order: int = 20
    density_order: int = 60
    density_vectors: int = 4
    density_points: int = 400
    outlier_k: int = 11  # classes + 1: past the ~C outliers of a C-class problem (Papyan 2019)
    divergence_factor: float = 100.0
    eval_every: int = 500
    checkpoint_every: int = 500
    seeds: tuple = (0,)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; known: {sorted(LOSSES)}.")
        for f in ("subset", "steps", "every", "lanczos_order", "density_order", "density_vectors", "eval_every", "checkpoint_every"):
            if getattr(self, f) < 1:
                raise ValueError(f"SharpnessSetup.{f} must be >= 1, got {getattr(self, f)}.")
        if not self.step_sizes or not self.norms:
            raise ValueError("SharpnessSetup needs at least one step size and one norm.")

    def quick(self) -> "SharpnessSetup":
        """20 steps on 64 examples at the middle η: shows that everything runs. Its
        8-step Lanczos and order-12 densities are too short for λ_11 (the summary says
        n/a)."""
        return dataclasses.replace(
            self, name=self.name + "-quick", subset=64, steps=20, every=10, step_sizes=self.step_sizes[1:2],
            lanczos_order=8, density_order=12, density_vectors=2,
        )


#: Setups by name. ``cifar10_5k`` is Cohen et al.'s canonical setting (their Fig. 1: a
#: fully connected tanh network, two hidden layers of 200, MSE, on the first 5,000
#: CIFAR-10 training images) for a GPU; the 2/η lines lie at 200, 100 and 50.
SETUPS: dict[str, SharpnessSetup] = {
    "digits": SharpnessSetup(),
    "cifar10_5k": SharpnessSetup(
        name="cifar10_5k",
        dataset="cifar10",
        subset=5000,
        model_kwargs={"depth": 3, "width": 200, "activation": "tanh", "kernel_init": "glorot_normal"},
        step_sizes=(0.01, 0.02, 0.04),
        steps=5000,
        every=25,
    ),
}


def run_name(norm: str, lr: float, seed: int) -> str:
    return f"{norm}_lr{lr:g}_s{seed}"


class SharpnessStudy:
    name = "sharpness"
    setups = SETUPS
    default = "digits"

    def add_arguments(self, parser) -> None:
        parser.add_argument("--steps", type=int, help="GD steps per run")
        parser.add_argument("--step-sizes", dest="step_sizes", type=float, nargs="+", help="the step sizes η")
        parser.add_argument("--loss", choices=sorted(LOSSES), help="mse (default) or ce")
        parser.add_argument("--subset", type=int, help="training examples (one full batch)")
        parser.add_argument("--norms", nargs="+", help="the normalizations compared (default: vanilla bn_gamma_beta)")

    def configs(self, setup: SharpnessSetup, norm: str, seeds, root) -> tuple[TrainConfig, ...]:
        """The runs of one norm: every η and seed (one ``fit_many`` program)."""
        base = TrainConfig(
            dataset=setup.dataset,
            model=setup.model,
            model_kwargs=dict(setup.model_kwargs),
            norm=norm,
            loss=setup.loss,
            full_batch=True,
            epochs=setup.steps,  # full batch: an epoch is one step
            momentum=0.0,
            divergence_factor=setup.divergence_factor,
            train_subset=setup.subset,
            eval_subset=setup.subset,
            eval_every_epochs=setup.eval_every,
            checkpoint_every_epochs=setup.checkpoint_every,
            log_every_steps=setup.every,
            **run_location(root),
        )
        return tuple(base.replace(name=run_name(norm, lr, s), learning_rate=float(lr), seed=s) for lr in setup.step_sizes for s in seeds)

    def observers(self, setup: SharpnessSetup, config: TrainConfig) -> list:
        """Sharpness every ``every`` steps and the density at step 0 and at the end, both
        on the training subset as one batch: the Hessian of exactly what GD descends."""
        ds = load(setup.dataset, "train")
        probe = (ds.images[: setup.subset], ds.labels[: setup.subset], ds.mean, ds.std)
        module = build_model(config, ds.num_classes)
        return [
            Sharpness(module, *probe, every=setup.every, num_iters=setup.lanczos_order, bn_mode="batch", loss=setup.loss),
            SpectralDensity(
                module, *probe, every=setup.steps, order=setup.density_order, num_vectors=setup.density_vectors,
                num_points=setup.density_points, bn_mode="batch", loss=setup.loss,
            ),
        ]

    def groups(self, setup: SharpnessSetup, seeds, root) -> list[RunGroup]:
        out = []
        for norm in setup.norms:
            configs = self.configs(setup, norm, seeds, root)
            out.append(RunGroup(configs, observers=functools.partial(self.observers, setup, configs[0])))
        return out

    def analyze(self, setup: SharpnessSetup, root) -> str:
        return analysis.analyze(root)


STUDY = SharpnessStudy()


def main(argv=None) -> int:
    return study_main(STUDY, argv)


if __name__ == "__main__":
    raise SystemExit(main())
