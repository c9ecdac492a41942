"""LayerNorm vs BatchNorm, and the other normalizations (CMU lecture “Normalization and Regularization”, slides
"Layer normalization" ... "Minibatch dependence"; Ba et al. 2016, "Layer Normalization";
Ioffe & Szegedy 2015, "Batch Normalization"; Wu & He 2018, "Group Normalization";
Ulyanov et al. 2016, "Instance Normalization"; Salimans & Kingma 2016, "Weight
Normalization"; Qiao et al. 2019, "Micro-Batch Training with Batch-Channel Normalization
and Weight Standardization").

The lecture: LayerNorm normalizes the rows of a layer's activation matrix, BatchNorm its
columns; LayerNorm is "harder to train to low loss" in a plain FCN; BatchNorm depends on
the batch, so it uses running averages at test time and degrades at small batches. Three
parts, every run trained by ``fit_many`` (one RunGroup per (net, variant[, batch size]),
seeds together): (1) **curves** of every norm in :data:`VARIANTS` on an MLP and a small
ConvNet, the BN runs recording their first norm input (``NormInputs``) for the
rows-vs-columns check; (2) **batch_size**: ``bs_variants`` at each of ``batch_sizes``, lr
linear in the batch size; (3) **eval_stats**: every BN run evaluated at its last step
(``BNEvaluation``) with running, exact population (Alg. 2) and test-batch statistics.

    python -m experiments.norm_kinds                  # digits, MLP + ConvNet, 3 seeds, 29 groups of 3 runs: 397 s CPU measured (32 min wall on 2 cores shared at load ~20)
    python -m experiments.norm_kinds --quick          # a 3-layer BN MLP, 2 epochs on 256 examples, one seed (tests): 20 s
    python -m experiments.norm_kinds --seeds 0        # one seed of everything
    python -m experiments.norm_kinds --config cifar10 # 3C3D + MLP on CIFAR-10 (GPU; tfds-prepared CIFAR-10)
    python -m experiments.norm_kinds --plot-only      # plots + summary.md from the stored files

Results in ``<results>/norm_kinds/<config>[-quick]/``: run folders
``curves-<net>-<variant>-s<seed>`` and ``bs-<net>-<variant>-b<B>-s<seed>``;
``plots/{curves, batch_size, eval_stats}.png`` and ``plots/summary.md``
(:mod:`jaxnorm.analysis.norm_kinds`).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Callable, Optional

from jaxnorm import study as _study
from jaxnorm._registry import lookup
from jaxnorm.analysis import norm_kinds as analysis
from jaxnorm.data import load, steps_per_epoch
from jaxnorm.data.augmentation import normalize
from jaxnorm.layers import norm_spec
from jaxnorm.observers.bn_evaluation import BNEvaluation
from jaxnorm.observers.norm_inputs import NormInputs
from jaxnorm.study import RunGroup
from jaxnorm.train import TrainConfig, build_model


@dataclasses.dataclass(frozen=True)
class Variant:
    """A normalization of the study: the model's ``norm`` and ``weight_reparam``."""

    norm: str
    weight_reparam: str = "none"
    label: str = ""
    conv_only: bool = False


VARIANTS: dict[str, Variant] = {
    "none": Variant("vanilla", label="no normalization"),
    "batch": Variant("bn_gamma_beta", label="BatchNorm"),
    "layer": Variant("layer", label="LayerNorm"),
    "group": Variant("group", label="GroupNorm"),
    # Per example and channel over the spatial positions: on an MLP's (batch, features)
    # there is one value per statistic, so it exists for conv nets only.
    "instance": Variant("instance", label="InstanceNorm", conv_only=True),
    "weight_norm": Variant("vanilla", "weight_norm", label="weight norm (no norm layer)"),
    "ws_group": Variant("group", "weight_std", label="weight standardization + GroupNorm"),
}

#: Learning rate at batch size b, from the base rate at the reference batch size.
LR_SCALINGS: dict[str, Callable[[float, int, int], float]] = {
    "linear": lambda lr, b, ref: lr * b / ref,
    "constant": lambda lr, b, ref: lr,
}


