"""The gradient-conditioning study (source document 002): metrics throughout training of
deep nets with and without BatchNorm, and what they cost.

Trains every architecture x norm x depth of a named config, one ``fit`` per run, with the
in-optimizer κ_W estimate on (``track_step_conditioning``) and two observers:
``GradientConditioning`` (every metric of ``jaxnorm.diagnostics``, about twice per epoch,
on batches drawn from the first ``pool_size`` training examples) and ``StepConditioning``
(κ_W of the SGD step itself, every ``log_every_steps`` steps). After training, each metric is
timed alone on the final state (jit once, then the median of a few calls) next to one
batch gradient -- in every run, or in the runs of the config's ``cost_norms``. A diverged
run is recorded as such and the sweep goes on. Then the plots and ``summary.md``
(``jaxnorm.analysis.write_conditioning_report``; regenerate them any time with
``--plot-only``).

Architectures (:data:`ARCHITECTURES`): ``ortho_relu`` / ``ortho_crelu`` (``deep_fc``,
orthogonal init, ReLU / CReLU), ``looks_linear`` (``deep_fc``, CReLU with mirrored
blocks, Def. 3.9), ``convnet`` and ``resnet`` (``convnet`` without / with identity skips);
norms ``vanilla`` and ``bn_gamma_beta``; depths = weight layers.

    python -m experiments.conditioning                    # digits default (configs/conditioning_digits.py)
    python -m experiments.conditioning --depth 26          # add depths to the config's
    python -m experiments.conditioning cifar10             # the thesis's setup (GPU; CIFAR-10 prepared for tfds)
    python -m experiments.conditioning cifar10 --shard 2/4 # one SLURM array task of four
    python -m experiments.conditioning --quick             # 8 steps, 2 architectures, tiny widths, 2 metrics
    python -m experiments.conditioning --plot-only         # plots + summary.md from the stored files

Results: ``<results>/conditioning/<config>[-quick]/<arch>-<norm>-d<depth>/`` with the usual
``config.json``, ``metrics.jsonl`` (``train``, ``eval``, ``conditioning``,
``step_conditioning`` lines), ``status.json``, and ``costs.json`` (parameter count,
seconds per metric call); ``<results>/conditioning/<config>/costs.json`` (metric -> list of
``{run, params, seconds}``); plots and ``summary.md`` in ``.../plots/``. A run that
already finished with the same config (and has its ``costs.json``) is skipped unless
``--overwrite``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import pathlib
import time
from typing import Callable, Mapping, Optional, Sequence

from jaxnorm.train import TrainConfig

# --------------------------------------------------------------------------- architectures


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One architecture family of the study.

    Attributes:
      model: the registered model name.
      label: for humans.
      options: ``(depth, study) -> model_kwargs``.
    """

    model: str
    label: str
    options: Callable[[int, "ConditioningStudy"], dict]


