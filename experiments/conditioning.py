"""The gradient-conditioning study (“Gradient Conditioning in Deep Neural Networks”, BYU
thesis 2022): metrics throughout training of deep nets with and without BatchNorm, and
what they cost.

Every architecture x norm x depth of a setup, its seeds as one ``fit_many`` program, with
``track_step_conditioning`` and three observers: ``GradientConditioning`` (every metric of
``jaxnorm.diagnostics`` about twice per epoch on batches from the first ``pool_size``
training examples), ``StepConditioning`` (κ_W of the SGD step itself, consecutive- and
same-batch) and ``ConditioningSweep`` (κ_W, κ_X over an η grid). Each run's ``after``
step times every metric on the final state (``jaxnorm.observers.costs``) into
``costs.json`` (kept on a rerun); then plots and ``summary.md``
(``jaxnorm.analysis.conditioning``).

Architectures (:data:`ARCHITECTURES`): ``ortho_relu`` / ``ortho_crelu`` (``deep_fc``,
orthogonal init, ReLU / CReLU), ``looks_linear`` (``deep_fc``, CReLU with mirrored
blocks, Def. 3.9), ``convnet`` and ``resnet`` (``convnet`` without / with identity skips);
norms ``vanilla`` and ``bn_gamma_beta``; depths = weight layers.

    python -m experiments.conditioning                     # digits (configs/conditioning_digits.py): 8 configurations x 3 seeds
    python -m experiments.conditioning --config digits_full   # every architecture at depths 4 and 11: 60 runs
    python -m experiments.conditioning --depth 26          # add depths (to the setup's deep_architectures)
    python -m experiments.conditioning --config cifar10    # the thesis's setup (GPU; CIFAR-10 prepared for tfds)
    python -m experiments.conditioning --config cifar10 --shard 2/4   # one SLURM array task of four
    python -m experiments.conditioning --quick             # 8 steps, 2 architectures, tiny widths, 2 metrics, 1 seed
    python -m experiments.conditioning --plot-only         # plots + summary.md from the stored files

Results: ``<results>/conditioning/<setup>[-quick]/<arch>-<norm>-d<depth>[_s<seed>]/``
(``config.json``, ``metrics.jsonl`` with ``train``, ``eval``, ``conditioning``,
``step_conditioning`` lines, ``status.json``, the final checkpoint, ``costs.json``); the
study's ``costs.json`` (metric -> ``[{run, params, seconds}]``) and ``plots/``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import pathlib
from typing import Callable, Mapping, Optional, Sequence

import jaxnorm.study
from experiments.configs import conditioning_cifar10, conditioning_digits
from jaxnorm.analysis.conditioning import analyze_conditioning
from jaxnorm.observers import METRICS, GradientConditioning, StepConditioning
from jaxnorm.observers.conditioning_sweep import DEFAULT_ETAS, ConditioningSweep
from jaxnorm.observers.costs import conditioning_costs
from jaxnorm.results import write_json
from jaxnorm.study import RunGroup, positive_int
from jaxnorm.train import TrainConfig, build_model


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One architecture family: the registered ``model``, a ``label``, and
    ``options(depth, setup) -> model_kwargs``."""

    model: str
    label: str
    options: Callable[[int, "ConditioningSetup"], dict]