@dataclasses.dataclass(frozen=True)
class Net:
    """A network: a registered model, its options (``norm``/``weight_reparam`` set per
    variant), whether it is convolutional, and per-variant option overrides."""

    model: str
    kwargs: dict = dataclasses.field(default_factory=dict)
    conv: bool = False
    variant_kwargs: dict = dataclasses.field(default_factory=dict)


def _is_int(b, low: int) -> bool:
    return isinstance(b, int) and not isinstance(b, bool) and b >= low


@dataclasses.dataclass(frozen=True)
class NormKindsSetup:
    """One normalization-kinds study (part 1: ``batch_size``, ``learning_rate``,
    ``epochs``; part 2: ``bs_*``, ``batch_sizes``; part 3: ``eval_batch_sizes``, test
    batch sizes >= 2, one above the split's size meaning the whole split).
    ``loss_target``: "trained to low loss" = the first epoch whose eval-mode training
    loss is at most this. ``population_subset``: the first n training examples feed the
    population statistics (None: all)."""

    name: str = "digits"
    dataset: str = "digits"
    subset: Optional[int] = None
    eval_split: str = "test"
    nets: dict = dataclasses.field(
        default_factory=lambda: {
            # A plain ReLU FCN (the lecture's network), He init; GroupNorm: 8 groups of 16.
            "mlp": Net("mlp", {"depth": 4, "width": 128, "norm_options": {"num_groups": 8}}),
            # A small plain ConvNet (6 weight layers, 8 channels, 8x8 -> 4x4); GroupNorm: 2 groups
            # of 4. 8 channels, not 16: XLA's CPU convolutions take 6x longer per epoch at 16.
            "convnet": Net("convnet", {"depth": 6, "width": 8, "stages": 2, "norm_options": {"num_groups": 2}}, conv=True),
        }
    )
    variants: tuple = ("none", "batch", "layer", "group", "instance", "weight_norm", "ws_group")
    learning_rate: float = 0.05  # both nets reach ~97% test accuracy in 15 epochs
    momentum: float = 0.9
    batch_size: int = 64
    epochs: int = 15
    loss_target: float = 0.05
    bs_nets: tuple = ("mlp",)  # the ConvNet's sweep would take minutes more on 2 cores
    bs_variants: tuple = ("none", "batch", "layer", "group")
    batch_sizes: tuple = (2, 8, 32, 128)  # 4, 16, 64 dropped for 3 seeds: each size compiles its own program
    bs_epochs: int = 8
    lr_scaling: str = "linear"
    eval_batch_sizes: tuple = (2, 4, 8, 16, 32, 64, 128, 359)
    rows_columns_batch: int = 64
    population_subset: Optional[int] = None
    seeds: tuple = (0, 1, 2)  # every number with a 95% interval, every comparison paired by seed

    def __post_init__(self):
        if not self.nets or not self.variants:
            raise ValueError("nets and variants: need at least one.")
        for name, net in self.nets.items():
            if not isinstance(net, Net):
                raise ValueError(f"nets[{name!r}] must be a Net, got {net!r}.")
        for v in (*self.variants, *self.bs_variants):
            lookup(VARIANTS, v, "variant")
        for n in self.bs_nets:
            lookup(self.nets, n, "net (bs_nets)")
        lookup(LR_SCALINGS, self.lr_scaling, "lr_scaling")
        for what, sizes in (("batch_sizes", self.batch_sizes), ("eval_batch_sizes", self.eval_batch_sizes)):
            if not all(_is_int(b, 2) for b in sizes):
                raise ValueError(f"{what} must be ints >= 2 (BatchNorm needs two values per feature), got {sizes!r}.")
        for what, b in (("batch_size", self.batch_size), ("rows_columns_batch", self.rows_columns_batch)):
            if not _is_int(b, 2):
                raise ValueError(f"{what} must be an int >= 2 (BatchNorm needs two values per feature), got {b!r}.")
        for what, e in (("epochs", self.epochs), ("bs_epochs", self.bs_epochs)):
            if not _is_int(e, 1):
                raise ValueError(f"{what} must be an int >= 1, got {e!r}.")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be finite and > 0, got {self.learning_rate!r}.")
        if not (math.isfinite(self.loss_target) and self.loss_target > 0):
            raise ValueError(f"loss_target must be finite and > 0, got {self.loss_target!r}.")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}.")

    def bs_learning_rate(self, batch_size: int) -> float:
        """Part 2's learning rate at ``batch_size`` (``lr_scaling`` from ``batch_size``)."""
        return LR_SCALINGS[self.lr_scaling](self.learning_rate, batch_size, self.batch_size)

    def quick(self) -> "NormKindsSetup":
        """The whole pipeline in seconds (tests): 256 examples, 2 epochs, a 3-layer BN MLP
        of 16 units; part 2 with BN at batch 4; one seed. Compiling dominates on a CPU."""
        return dataclasses.replace(
            self, name=self.name + "-quick", subset=256, epochs=2, bs_epochs=2, batch_size=16,
            nets={"mlp": Net("mlp", {"depth": 3, "width": 16, "norm_options": {"num_groups": 4}})},
            variants=("batch",), bs_nets=("mlp",), bs_variants=("batch",), batch_sizes=(4,),
            eval_batch_sizes=(16,), rows_columns_batch=16, seeds=(0,),
        )  # fmt: skip