def conv_stages(depth: int, max_stages: int) -> int:
    """Resolution stages of a ConvNet of ``depth`` weight layers: at most ``max_stages``,
    and at least two body layers per stage, so a residual net's stages hold a residual
    block (depth 4: one stage, one block; depth 11: three stages of three layers)."""
    return max(1, min(max_stages, (depth - 2) // 2))


def _fc(activation: str, kernel_init: str):
    return lambda depth, study: {"depth": depth, "width": study.fc_width, "activation": activation, "kernel_init": kernel_init}


def _conv(residual: bool):
    return lambda depth, study: {
        "depth": depth,
        "width": study.conv_width,
        "residual": residual,
        "stages": conv_stages(depth, study.conv_stages),
    }


ARCHITECTURES: dict[str, Architecture] = {
    "ortho_relu": Architecture("deep_fc", "fully connected, orthogonal init, ReLU", _fc("relu", "orthogonal")),
    "ortho_crelu": Architecture("deep_fc", "fully connected, orthogonal init, CReLU", _fc("crelu", "orthogonal")),
    "looks_linear": Architecture("deep_fc", "fully connected, looks-linear init, CReLU (Def. 3.9)", _fc("crelu", "looks_linear")),
    "convnet": Architecture("convnet", "ConvNet, no skip connections", _conv(False)),
    "resnet": Architecture("convnet", "ConvNet with identity skips (residual)", _conv(True)),
}

NORMS = ("vanilla", "bn_gamma_beta")


def _all_metrics() -> tuple[str, ...]:
    from jaxnorm.observers import METRICS

    return METRICS


# --------------------------------------------------------------------------- the study


@dataclasses.dataclass(frozen=True)
class ConditioningStudy:
    """A gradient-conditioning study, as code (``experiments/configs/conditioning_*.py``).

    Attributes:
      name: results folder under ``<results>/conditioning/``.
      base: the run every architecture/norm/depth shares (dataset, optimizer, schedule,
        epochs, logging); ``model``, ``model_kwargs``, ``norm``, ``tag`` (= the
        architecture), ``name``, ``study`` and ``results_dir`` are set per run.
      architectures, norms, depths: the grid (run names ``<arch>-<norm>-d<depth>``).
      fc_width, conv_width, conv_stages: the models' widths; at most this many ConvNet
        stages (see :func:`conv_stages`).
      metrics: :data:`jaxnorm.diagnostics.METRICS` names to record and time (default: all).
      samples_per_epoch: conditioning samples per epoch (the thesis: about two).
      every: a fixed conditioning interval in steps instead (None: from samples_per_epoch).
      step_every: the ``StepConditioning`` interval (None: ``base.log_every_steps``).
      pool_size: the observer draws its batches from the first this many training examples.
      conditioning: further ``GradientConditioning`` options (``batch_size``,
        ``num_batches``, ``mask_fraction``, ``mode``, ...).
      cost_repeats: timed calls per metric (after one compile call); 0: no timing.
      cost_norms: time the metrics only in runs of these norms (None: every run; the
        others' ``costs.json`` hold just the parameter count).
      quick_*: what ``--quick`` keeps (architectures, depths, widths, metrics).
    """

    name: str
    base: TrainConfig
    architectures: tuple[str, ...] = tuple(ARCHITECTURES)
    norms: tuple[str, ...] = NORMS
    depths: tuple[int, ...] = (4, 11)
    fc_width: int = 128
    conv_width: int = 16
    conv_stages: int = 3
    metrics: Optional[tuple[str, ...]] = None
    samples_per_epoch: int = 2
    every: Optional[int] = None
    step_every: Optional[int] = None
    pool_size: int = 1024
    conditioning: Mapping = dataclasses.field(default_factory=lambda: {"batch_size": 64, "num_batches": 4})
    cost_repeats: int = 5
    cost_norms: Optional[tuple[str, ...]] = None
    quick_architectures: tuple[str, ...] = ("ortho_relu", "resnet")
    quick_depths: tuple[int, ...] = (4,)
    quick_widths: tuple[int, int] = (16, 4)
    quick_metrics: tuple[str, ...] = ("kappa_w", "confusion")

    def __post_init__(self):
        unknown = sorted(set(self.architectures) - set(ARCHITECTURES))
        if unknown:
            raise ValueError(f"unknown architecture(s) {unknown}; known: {list(ARCHITECTURES)}.")
        if not self.architectures or not self.norms or not self.depths:
            raise ValueError("a study needs at least one architecture, norm and depth.")
        from jaxnorm.layers import NORMS as known_norms

        unknown = sorted(set(self.norms) - set(known_norms))
        if unknown:
            raise ValueError(f"unknown norm(s) {unknown}; known: {sorted(known_norms)}.")
        if any(d < 2 for d in self.depths):
            raise ValueError(f"depths count weight layers and must be >= 2, got {self.depths}.")
        if self.metrics is not None:
            unknown = sorted(set(self.metrics) - set(_all_metrics()))
            if unknown or not self.metrics:
                raise ValueError(f"unknown metric(s) {unknown or self.metrics}; known: {list(_all_metrics())}.")

    def replace(self, **changes) -> "ConditioningStudy":
        return dataclasses.replace(self, **changes)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(self.metrics) if self.metrics is not None else _all_metrics()

    def quick(self, steps: int = 8, subset: int = 512) -> "ConditioningStudy":
        """A smoke version: ``steps`` steps on ``subset`` examples, the quick architectures,
        depths, widths and metrics, a few timed calls, under ``<name>-quick``."""
        fc, conv = self.quick_widths
        return self.replace(
            name=f"{self.name}-quick",
            base=self.base.quick(steps=steps, subset=subset).replace(log_every_steps=1, checkpoint_every_epochs=0),
            architectures=tuple(a for a in self.architectures if a in self.quick_architectures) or self.architectures[:1],
            depths=self.quick_depths,
            fc_width=fc,
            conv_width=conv,
            metrics=tuple(m for m in self.metric_names if m in self.quick_metrics) or self.metric_names[:1],
            pool_size=min(self.pool_size, subset),
            cost_repeats=min(self.cost_repeats, 2),
            cost_norms=None,
            every=None,
        )

    def run_config(self, arch: str, norm: str, depth: int, results: str = "results") -> TrainConfig:
        """The TrainConfig of run ``<arch>-<norm>-d<depth>``."""
        a = ARCHITECTURES[arch]
        return self.base.replace(
            model=a.model,
            model_kwargs=a.options(depth, self),
            norm=norm,
            tag=arch,
            track_step_conditioning=True,
            name=f"{arch}-{norm}-d{depth}",
            study=self.name,
            results_dir=str(pathlib.Path(results) / "conditioning"),
        )

    def jobs(self, results: str = "results") -> list[TrainConfig]:
        """Every run's config, architecture-major, then norm, then depth."""
        grid = itertools.product(self.architectures, self.norms, sorted(set(self.depths)))
        return [self.run_config(a, n, d, results) for a, n, d in grid]


# --------------------------------------------------------------------------- configs

#: Config name -> module under ``experiments.configs`` (imported on use: the modules
#: import this one).
CONFIGS: dict[str, str] = {"digits": "conditioning_digits", "cifar10": "conditioning_cifar10"}


def get_study(name: str, **options) -> ConditioningStudy:
    """The named study config; ValueError listing the names for an unknown one."""
    from jaxnorm._registry import lookup

    module = lookup(CONFIGS, name, "conditioning config")
    return importlib.import_module(f"experiments.configs.{module}").get_config(**options)


# --------------------------------------------------------------------------- one run


def _train_pool(config: TrainConfig, pool_size: int):
    from jaxnorm.data import load, steps_per_epoch

    train = load(config.dataset, config.train_split)
    images, labels = train.images, train.labels
    if config.train_subset is not None:
        images, labels = images[: config.train_subset], labels[: config.train_subset]
    return train, images[:pool_size], labels[:pool_size], steps_per_epoch(len(labels), config.batch_size)


def conditioning_observer(
    study: ConditioningStudy, config: TrainConfig, metrics: Optional[Sequence[str]] = None, every: Optional[int] = None
):
    """``(GradientConditioning, module, interval)`` of one run: the run's model, the first
    ``pool_size`` training examples, ``every`` (default: the study's interval)."""
    from jaxnorm.observers import GradientConditioning
    from jaxnorm.train import build_model

    train, images, labels, spe = _train_pool(config, study.pool_size)
    interval = every or study.every or max(1, spe // study.samples_per_epoch)
    options = dict(study.conditioning)
    num_batches = options.pop("num_batches", 4)
    batch = min(options.pop("batch_size", 64), len(labels) // num_batches)
    module = build_model(config, train.num_classes)
    obs = GradientConditioning(
        module,
        images,
        labels,
        mean=train.mean,
        std=train.std,
        metrics=tuple(metrics or study.metric_names),
        every=interval,
        batch_size=batch,
        num_batches=num_batches,
        weight_decay=config.weight_decay,
        seed=config.seed,
        **options,
    )
    return obs, module, interval


def _time(fn, *args, repeats: int) -> tuple[float, float]:
    """(median seconds of ``repeats`` calls, seconds of the first call incl. compile)."""
    import jax
    import numpy as np

    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), first


def measure_costs(study: ConditioningStudy, config: TrainConfig, state) -> dict:
    """Times each metric alone on ``state`` (a ``GradientConditioning`` of that one metric,
    jitted), the step tracker's update (``kappa_sgd``, the in-training estimate) and one
    batch gradient of the observer's batch size (``batch_gradient``, the reference) --
    unless ``cost_repeats`` is 0 or the run's norm is not in ``cost_norms``.

    Returns ``{"params", "seconds": {name: median}, "first_call_seconds": {...},
    "repeats", "backend"}``."""
    import jax

    from jaxnorm.data.augmentation import normalize
    from jaxnorm.diagnostics import batch_loss_fn, track_step_conditioning

    params = int(sum(x.size for x in jax.tree.leaves(state.params)))
    out = {"params": params, "seconds": {}, "first_call_seconds": {}, "repeats": study.cost_repeats, "backend": jax.default_backend()}
    if study.cost_repeats < 1 or (study.cost_norms is not None and config.norm not in study.cost_norms):
        return out

    def record(name, fn, *args):
        out["seconds"][name], out["first_call_seconds"][name] = _time(fn, *args, repeats=study.cost_repeats)

    obs = None
    for metric in study.metric_names:
        obs, _, _ = conditioning_observer(study, config, metrics=(metric,))
        record(metric, jax.jit(obs), state)
    tracker = track_step_conditioning()
    record("kappa_sgd", jax.jit(tracker.update), state.params, tracker.init(state.params), state.params)
    x = normalize(obs.images[: obs.batch_size], obs.mean, obs.std)
    y = obs.labels[: obs.batch_size]
    grad = jax.jit(lambda v: jax.grad(batch_loss_fn(obs.module, v, x, y, bn_mode="batch", weight_decay=config.weight_decay))(v["params"]))
    record("batch_gradient", grad, state.variables)
    return out


def _already_done(config: TrainConfig) -> bool:
    from jaxnorm.results import RunDir, read_json

    run = RunDir(pathlib.Path(config.results_dir) / config.study / config.name)
    if not (run.status.is_file() and run.config.is_file() and (run.root / "costs.json").is_file()):
        return False
    try:
        same = TrainConfig.from_dict(read_json(run.config)).to_dict() == config.to_dict()
    except (TypeError, ValueError):
        return False
    return same and read_json(run.status).get("status") in ("finished", "diverged")


def run_one(study: ConditioningStudy, config: TrainConfig, *, progress: bool = True, overwrite: bool = False) -> dict:
    """Trains one run with the observers, times the metrics, writes ``costs.json``; returns
    ``{"status", "step", "run_dir", "seconds", "skipped"}``."""
    from jaxnorm.observers import StepConditioning
    from jaxnorm.train import fit
    from jaxnorm.results import write_json

    run_dir = pathlib.Path(config.results_dir) / config.study / config.name
    if not overwrite and _already_done(config):
        from jaxnorm.results import read_json

        return {"status": read_json(run_dir / "status.json")["status"], "step": None, "run_dir": run_dir, "seconds": 0.0, "skipped": True}
    t0 = time.perf_counter()
    obs, _, _ = conditioning_observer(study, config)
    step_obs = StepConditioning(study.step_every or config.log_every_steps)
    result = fit(config, observers=[obs, step_obs], overwrite=overwrite, progress=progress)
    costs = measure_costs(study, config, result.state)
    costs["conditioning_every"] = obs.every
    write_json(result.run_dir / "costs.json", costs)
    return {"status": result.status, "step": result.step, "run_dir": result.run_dir, "seconds": time.perf_counter() - t0, "skipped": False}


def write_study_costs(root) -> pathlib.Path:
    """``root/costs.json``: metric -> list of ``{run, params, seconds}`` over the runs below ``root``."""
    from jaxnorm.analysis.conditioning import collect_costs, find_conditioning_runs
    from jaxnorm.results import write_json

    path = pathlib.Path(root) / "costs.json"
    write_json(path, collect_costs(find_conditioning_runs(root)))
    return path


# --------------------------------------------------------------------------- command line


def study_from_args(args) -> ConditioningStudy:
    """The named config with the command line's selections, ``--quick``, then its depth,
    interval and timing changes."""
    study = get_study(args.config)
    chosen = {k: tuple(v) for k, v in (("architectures", args.architectures), ("norms", args.norms), ("metrics", args.metrics)) if v}
    study = study.replace(**chosen, **{f"quick_{k}": v for k, v in chosen.items() if k != "norms"})
    if args.quick:
        study = study.quick(steps=args.quick_steps, subset=args.quick_subset)
    if args.depths:
        study = study.replace(depths=tuple(args.depths))
    if args.depth:
        study = study.replace(depths=tuple(dict.fromkeys((*study.depths, *args.depth))))
    if args.every:
        study = study.replace(every=args.every)
    if args.cost_repeats is not None:
        study = study.replace(cost_repeats=args.cost_repeats)
    return study


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("config", nargs="?", default="digits", choices=sorted(CONFIGS))
    parser.add_argument("--depth", type=int, nargs="+", help="depths to add to the config's")
    parser.add_argument("--depths", type=int, nargs="+", help="depths instead of the config's")
    parser.add_argument("--architectures", nargs="+", choices=list(ARCHITECTURES))
    parser.add_argument("--norms", nargs="+", help="norm names (default: vanilla bn_gamma_beta)")
    parser.add_argument("--metrics", nargs="+", help="a subset of jaxnorm.diagnostics.METRICS")
    parser.add_argument("--every", type=int, help="conditioning interval in steps (default: about twice per epoch)")
    parser.add_argument("--cost-repeats", type=int, help="timed calls per metric (0: no timing)")
    parser.add_argument("--quick", action="store_true", help="a few steps, 2 architectures, tiny widths (tests, laptops)")
    parser.add_argument("--quick-steps", type=int, default=8)
    parser.add_argument("--quick-subset", type=int, default=512)
    parser.add_argument("--shard", default="1/1", help="i/n: run every n-th run starting at the i-th")
    parser.add_argument("--results", default="results")
    parser.add_argument("--overwrite", action="store_true", help="retrain runs that already finished")
    parser.add_argument("--plot-only", action="store_true", help="only the plots and summary.md, from stored files")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    study = study_from_args(args)
    root = pathlib.Path(args.results) / "conditioning" / study.name
    if not args.plot_only:
        from experiments.ablation import shard_jobs

        jobs = shard_jobs(study.jobs(args.results), args.shard)
        print(f"conditioning {study.name}: {len(jobs)} run(s) (shard {args.shard}), metrics {', '.join(study.metric_names)}")
        t0 = time.perf_counter()
        for config in jobs:
            r = run_one(study, config, progress=not args.no_progress, overwrite=args.overwrite)
            note = "already done, skipped" if r["skipped"] else f"{r['status']:9} after {r['step']} steps, {r['seconds']:.1f} s"
            print(f"  {config.name:28} {note}")
        print(f"trained and timed in {time.perf_counter() - t0:.1f} s")
        print(f"costs: {write_study_costs(root)}")
    if not args.no_plots:
        from jaxnorm.analysis import write_conditioning_report

        written = write_conditioning_report(root)
        print(f"plots and summary.md written to {root / 'plots'} ({len(written)} files)")
    return 0


if __name__ == "__main__":
    # Run through the importable module (the configs import ``experiments.conditioning``),
    # not this ``__main__`` copy, so there is one ConditioningStudy class.
    from experiments.conditioning import main as _main

    raise SystemExit(_main())