def conv_stages(depth: int, max_stages: int) -> int:
    """Resolution stages of a ConvNet of ``depth`` weight layers: at most ``max_stages``,
    and at least two body layers per stage, so a residual net's stages hold a residual
    block (depth 4: one stage, one block; depth 11: three stages of three layers)."""
    return max(1, min(max_stages, (depth - 2) // 2))


def _fc(activation: str, kernel_init: str):
    return lambda depth, s: {"depth": depth, "width": s.fc_width, "activation": activation, "kernel_init": kernel_init}


def _conv(residual: bool):
    return lambda depth, s: {"depth": depth, "width": s.conv_width, "residual": residual, "stages": conv_stages(depth, s.conv_stages)}


ARCHITECTURES: dict[str, Architecture] = {
    "ortho_relu": Architecture("deep_fc", "fully connected, orthogonal init, ReLU", _fc("relu", "orthogonal")),
    "ortho_crelu": Architecture("deep_fc", "fully connected, orthogonal init, CReLU", _fc("crelu", "orthogonal")),
    "looks_linear": Architecture("deep_fc", "fully connected, looks-linear init, CReLU (Def. 3.9)", _fc("crelu", "looks_linear")),
    "convnet": Architecture("convnet", "ConvNet, no skip connections", _conv(False)),
    "resnet": Architecture("convnet", "ConvNet with identity skips (residual)", _conv(True)),
}
NORMS = ("vanilla", "bn_gamma_beta")
#: What ``--quick`` keeps (explicit flags win): architectures, depths, widths (FC, conv), metrics.
QUICK = {"architectures": ("ortho_relu", "resnet"), "depths": (4,), "widths": (16, 4), "metrics": ("kappa_w", "confusion")}
_TUPLES = ("architectures", "deep_architectures", "norms", "depths", "add_depths", "metrics", "cost_norms", "cost_seeds", "seeds", "etas")


@dataclasses.dataclass(frozen=True)
class ConditioningSetup:
    """A gradient-conditioning study, as code (fields from ``experiments/configs/conditioning_*.py``).

    Attributes:
      name: results under ``<results>/conditioning/<name>/``.
      base: what every run shares (dataset, optimizer, schedule, epochs, logging);
        ``model``, ``model_kwargs``, ``norm``, ``tag`` (= the architecture), ``seed``,
        ``name``, ``study`` and ``results_dir`` are set per run.
      architectures, norms, depths: the grid; ``add_depths`` are appended to ``depths``.
      deep_architectures: the architectures trained at every depth; the others at the
        smallest depth only (None: every architecture at every depth).
      fc_width, conv_width, conv_stages: the models' widths; at most this many ConvNet stages.
      metrics: :data:`jaxnorm.observers.METRICS` names to record and time (None: all).
      samples_per_epoch: conditioning samples per epoch (the thesis: about two);
        ``every``: a fixed interval in steps instead.
      step_every: the ``StepConditioning`` interval (None: ``base.log_every_steps``).
      pool_size: the observer draws its batches from the first this many training examples.
      conditioning: further ``GradientConditioning`` options (``batch_size``, ``num_batches``, ...).
      cost_repeats: timed calls per metric after a compile call (0: no timing); only in
        runs of ``cost_norms`` and ``cost_seeds`` (None: every run).
      etas, sweep_every: the ``ConditioningSweep`` grid (empty: none) and its interval in
        conditioning samples (it costs about all other metrics together).
      same_batch: the ``StepConditioning`` also measures the same-batch κ of the step.
      seeds: default training seeds (the metrics' batches do not depend on it: seeds pair).
      is_quick, quick_steps, quick_subset: ``--quick`` trains ``quick_steps`` steps on
        ``quick_subset`` examples.
    """

    name: str
    base: TrainConfig
    architectures: tuple = tuple(ARCHITECTURES)
    deep_architectures: Optional[tuple] = None
    norms: tuple = NORMS
    depths: tuple = (4, 11)
    add_depths: tuple = ()
    fc_width: int = 128
    conv_width: int = 16
    conv_stages: int = 3
    metrics: Optional[tuple] = None
    samples_per_epoch: int = 2
    every: Optional[int] = None
    step_every: Optional[int] = None
    pool_size: int = 1024
    conditioning: Mapping = dataclasses.field(default_factory=lambda: {"batch_size": 64, "num_batches": 4})
    cost_repeats: int = 5
    cost_norms: Optional[tuple] = None
    cost_seeds: Optional[tuple] = None
    etas: tuple = DEFAULT_ETAS
    sweep_every: int = 4
    same_batch: bool = True
    seeds: tuple = (0,)
    is_quick: bool = False
    quick_steps: int = 8
    quick_subset: int = 512

    def __post_init__(self):
        for f in _TUPLES:  # argparse hands lists
            if getattr(self, f) is not None:
                object.__setattr__(self, f, tuple(getattr(self, f)))
        from jaxnorm.layers import NORMS as known_norms

        for what, given, known in (("architecture", self.architectures, ARCHITECTURES), ("norm", self.norms, known_norms),
                                   ("deep architecture", self.deep_architectures or self.architectures, ARCHITECTURES),
                                   ("metric", self.metrics or METRICS, METRICS)):  # fmt: skip
            unknown = sorted(set(given) - set(known))
            if unknown or not given:
                raise ValueError(f"unknown {what}(s) {unknown or list(given)}; known: {sorted(known)}.")
        if not self.depths or any(d < 2 for d in self.all_depths):
            raise ValueError(f"depths count weight layers and must be >= 2, got {self.all_depths}.")
        if self.cost_repeats < 0 or self.quick_steps < 1 or self.quick_subset < 2 or self.sweep_every < 1:
            raise ValueError("cost_repeats must be >= 0, quick_steps >= 1, quick_subset >= 2 and sweep_every >= 1.")

    @property
    def all_depths(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.depths) | set(self.add_depths)))

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(self.metrics) if self.metrics is not None else METRICS

    def quick(self) -> "ConditioningSetup":
        """A smoke version under ``<name>-quick`` (:data:`QUICK`): one seed, a few timed
        calls, no η sweep (its compile would double the smoke run)."""
        fc, conv = QUICK["widths"]
        return dataclasses.replace(
            self, name=f"{self.name}-quick", is_quick=True, depths=QUICK["depths"], fc_width=fc, conv_width=conv,
            architectures=tuple(a for a in self.architectures if a in QUICK["architectures"]) or self.architectures[:1],
            metrics=tuple(m for m in self.metric_names if m in QUICK["metrics"]) or self.metric_names[:1],
            cost_repeats=min(self.cost_repeats, 2), cost_norms=None, cost_seeds=None, every=None, etas=(), samples_per_epoch=2,
            seeds=(0,), deep_architectures=None,
        )  # fmt: skip

    def run_config(self, arch: str, norm: str, depth: int, seed: int = 0, results: str = "results") -> TrainConfig:
        """The TrainConfig of run ``<arch>-<norm>-d<depth>[_s<seed>]``."""
        base = self.base
        if self.is_quick:  # the final checkpoint stays: a rerun restores it instead of retraining
            base = base.quick(steps=self.quick_steps, subset=self.quick_subset).replace(log_every_steps=1, checkpoint_every_epochs=1)
        a = ARCHITECTURES[arch]
        return base.replace(
            model=a.model, model_kwargs=a.options(depth, self), norm=norm, tag=arch, seed=seed, track_step_conditioning=True,
            name=f"{arch}-{norm}-d{depth}" + (f"_s{seed}" if seed else ""), study=f"conditioning/{self.name}", results_dir=str(results),
        )  # fmt: skip

    def jobs(self, seeds: Sequence[int] = (0,), results: str = "results") -> list[TrainConfig]:
        """Every run's config: architecture-major, then norm, depth, seed (the
        architectures outside ``deep_architectures`` at the smallest depth only)."""
        grid = itertools.product(self.architectures, self.norms, self.all_depths, seeds)
        deep = self.deep_architectures
        keep = lambda a, d: deep is None or a in deep or d == self.all_depths[0]
        return [self.run_config(a, n, d, s, results) for a, n, d, s in grid if keep(a, d)]