SETUPS: dict[str, NormKindsSetup] = {
    "digits": NormKindsSetup(),
    # The lecture's setting on a GPU: an MLP and 3C3D on CIFAR-10; GroupNorm with 32
    # groups; 3C3D's instance norm after its convs only; lr 0.005 (not tuned); population
    # statistics from 10k training images. Not run here (no GPU, no CIFAR-10 prepared).
    "cifar10": NormKindsSetup(
        name="cifar10", dataset="cifar10",
        nets={
            "mlp": Net("mlp", {"depth": 4, "width": 512, "norm_options": {"num_groups": 32}}),
            "3c3d": Net("3c3d", {"norm_options": {"num_groups": 32}}, conv=True, variant_kwargs={"instance": {"bn_positions": (1, 1, 1, 0, 0, 0)}}),
        },
        learning_rate=0.005, batch_size=128, epochs=30, bs_nets=("3c3d",), bs_epochs=5,
        eval_batch_sizes=(2, 4, 8, 16, 32, 64, 128, 256, 1024), population_subset=10_000,
    ),  # fmt: skip
}


def variants_for(setup: NormKindsSetup, net: str, names) -> list[str]:
    """The variants of ``names`` that apply to ``setup.nets[net]`` (``conv_only`` ones need a conv net)."""
    conv = setup.nets[net].conv
    return [v for v in names if conv or not VARIANTS[v].conv_only]


#: More steps than any epoch has: fit writes one ``train`` line per epoch (its mean),
#: at the epoch's end, as the lecture's curves plot.
ONE_LINE_PER_EPOCH = 10**9


def train_config(setup: NormKindsSetup, root: pathlib.Path, net: str, variant: str, seed: int, batch_size: Optional[int] = None) -> TrainConfig:
    """The run of ``(net, variant, seed)``: part 1's when ``batch_size`` is None, else part
    2's at ``batch_size`` (lr scaled); one ``train`` line per epoch, checkpointed at the end.

    Raises:
      ValueError: unknown net or variant, or a conv-only variant on a non-conv net.
    """
    spec, n = lookup(VARIANTS, variant, "variant"), lookup(setup.nets, net, "net")
    if spec.conv_only and not n.conv:
        raise ValueError(f"variant {variant!r} needs a conv net; {net!r} ({n.model}) is not one.")
    part = "curves" if batch_size is None else "bs"
    b = setup.batch_size if batch_size is None else batch_size
    epochs = setup.epochs if batch_size is None else setup.bs_epochs
    kwargs = {**n.kwargs, **n.variant_kwargs.get(variant, {})}
    if spec.weight_reparam != "none":
        kwargs["weight_reparam"] = spec.weight_reparam
    return TrainConfig(
        dataset=setup.dataset, model=n.model, model_kwargs=kwargs, norm=spec.norm, batch_size=b, epochs=epochs,
        learning_rate=setup.learning_rate if batch_size is None else setup.bs_learning_rate(b), momentum=setup.momentum,
        train_subset=setup.subset, eval_splits=("train_eval", setup.eval_split), seed=seed, tag=variant,
        log_every_steps=ONE_LINE_PER_EPOCH, checkpoint_every_epochs=epochs,
        **_study.run_location(root),
        name=analysis.run_name(part, net, variant, seed, batch_size),
    )  # fmt: skip


