"""Initialization scale in a deep ReLU MLP, with and without normalization (the lecture,
the lecture “Normalization and Regularization” (CMU Deep Learning Systems), "Initialization vs. optimization").

The lecture's claims, for a deep ReLU MLP with ``W_i ~ N(0, c/n)`` (n = fan-in) trained
with vanilla SGD and no normalization: ``c = 3`` gives NaN, ``c = 2`` trains, ``c = 1``
makes no progress; "the effects/scales present at initialization *persist*
throughout training" (each layer's weight norm stays about where initialization put
it); and normalization removes the sensitivity to c. Why: with zero biases,
``E[mean(z_{i+1}^2)] = (c/2) mean(z_i^2)`` for ``z = relu(W z)``, so over D layers the
activations -- and the gradients, which pass back through the same matrices -- scale
like ``(c/2)^(D/2)``.

For each normalization (``vanilla``; BatchNorm ``bn_gamma_beta``; LayerNorm ``layer``,
after every hidden dense layer), each ``c`` and each seed the study trains, with
:func:`jaxnorm.train.fit_many` (one program per (norm, c): c is a model option, the
seeds of one (norm, c) train together), the model ``'mlp'`` with
``kernel_init='scaled_normal', kernel_init_kwargs={'c': c}`` by plain minibatch SGD
(no momentum, no weight decay; one learning rate for every run). A run whose training
loss turns non-finite or exceeds ``explode_factor`` x its first step's loss stops
there (``fit``'s divergence rule). The observer
:class:`jaxnorm.observers.layer_statistics.LayerStatistics` records, on a fixed probe
batch (the first ``probe_size`` training images, BN on the batch's statistics), at step
0 and every ``probe_every`` steps, each layer's activation RMS, ‖∂L/∂W_i‖_F and
‖W_i‖_F. :mod:`jaxnorm.analysis.init_scale` reads the stored runs: the outcome of each
curve (``classify``: diverged / no progress / trained), the init profiles against the
(c/2)^(D/2) law, ‖W_T‖/‖W_0‖ per layer, and the plots.

    python -m experiments.init_scale                 # digits, 50 layers x 64, 600 SGD steps, 3 seeds, 27 runs: 391 s CPU measured (40 min wall on 2 cores shared at load ~20)
    python -m experiments.init_scale --quick         # 3 layers (2 hidden of 16), 20 steps, one seed, 9 runs: ~45 s CPU (mostly compiling)
    python -m experiments.init_scale --seeds 0       # one seed per (norm, c) (a third of the training)
    python -m experiments.init_scale --scales 1 1.5 2 2.5 3 --norms vanilla
    python -m experiments.init_scale --config mnist1d  # the same study on MNIST-1D (offline, generated)
    python -m experiments.init_scale --config mnist  # the lecture's MNIST setting (a GPU; tfds-prepared MNIST)
    python -m experiments.init_scale --plot-only     # plots + summary.md from the stored files

The programs of the c's of one norm are the same (c only enters the initialization), but
each (norm, c) is its own ``fit_many`` call: with ``JAX_COMPILATION_CACHE_DIR`` set, JAX's
persistent cache compiles them once per norm (the quick study: 45 -> 31 s CPU).

Why 50 x 64 at lr 0.005 for 600 steps on digits, three seeds: depth 50 is the lecture's
regime (the c = 1 signal is down by 2^(-24.5) ≈ 4e-8 at the logits, the c = 3 one up by
1.5^24.5 ≈ 2e4); three seeds give every number a 95% interval and every comparison a
paired test, and to keep the 27 runs to a few minutes on 2 CPU cores the width went from
128 to 64 (a step costs about half) and the steps from 1000 to 600. A c = 2 net still
trains there (loss ~1 after 600 steps; width 128 reaches ~0.4 in 1000): the outcomes, the
law and the weight ratios are what the study is about, not the lowest loss. lr 0.01
already made the c = 2 curve erratic, 0.02 stalled it.

Results in ``<results>/init_scale/<config>[-quick]/``: ``study.json``, one run folder
``<norm>_c<c>_s<seed>/`` per run as :func:`jaxnorm.train.fit` writes it (``config.json``,
``metrics.jsonl``, ``status.json``, ``checkpoints/``, ``trajectories.npz`` with
``layer_statistics/{steps,loss,acc,activation_rms,grad_norm,weight_norm}``), and
``plots/`` (``loss.png``, ``layers_init.png``, ``layers_training.png``,
``weight_ratio.png``, ``summary.md``).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Optional

import jaxnorm.study
from jaxnorm._registry import lookup
from jaxnorm.analysis import init_scale as analysis
from jaxnorm.data import load, steps_per_epoch
from jaxnorm.layers import NORMS, get_activation
from jaxnorm.observers.layer_statistics import LayerStatistics
from jaxnorm.study import RunGroup
from jaxnorm.train import TrainConfig, build_model


@dataclasses.dataclass(frozen=True)
class InitScaleSetup:
    """One initialization-scale study.

    Attributes:
      dataset, subset: training data (``subset``: the first n examples; None = all);
        eval_split: held-out split evaluated at the end (running BN statistics; None: none).
      depth, width, activation: the MLP (``depth`` weight layers, the output included).
      scales: the c of ``W ~ N(0, c/n)``; norms: names from :data:`jaxnorm.layers.NORMS`.
      learning_rate, batch_size, steps: plain minibatch SGD, the same for every run.
      every: training-loss record interval (fit's ``log_every_steps``); probe_every: the
        layer-statistics interval (dividing ``steps``, so the last probe is the end);
        probe_size: examples in the fixed probe batch (the first of the training set).
      explode_factor: fit's ``divergence_factor`` and ``classify``'s; progress_fraction:
        ``classify``'s.
      checkpoint_every: checkpoint interval in epochs (a killed study resumes from there).
      seeds: default seeds (initialization and data order of each run): three, so that
        every number of the summary carries a 95% interval over seeds.
    """

    name: str = "digits"
    dataset: str = "digits"
    subset: Optional[int] = None
    eval_split: Optional[str] = "test"
    depth: int = 50
    width: int = 64
    activation: str = "relu"
    scales: tuple = (1.0, 2.0, 3.0)
    norms: tuple = ("vanilla", "bn_gamma_beta", "layer")
    learning_rate: float = 0.005
    batch_size: int = 64
    steps: int = 600
    every: int = 20
    probe_every: int = 100
    probe_size: int = 256
    explode_factor: float = analysis.EXPLODE_FACTOR
    progress_fraction: float = analysis.PROGRESS_FRACTION
    checkpoint_every: int = 10
    seeds: tuple = (0, 1, 2)

    def __post_init__(self):
        if not self.norms or not self.scales:
            raise ValueError(f"norms and scales: need at least one each, got {self.norms!r}, {self.scales!r}.")
        for n in self.norms:
            lookup(NORMS, n, "norm")
        if not all(isinstance(c, (int, float)) and math.isfinite(c) and c > 0 for c in self.scales):
            raise ValueError(f"scales must be finite numbers > 0, got {self.scales!r}.")
        if len(set(self.scales)) != len(self.scales) or len(set(self.norms)) != len(self.norms):
            raise ValueError(f"scales and norms must not repeat, got {self.scales!r}, {self.norms!r}.")
        if self.depth < 2 or self.width < 1:
            raise ValueError(f"depth must be >= 2 (a hidden layer) and width >= 1, got {self.depth}, {self.width}.")
        get_activation(self.activation)
        for what in ("every", "probe_every", "steps", "probe_size", "checkpoint_every"):
            v = getattr(self, what)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{what} must be an int >= 1, got {v!r}.")
        if self.steps % self.probe_every:
            raise ValueError(f"steps ({self.steps}) must be a multiple of probe_every ({self.probe_every}): the last probe is the end.")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be finite and > 0, got {self.learning_rate!r}.")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (BatchNorm needs two values per feature), got {self.batch_size}.")
        analysis.classify([1.0], explode_factor=self.explode_factor, progress_fraction=self.progress_fraction)  # checks them

    def quick(self) -> "InitScaleSetup":
        """A smoke run of the whole pipeline: 3 layers (2 hidden of 16), 20 steps on 256
        examples, one seed (the tables then carry values without intervals)."""
        return dataclasses.replace(
            self, name=self.name + "-quick", subset=256, depth=3, width=16, steps=20, every=10, probe_every=10, probe_size=64, seeds=(0,),
        )  # fmt: skip


SETUPS: dict[str, InitScaleSetup] = {
    "digits": InitScaleSetup(),
    # The lecture's setting: a 50-layer ReLU MLP on MNIST, trained to a few per cent
    # error. Not yet run here (MNIST must be prepared by tfds); on one GPU expect a few
    # minutes (50 sequential dense layers make each step latency-bound).
    # The same 50 x 64 ReLU MLP on MNIST-1D ("Scaling Down Deep Learning with MNIST-1D",
    # Greydanus & Kobak, ICML 2024; sequences of 40 flattened), 3,200 training sequences.
    "mnist1d": InitScaleSetup(name="mnist1d", dataset="mnist1d"),
    "mnist": InitScaleSetup(name="mnist", dataset="mnist", width=256, batch_size=128, steps=5000, every=50, probe_every=500, probe_size=512),
}


def run_name(norm: str, c: float, seed: int) -> str:
    return f"{norm}_c{c:g}_s{seed}"


def train_config(setup: InitScaleSetup, norm: str, c: float, seed: int, results: str, *, num_classes: int, train_size: int) -> TrainConfig:
    """The run (norm, c, seed) of ``setup``, stored under ``<results>/init_scale/<setup>/``."""
    epochs = math.ceil(setup.steps / steps_per_epoch(train_size, setup.batch_size))
    return TrainConfig(
        dataset=setup.dataset,
        model="mlp",
        model_kwargs={
            "num_classes": num_classes,  # in config.json: the analysis reads the chance level ln K from it
            "depth": setup.depth,
            "width": setup.width,
            "activation": setup.activation,
            "kernel_init": "scaled_normal",
            "kernel_init_kwargs": {"c": float(c)},
        },
        norm=norm,
        batch_size=setup.batch_size,
        epochs=epochs,
        max_steps=setup.steps,
        learning_rate=setup.learning_rate,
        momentum=0.0,
        train_subset=setup.subset,
        eval_splits=(setup.eval_split,) if setup.eval_split else (),
        eval_every_epochs=epochs,  # once, at the end
        divergence_factor=setup.explode_factor,
        log_every_steps=setup.every,
        checkpoint_every_epochs=setup.checkpoint_every,
        seed=seed,
        study=f"{STUDY.name}/{setup.name}",
        name=run_name(norm, c, seed),
        results_dir=results,
    )


def _train_split(setup: InitScaleSetup):
    ds = load(setup.dataset, "train")
    n = len(ds.labels) if setup.subset is None else min(setup.subset, len(ds.labels))
    return ds, n


class InitScaleStudy:
    name = "init_scale"
    setups = SETUPS
    default = "digits"

    def add_arguments(self, parser) -> None:
        parser.add_argument("--scales", type=float, nargs="+", help="the c of W ~ N(0, c/n)")
        parser.add_argument("--norms", nargs="+", help=f"subset of {sorted(NORMS)}")
        parser.add_argument("--depth", type=int, help="weight layers, the output included")
        parser.add_argument("--width", type=int, help="hidden units")
        parser.add_argument("--steps", type=int, help="SGD steps per run")
        parser.add_argument("--lr", dest="learning_rate", type=float, help="SGD learning rate")
        parser.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, help="checkpoint interval in epochs")

    def groups(self, setup: InitScaleSetup, seeds, root: pathlib.Path) -> list[RunGroup]:
        setup = dataclasses.replace(setup, scales=tuple(setup.scales), norms=tuple(setup.norms))  # flags give lists
        ds, n = _train_split(setup)
        results = str(root.parent.parent)

        def observers(config: TrainConfig):
            module = build_model(config, ds.num_classes)
            probe = slice(0, min(setup.probe_size, n))
            return lambda: [LayerStatistics(module, ds.images[probe], ds.labels[probe], ds.mean, ds.std, every=setup.probe_every)]

        out = []
        for norm in setup.norms:
            for c in setup.scales:
                configs = tuple(train_config(setup, norm, c, s, results, num_classes=ds.num_classes, train_size=n) for s in seeds)
                out.append(RunGroup(configs, observers=observers(configs[0])))
        return out

    def analyze(self, setup: InitScaleSetup, root: pathlib.Path) -> str:
        return analysis.write_report(root)


STUDY = InitScaleStudy()


def main(argv=None) -> int:
    return jaxnorm.study.main(STUDY, argv)


if __name__ == "__main__":
    raise SystemExit(main())
