"""Edge of stability (Cohen et al., "Gradient Descent on Neural Networks Typically Occurs
at the Edge of Stability", 2021; the lecture "Normalization and Regularization" (CMU Deep
Learning Systems)): full-batch gradient descent on a fixed subset, the Hessian's top
eigenvalue (sharpness) against the 2/η line, with and without BatchNorm -- run until the
sharpness has reached 2/η and stayed there for a window, or to a step cap.

Each (norm, η, seed) is one engine run: ``TrainConfig(full_batch=True, loss='mse',
momentum=0, divergence_factor=100)`` -- plain ``w <- w - η ∇L(w)`` on the first
``subset`` training examples in their stored order, BatchNorm in training mode over the
whole subset. The seeds of one (norm, η) train as one ``fit_many`` program (the programs
of one norm share their compilation: η is optimizer-state data), which ends as soon as
every seed has *settled* -- the median of sharpness / (2/η) over the records of the last
``window`` steps within ``1 ± edge_tol`` (:func:`jaxnorm.analysis.sharpness.settles`,
through :class:`jaxnorm.observers.stopping.StopWhen`) -- or diverged, and at the latest
after ``steps`` steps (the cap). A run that diverges stops being recorded while the
others go on. Observers and measurements:

* :class:`jaxnorm.observers.Sharpness` every ``every`` steps: the largest Ritz value of
  ``lanczos_order`` Lanczos steps (the top *algebraic* eigenvalue, which power
  iteration misses while a negative eigenvalue is larger in magnitude), warm-started
  from the previous top Ritz vector, of the training objective itself (the whole subset
  as one probe batch, MSE, BN on the batch's statistics: ``bn_mode='batch'``);
* the spectral density by stochastic Lanczos quadrature (Ghorbani et al., "An
  Investigation into Neural Net Optimization via Hessian Eigenvalue Density", 2019;
  :class:`jaxnorm.observers.spectrum.SpectralDensity`), whose Ritz values give the
  outlier ratio λ_1/λ_k: at initialization and at the cap (the observer); a program that
  settled before the cap measures its end density from the final state after training
  (``end_spectrum.npz``).

Loss: squared error against one-hot targets (``'mse'``, as in most of Cohen et al.'s
experiments; with cross-entropy on a problem that is memorized, ``--loss ce``, the
sharpness collapses as the loss goes to 0). Cohen et al.: the sharpness rises until it
reaches 2/η and then hovers there while the loss keeps falling non-monotonically -- with
and without BN. A run has diverged once its loss exceeds 100x its first step's loss
(GD past the edge can climb for many steps with a finite loss).

    python -m experiments.sharpness                      # digits, tanh MLP, η in (0.05, 0.1, 0.2), 3 seeds, cap 3000 steps: 4.5 min of CPU time (2 cores)
    python -m experiments.sharpness --quick              # 20 steps, one η, one seed: ~30 s (tests)
    python -m experiments.sharpness --steps 6000 --window 1000 --step-sizes 0.02 0.05 --loss ce
    python -m experiments.sharpness --config cifar10_5k  # Cohen et al.'s fc-tanh on 5k CIFAR-10 images (a GPU; CIFAR-10 prepared)

Results in ``<results>/sharpness/<config>/``: ``study.json``; a run folder
``<norm>_lr<η>_s<seed>/`` per run (``config.json``; ``metrics.jsonl`` with a ``train``
line per sharpness interval (its mean), ``{"kind": "sharpness", "step", "sharpness",
"loss", ...}`` lines, a ``stop_rule`` line at the step the run settled and a
``divergence`` line if it diverged; ``trajectories.npz`` with ``spectrum/{steps, grid,
density, nodes, weights}`` at step 0 and at the cap; ``end_spectrum.npz`` (the same keys and
``step``, at the end of a run that settled before the cap);
``status.json``; checkpoints); ``plots/sharpness.png``, ``plots/density.png`` and
``plots/summary.md`` (:mod:`jaxnorm.analysis.sharpness`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax

from jaxnorm.analysis import sharpness as analysis
from jaxnorm.data import load
from jaxnorm.objective import LOSSES
from jaxnorm.observers import Sharpness, compiled
from jaxnorm.observers.spectrum import SpectralDensity
from jaxnorm.observers.stopping import StopWhen
from jaxnorm.results import read_json, write_npz
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
      steps: the cap: GD steps per run at most; every: sharpness interval;
        lanczos_order: Lanczos steps per measurement.
      window, edge_tol: a run has settled at the edge once the median of
        sharpness / (2/η) over the records of the last ``window`` steps lies within
        ``1 ± edge_tol``; a program ends when all its seeds have (or at the cap). The
        summary's last-window statistics use the same window.
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
    # Measured on digits: neither net sharpens progressively (the sharpness falls slowly
    # after the first steps), so a run below the edge at step ~200 stays below; 3000
    # steps show that trend over five windows.
    steps: int = 3000
    every: int = 20
    lanczos_order: int = 20
    window: int = 500
    edge_tol: float = analysis.EDGE_TOLERANCE
    density_order: int = 60
    density_vectors: int = 4
    density_points: int = 400
    outlier_k: int = 11  # classes + 1: past the ~C outliers of a C-class problem (Papyan 2019)
    divergence_factor: float = 100.0
    eval_every: int = 500
    checkpoint_every: int = 500
    seeds: tuple = (0, 1, 2)

    def __post_init__(self):
        for f in ("norms", "step_sizes", "seeds"):  # command-line lists: the setup is frozen and compared
            object.__setattr__(self, f, tuple(getattr(self, f)))
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; known: {sorted(LOSSES)}.")
        for f in ("subset", "steps", "every", "lanczos_order", "window", "density_order", "density_vectors", "eval_every", "checkpoint_every"):
            if getattr(self, f) < 1:
                raise ValueError(f"SharpnessSetup.{f} must be >= 1, got {getattr(self, f)}.")
        if not self.step_sizes or not self.norms:
            raise ValueError("SharpnessSetup needs at least one step size and one norm.")
        if not all(math.isfinite(lr) and lr > 0 for lr in self.step_sizes):
            raise ValueError(f"SharpnessSetup.step_sizes must be finite and > 0, got {self.step_sizes}.")
        if not 0 < self.edge_tol < 1:
            raise ValueError(f"SharpnessSetup.edge_tol must lie in (0, 1), got {self.edge_tol}.")

    def quick(self) -> "SharpnessSetup":
        """20 steps on 64 examples at the middle η, one seed: shows that everything runs.
        Its window is the whole run (a settling check on two records would stop the run
        on noise); its 8-step Lanczos and order-12 densities are too short for λ_11 (the
        summary says n/a)."""
        return dataclasses.replace(
            self, name=self.name + "-quick", subset=64, steps=20, every=10, window=20, step_sizes=self.step_sizes[1:2],
            lanczos_order=8, density_order=12, density_vectors=2, seeds=(0,),
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
        steps=10000,
        every=25,
        window=1000,
    ),
}


def run_name(norm: str, lr: float, seed: int) -> str:
    return f"{norm}_lr{lr:g}_s{seed}"


class SharpnessStudy:
    name = "sharpness"
    setups = SETUPS
    default = "digits"

    def add_arguments(self, parser) -> None:
        parser.add_argument("--steps", type=int, help="the cap: GD steps per run at most")
        parser.add_argument("--window", type=int, help="steps the sharpness must stay at 2/η (median within ±edge tolerance)")
        parser.add_argument("--edge-tol", dest="edge_tol", type=float, help="the edge band 1 ± tol of sharpness/(2/η) (default 0.1)")
        parser.add_argument("--step-sizes", dest="step_sizes", type=float, nargs="+", help="the step sizes η")
        parser.add_argument("--loss", choices=sorted(LOSSES), help="mse (default) or ce")
        parser.add_argument("--subset", type=int, help="training examples (one full batch)")
        parser.add_argument("--norms", nargs="+", help="the normalizations compared (default: vanilla bn_gamma_beta)")

    def configs(self, setup: SharpnessSetup, norm: str, lr: float, seeds, root) -> tuple[TrainConfig, ...]:
        """The runs of one (norm, η): every seed (one ``fit_many`` program)."""
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
            log_every_steps=setup.every,  # the stop rule is consulted at every sharpness record
            **run_location(root),
        )
        return tuple(base.replace(name=run_name(norm, lr, s), learning_rate=float(lr), seed=s) for s in seeds)

    def probe(self, setup: SharpnessSetup):
        """The training subset as one batch: the Hessian of exactly what GD descends."""
        ds = load(setup.dataset, "train")
        return ds.images[: setup.subset], ds.labels[: setup.subset], ds.mean, ds.std

    def density(self, setup: SharpnessSetup, module, every: int) -> SpectralDensity:
        return SpectralDensity(
            module, *self.probe(setup), every=every, order=setup.density_order, num_vectors=setup.density_vectors,
            num_points=setup.density_points, bn_mode="batch", loss=setup.loss,
        )

    def observers(self, setup: SharpnessSetup, config: TrainConfig) -> list:
        """Sharpness every ``every`` steps, ending the program once every seed has settled
        at 2/η; the density at step 0 and at the cap (a program that ends before the cap
        gets its end density from :meth:`end_density`)."""
        module = build_model(config, load(setup.dataset, "train").num_classes)
        rule = functools.partial(analysis.settles, learning_rate=config.learning_rate, window=setup.window, tol=setup.edge_tol)
        sharp = Sharpness(module, *self.probe(setup), every=setup.every, num_iters=setup.lanczos_order, bn_mode="batch", loss=setup.loss)
        return [StopWhen(sharp, rule), self.density(setup, module, every=setup.steps)]

    def end_density(self, setup: SharpnessSetup, results) -> None:
        """``end_spectrum.npz`` of each run that finished before the cap (it settled): the
        density at its final state (skipped where already written). Only those: at the cap
        the observer has recorded it, with the program's own compilation."""
        todo = [r for r in results if r.status == "finished" and r.step < setup.steps and r.state is not None
                and not (r.run_dir / analysis.END_SPECTRUM).exists()]  # fmt: skip
        if not todo:
            return
        config = TrainConfig.from_dict(read_json(todo[0].run_dir / "config.json"))
        measure = compiled(self.density(setup, build_model(config, load(setup.dataset, "train").num_classes), every=1))
        for r in todo:
            record = jax.device_get(measure(r.state))
            write_npz(r.run_dir / analysis.END_SPECTRUM, {"step": r.step, **{k: v[None] for k, v in record.items()}})

    def groups(self, setup: SharpnessSetup, seeds, root) -> list[RunGroup]:
        out = []
        for norm in setup.norms:
            for lr in setup.step_sizes:
                configs = self.configs(setup, norm, lr, seeds, root)
                out.append(RunGroup(configs, observers=functools.partial(self.observers, setup, configs[0]), after=functools.partial(self.end_density, setup)))
        return out

    def analyze(self, setup: SharpnessSetup, root) -> str:
        return analysis.analyze(root)


STUDY = SharpnessStudy()


def main(argv=None) -> int:
    return study_main(STUDY, argv)


if __name__ == "__main__":
    raise SystemExit(main())