def _steps_per_epoch(setup: NormKindsSetup, batch_size: int) -> int:
    n = len(load(setup.dataset, "train").labels)
    return steps_per_epoch(n if setup.subset is None else min(setup.subset, n), batch_size)


def _is_bn(variant: str) -> bool:
    spec = norm_spec(VARIANTS[variant].norm)
    return spec is not None and spec.kind == "batch"


def observers(setup: NormKindsSetup, config: TrainConfig, test_batch_sizes, rows_columns: bool) -> list:
    """A BN run's observers at its last step: ``BNEvaluation`` (running / population /
    test-batch statistics) and, with ``rows_columns``, ``NormInputs`` of ``norm1`` on the
    first ``rows_columns_batch`` test examples; none for the other variants."""
    if not _is_bn(config.tag):
        return []
    train, test = load(setup.dataset, "train"), load(setup.dataset, setup.eval_split)
    module = build_model(config, train.num_classes)
    last = _steps_per_epoch(setup, config.batch_size) * config.epochs
    n = len(train.labels) if config.train_subset is None else min(config.train_subset, len(train.labels))
    n = n if setup.population_subset is None else min(setup.population_subset, n)
    out = [
        BNEvaluation(
            module, train.images[:n], test.images, test.labels, train.mean, train.std, every=last,
            population_batch_size=config.batch_size, test_batch_sizes=test_batch_sizes, split=setup.eval_split,
        )
    ]  # fmt: skip
    if rows_columns:
        probe = normalize(test.images[: setup.rows_columns_batch], train.mean, train.std)
        out.append(NormInputs(module, probe, every=last, layers=("norm1",)))
    return out


class NormKindsStudy:
    name = "norm_kinds"
    setups = SETUPS
    default = "digits"

    def add_arguments(self, parser) -> None:
        parser.add_argument("--variants", nargs="+", type=str, help=f"part 1's variants, a subset of {list(VARIANTS)}")
        parser.add_argument("--epochs", type=int, help="part 1's epochs")
        parser.add_argument("--lr", dest="learning_rate", type=float, help="SGD learning rate (at the curves' batch size)")
        parser.add_argument("--batch-sizes", type=int, nargs="+", help="part 2's batch sizes")
        parser.add_argument("--bs-epochs", type=int, help="part 2's epochs")

    def groups(self, setup: NormKindsSetup, seeds, root: pathlib.Path) -> list[RunGroup]:
        setup = dataclasses.replace(setup, variants=tuple(setup.variants), batch_sizes=tuple(setup.batch_sizes))
        out = []
        for net in setup.nets:
            for v in variants_for(setup, net, setup.variants):
                configs = tuple(train_config(setup, root, net, v, s) for s in seeds)
                factory = lambda c=configs[0]: observers(setup, c, setup.eval_batch_sizes, rows_columns=True)
                out.append(RunGroup(configs, observers=factory))
        for net in setup.bs_nets:
            for v in variants_for(setup, net, setup.bs_variants):
                for b in setup.batch_sizes:
                    configs = tuple(train_config(setup, root, net, v, s, b) for s in seeds)
                    factory = lambda c=configs[0], b=b: observers(setup, c, (b,), rows_columns=False)
                    out.append(RunGroup(configs, observers=factory))
        return out

    def analyze(self, setup: NormKindsSetup, root: pathlib.Path) -> str:
        return analysis.analyze(root)


STUDY = NormKindsStudy()


def main(argv=None) -> int:
    return _study.main(STUDY, argv)


if __name__ == "__main__":
    raise SystemExit(main())