SETUPS = {
    "digits": ConditioningSetup(name="digits", **conditioning_digits.get_config()),
    "digits_full": ConditioningSetup(name="digits_full", **conditioning_digits.get_full_config()),
    "cifar10": ConditioningSetup(name="cifar10", **conditioning_cifar10.get_config()),
}


def conditioning_observer(setup: ConditioningSetup, config: TrainConfig) -> GradientConditioning:
    """The run's ``GradientConditioning``: its model, the first ``pool_size`` training
    examples, about ``samples_per_epoch`` samples per epoch (or every ``setup.every`` steps)."""
    from jaxnorm.data import load, steps_per_epoch

    train = load(config.dataset, config.train_split)
    n = min(len(train.labels), config.train_subset or len(train.labels))
    pool = min(setup.pool_size, n)
    options = dict(setup.conditioning)
    num_batches = options.pop("num_batches", 4)
    batch = min(options.pop("batch_size", 64), pool // num_batches)
    every = setup.every or max(1, steps_per_epoch(n, config.batch_size) // setup.samples_per_epoch)
    return GradientConditioning(
        build_model(config, train.num_classes), train.images[:pool], train.labels[:pool], mean=train.mean, std=train.std,
        metrics=setup.metric_names, every=every, batch_size=batch, num_batches=num_batches,
        weight_decay=config.weight_decay, seed=0, **options,
    )  # fmt: skip


def study_observers(setup: ConditioningSetup, config: TrainConfig) -> list:
    """A run's observers: ``GradientConditioning``; ``ConditioningSweep`` on its batches
    every ``sweep_every`` samples (unless ``etas`` is empty); ``StepConditioning`` (with
    the same-batch κ on the conditioning pool when ``same_batch``)."""
    cond = conditioning_observer(setup, config)
    out = [cond]
    if setup.etas:
        out.append(ConditioningSweep(cond, setup.etas, every=cond.every * setup.sweep_every))
    pool = dict(module=cond.module, images=cond.images, labels=cond.labels, mean=cond.mean, std=cond.std,
                batch_size=cond.batch_size, weight_decay=config.weight_decay) if setup.same_batch else {}  # fmt: skip
    return out + [StepConditioning(setup.step_every or config.log_every_steps, **pool)]


def write_costs(setup: ConditioningSetup, configs: Sequence[TrainConfig], results) -> None:
    """The ``after`` step: times the metrics on each trained state into ``costs.json``
    (skipped when the run already has one: a rerun keeps the first measurement)."""
    for config, r in zip(configs, results):
        path = pathlib.Path(r.run_dir) / "costs.json"
        if path.is_file():
            continue
        obs = conditioning_observer(setup, config)
        timed = (setup.cost_norms is None or config.norm in setup.cost_norms) and (setup.cost_seeds is None or config.seed in setup.cost_seeds)
        costs = conditioning_costs(obs, r.state, repeats=setup.cost_repeats if timed else 0)
        write_json(path, {**costs, "conditioning_every": obs.every})


class ConditioningStudy:
    name = "conditioning"
    setups = SETUPS
    default = "digits"

    def add_arguments(self, parser) -> None:
        parser.add_argument("--depth", dest="add_depths", type=int, nargs="+", help="depths to add to the setup's")
        parser.add_argument("--depths", type=int, nargs="+", help="depths instead of the setup's")
        parser.add_argument("--architectures", nargs="+", choices=list(ARCHITECTURES))
        parser.add_argument("--norms", nargs="+", help="norm names (default: vanilla bn_gamma_beta)")
        parser.add_argument("--metrics", nargs="+", choices=list(METRICS), help="a subset of jaxnorm.observers.METRICS")
        parser.add_argument("--every", type=positive_int, help="conditioning interval in steps (default: about twice per epoch)")
        parser.add_argument("--cost-repeats", type=int, help="timed calls per metric (0: no timing)")
        parser.add_argument("--quick-steps", type=positive_int, help="steps of a --quick run (default 8)")
        parser.add_argument("--quick-subset", type=positive_int, help="training examples of a --quick run (default 512)")

    def groups(self, setup: ConditioningSetup, seeds: Sequence[int], root: pathlib.Path) -> list[RunGroup]:
        """One group per architecture, norm and depth: its seeds as one ``fit_many`` program
        (the observers' batches do not depend on the seed: the first seed's config builds them)."""
        jobs = setup.jobs(seeds, results=root.parent.parent)
        by_config = {}
        for c in jobs:
            by_config.setdefault((c.tag, c.norm, c.model_kwargs["depth"]), []).append(c)
        return [
            RunGroup(tuple(cs), observers=functools.partial(study_observers, setup, cs[0]), after=functools.partial(write_costs, setup, tuple(cs)))
            for cs in by_config.values()
        ]

    def analyze(self, setup: ConditioningSetup, root: pathlib.Path) -> str:
        return analyze_conditioning(root)


STUDY = ConditioningStudy()


def main(argv=None) -> int:
    return jaxnorm.study.main(STUDY, argv)


if __name__ == "__main__":
    raise SystemExit(main())
