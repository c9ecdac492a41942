"""LayerNorm vs BatchNorm, and the other normalizations (source document 003, slides
"Layer normalization", "LayerNorm illustration", "Batch normalization", "Minibatch
dependence"; Ba et al. 2016, Ioffe & Szegedy 2015, Wu & He 2018, Ulyanov et al. 2016,
Salimans & Kingma 2016, Qiao et al. 2019).

The lecture: LayerNorm normalizes the *rows* of a layer's activation matrix (each
example over its features), BatchNorm its *columns* (each feature over the minibatch);
for a plain fully connected net LayerNorm is "harder to train to low loss"; BatchNorm
makes an example's prediction depend on its batch, so at test time it normalizes with
running averages of the statistics. Batch-independent norms (layer, group, instance,
weight normalization, weight standardization) do not depend on the batch size, which
BatchNorm does (it degrades at small batches; Wu & He 2018, Fig. 1). Three parts:

1. **curves**: every normalization of :data:`VARIANTS` trains on each net of the config
   (an MLP and a small ConvNet on digits) with the same SGD: training loss/accuracy per
   epoch (training mode, the objective SGD sees), and after each epoch the training-set
   loss and the test accuracy in eval mode (BN on its running averages). "Trains to low
   loss less easily" is read off the epoch-1 loss, the final eval-mode training loss
   and the first epoch at which that is <= ``loss_target``. Instance norm is for conv nets only: on an MLP each "instance"
   statistic would be over one value per channel (the library refuses it). Weight
   standardization goes with GroupNorm (``ws_group``; Qiao et al.'s pairing, and it
   needs a following norm: it fixes the kernel's scale at unit variance per fan-in);
   weight normalization stands alone (``weight_norm``: no norm layer, ``w = g v/‖v‖`` in
   every weight layer, g initialized to ‖v‖ so the network starts as the plain one).
   The rows-vs-columns check: the first hidden layer's pre-norm activations Z of a test
   batch of the trained BN MLP, normalized by ``layer_norm`` and by BN's batch statistics
   (no γ/β): the largest |mean| and |std − 1| over rows and over columns.
2. **batch_size**: ``none``, ``batch``, ``layer``, ``group`` trained on
   ``bs_nets`` at each of ``batch_sizes`` for the same number of epochs (so the same
   examples seen: small batches take more, noisier steps), the learning rate scaled
   linearly with the batch size (Goyal et al. 2017, as Wu & He do; ``lr_scaling``),
   the reference being the curves' batch size; final test accuracy vs batch size.
3. **eval_stats** (BN only): the BatchNorm nets of parts 1 and 2 evaluated with
   (a) the running averages (momentum 0.9, unbiased variance), (b) exact population
   statistics (:func:`population_batch_stats`: Ioffe & Szegedy's Alg. 2 -- every BN
   layer's input over one epoch of training batches of the training batch size in
   training mode, mean of the batch means and m/(m−1) times the mean of the batch
   variances, :func:`jaxnorm.norms.population_stats`), (c) the statistics of each test
   batch itself (training-mode BN on the batch, nothing updated) at the test batch sizes
   ``eval_batch_sizes`` (the test set in a fixed random order, so batches are not
   sorted by class; an incomplete last batch is dropped). Part 2's nets get (c) at
   their own training batch size.

    python -m experiments.norm_kinds                  # digits, MLP + ConvNet, 41 runs: 100 s on 2 CPU cores (141 s of CPU; 220 s with other jobs on them)
    python -m experiments.norm_kinds --quick          # a 3-layer BN MLP, 2 epochs, 256 examples, 2 runs (tests): ~8 s
    python -m experiments.norm_kinds --config cifar10 # 3C3D + MLP on CIFAR-10 (GPU; tfds-prepared CIFAR-10)
    python -m experiments.norm_kinds --plot-only      # plots + summary.md from the stored files

Results in ``<results>/norm_kinds/<config>[-quick]/``: ``curves/<net>/<variant>/`` and
``batch_size/<net>/<variant>_b<B>/``, each with ``config.json`` (the study config plus
``net``, ``variant``, ``norm``, ``weight_reparam``, ``batch_size``, ``learning_rate``)
and ``metrics.jsonl``: lines ``{"kind": "train", "epoch", "step", "loss", "accuracy"}``
(training-mode means over the epoch), ``{"kind": "eval", "epoch", "step", "split",
"loss", "accuracy"}`` (eval mode after each epoch; ``split`` ``"train"`` -- the first
``train_eval_subset`` training examples -- and the held-out split), ``{"kind": "divergence", "step",
"reason"}`` where the loss became non-finite (that run stops; the study goes on),
``{"kind": "eval_stats", "method": "running"|"population"|"batch", "batch_size",
"split", "loss", "accuracy", "n"}`` (BN nets; ``batch_size`` is the test batch for
``batch``, None otherwise) and, for the curves' BN MLP, ``{"kind": "rows_columns",
"norm": "layer"|"batch", "rows_mean", "rows_std", "cols_mean", "cols_std"}`` (largest
|mean| and |std − 1|). ``plots/curves.png`` (a column per net; rows: training loss in
training mode, training-set loss in eval mode, training accuracy, test accuracy, per
epoch), ``plots/batch_size.png`` (final test accuracy vs
batch size, a panel per net), ``plots/eval_stats.png`` (test accuracy per BN evaluation
method vs test batch size for part 1's nets; vs training batch size for part 2's) and
``plots/summary.md`` (the claims and the measured numbers).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import pathlib
import time
from typing import Callable, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments._cli import report_done, study_config
from experiments.smoothness import _pyplot
from jaxnorm import norms
from jaxnorm._registry import lookup
from jaxnorm.data import load, steps_per_epoch
from jaxnorm.layers import Norm
from jaxnorm.models import get_model
from jaxnorm.objective import accuracy, cross_entropy
from jaxnorm.results import RunDir, read_jsonl, rewrite_jsonl, write_json


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

#: The BatchNorm evaluation methods (part 3), in plotting order.
EVAL_METHODS = ("running", "population", "batch")


@dataclasses.dataclass(frozen=True)
class Net:
    """A network of the study: a registered model, its options (``norm`` and
    ``weight_reparam`` set per variant), whether it is convolutional (instance norm), and
    per-variant option overrides (``{variant: {option: value}}``, e.g. 3C3D's instance
    norm on the conv layers only: its normalized dense layers have one value per
    statistic)."""

    model: str
    kwargs: dict = dataclasses.field(default_factory=dict)
    conv: bool = False
    variant_kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class NormKindsConfig:
    """One normalization-kinds study.

    Attributes:
      dataset, subset: training data (``subset``: the first n examples; None = all);
        eval_split: the held-out split (test accuracy); train_eval_subset: the eval-mode
        training loss/accuracy after each epoch on the first n training examples (None: all).
      nets: ``{name: Net}``; variants: names from :data:`VARIANTS` (``conv_only`` ones are
        skipped on non-conv nets).
      learning_rate, momentum, batch_size, epochs: part 1's SGD (optax heavy-ball momentum).
      loss_target: "trained to low loss": the first epoch whose eval-mode training loss
        is at most this (summary).
      bs_nets, bs_variants, batch_sizes, bs_epochs: part 2 (names from ``nets`` and
        :data:`VARIANTS`); lr_scaling: a name from :data:`LR_SCALINGS`, the reference
        batch size being ``batch_size``.
      eval_batch_sizes: part 3's test batch sizes (each >= 2; larger than the split:
        the whole split).
      rows_columns_batch: the test batch of the rows-vs-columns check.
      seed: initialization, data order and the test set's order for batch statistics.
    """

    name: str = "digits"
    dataset: str = "digits"
    subset: Optional[int] = None
    eval_split: str = "test"
    train_eval_subset: Optional[int] = None
    nets: dict = dataclasses.field(
        default_factory=lambda: {
            # A plain ReLU FCN (the lecture's network), He init; groups of 16 units for GroupNorm.
            "mlp": Net("mlp", {"depth": 4, "width": 128, "norm_options": {"num_groups": 8}}),
            # A small plain ConvNet (6 weight layers, 8 channels, 8x8 -> 4x4, He init); GroupNorm
            # with 2 groups of 4 channels. 8 channels, not 16: XLA's CPU convolutions take 6x
            # longer per epoch at 16 (measured: 0.36 vs 2.0 s per epoch of batch 64).
            "convnet": Net("convnet", {"depth": 6, "width": 8, "stages": 2, "norm_options": {"num_groups": 2}}, conv=True),
        }
    )
    variants: tuple = ("none", "batch", "layer", "group", "instance", "weight_norm", "ws_group")
    # Both nets reach ~97% test accuracy in 15 epochs at 0.05 (at 0.02 the ConvNet is
    # still at 93% without normalization).
    learning_rate: float = 0.05
    momentum: float = 0.9
    batch_size: int = 64
    epochs: int = 15
    loss_target: float = 0.05
    # The MLP only: its 28 runs compile and train in about a minute on 2 CPU cores, the
    # ConvNet's would take three.
    bs_nets: tuple = ("mlp",)
    bs_variants: tuple = ("none", "batch", "layer", "group")
    batch_sizes: tuple = (2, 4, 8, 16, 32, 64, 128)
    bs_epochs: int = 8
    lr_scaling: str = "linear"
    eval_batch_sizes: tuple = (2, 4, 8, 16, 32, 64, 128, 359)
    rows_columns_batch: int = 64
    seed: int = 0

    def __post_init__(self):
        if not self.nets:
            raise ValueError("nets: need at least one.")
        for name, net in self.nets.items():
            if not isinstance(net, Net):
                raise ValueError(f"nets[{name!r}] must be a Net, got {net!r}.")
        if not self.variants:
            raise ValueError("variants: need at least one.")
        for v in (*self.variants, *self.bs_variants):
            lookup(VARIANTS, v, "variant")
        for n in self.bs_nets:
            lookup(self.nets, n, "net (bs_nets)")
        lookup(LR_SCALINGS, self.lr_scaling, "lr_scaling")
        for what, sizes in (("batch_sizes", self.batch_sizes), ("eval_batch_sizes", self.eval_batch_sizes)):
            if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 2 for b in sizes):
                raise ValueError(f"{what} must be ints >= 2 (BatchNorm needs two values per feature), got {sizes!r}.")
        for what, b in (("batch_size", self.batch_size), ("rows_columns_batch", self.rows_columns_batch)):
            if isinstance(b, bool) or not isinstance(b, int) or b < 2:
                raise ValueError(f"{what} must be an int >= 2 (BatchNorm needs two values per feature), got {b!r}.")
        for what, e in (("epochs", self.epochs), ("bs_epochs", self.bs_epochs)):
            if isinstance(e, bool) or not isinstance(e, int) or e < 1:
                raise ValueError(f"{what} must be an int >= 1, got {e!r}.")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be finite and > 0, got {self.learning_rate!r}.")
        if not (math.isfinite(self.loss_target) and self.loss_target > 0):
            raise ValueError(f"loss_target must be finite and > 0, got {self.loss_target!r}.")
        if self.train_eval_subset is not None and self.train_eval_subset < 1:
            raise ValueError(f"train_eval_subset must be None or >= 1, got {self.train_eval_subset!r}.")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}.")

    def bs_learning_rate(self, batch_size: int) -> float:
        """Part 2's learning rate at ``batch_size`` (``lr_scaling`` from ``batch_size``)."""
        return LR_SCALINGS[self.lr_scaling](self.learning_rate, batch_size, self.batch_size)

    def quick(self) -> "NormKindsConfig":
        """A smoke run of the whole pipeline for the tests: 256 examples, 2 epochs, a
        3-layer MLP of 16 units with BN; part 2 with BN at batch 4. Compiling dominates
        on a CPU (about a second per training run), so it has two runs; the code paths do
        not depend on the net or the variant."""
        return dataclasses.replace(
            self, name=self.name + "-quick", subset=256, epochs=2, bs_epochs=2, batch_size=16,
            nets={"mlp": Net("mlp", {"depth": 3, "width": 16, "norm_options": {"num_groups": 4}})},
            variants=("batch",), bs_nets=("mlp",), bs_variants=("batch",), batch_sizes=(4,),
            eval_batch_sizes=(16,), rows_columns_batch=16,
        )  # fmt: skip


CONFIGS: dict[str, NormKindsConfig] = {
    "digits": NormKindsConfig(),
    # The lecture's setting on a GPU: an MLP and DeepOBS 3C3D on CIFAR-10 (40k training
    # images); 3C3D's GroupNorm with 32 groups (its 64/96/128 channels and 512/256
    # units), its instance norm after the three convs only; lr 0.005 with momentum 0.9
    # (not tuned). Not run here (no GPU with CIFAR-10 prepared). 3C3D on digits32 (the
    # same net on 32x32x3 digits) does train on 2 CPU cores, at ~40 s per epoch of 1,438
    # images: far too slow for the default. Not timed on a GPU; part 2's batch-2 and
    # batch-4 runs (20k and 10k steps per epoch) will take most of the time.
    "cifar10": NormKindsConfig(
        name="cifar10", dataset="cifar10", train_eval_subset=10_000,
        nets={
            "mlp": Net("mlp", {"depth": 4, "width": 512, "norm_options": {"num_groups": 32}}),
            "3c3d": Net("3c3d", {"norm_options": {"num_groups": 32}}, conv=True, variant_kwargs={"instance": {"bn_positions": (1, 1, 1, 0, 0, 0)}}),
        },
        learning_rate=0.005, batch_size=128, epochs=30, bs_nets=("3c3d",), bs_epochs=5,
        eval_batch_sizes=(2, 4, 8, 16, 32, 64, 128, 256, 1024),
    ),  # fmt: skip
}


def get_config(name: str) -> NormKindsConfig:
    """The registered config ``name`` (ValueError listing the known ones otherwise)."""
    return lookup(CONFIGS, name, "config")


def variants_for(cfg: NormKindsConfig, net: str, names: Sequence[str]) -> list[str]:
    """The variants of ``names`` that apply to ``cfg.nets[net]`` (``conv_only`` ones need a conv net)."""
    conv = cfg.nets[net].conv
    return [v for v in names if conv or not VARIANTS[v].conv_only]


# --------------------------------------------------------------------------- data, model


def data_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """int32 ``(n,)``: the order in which epoch ``epoch`` visits ``n`` examples, a NumPy
    permutation keyed by ``(seed, epoch)`` (host-side: an eager JAX permutation would
    compile a program for every run)."""
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Data:
    """The normalized training and held-out arrays on the device; the held-out split also
    in a fixed random order (see :func:`load_data`) for test-batch statistics, whose
    batches must not follow the split's stored order (it may be sorted by class)."""

    x: jax.Array
    y: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    x_test_shuffled: jax.Array
    y_test_shuffled: jax.Array
    num_classes: int


def load_data(cfg: NormKindsConfig) -> Data:
    """The training split (first ``subset`` examples) and ``eval_split``, normalized with
    the training set's per-channel mean and std (on the host, once); the shuffled
    held-out copy in the order ``np.random.default_rng(seed + 1).permutation``."""
    train, test = load(cfg.dataset, "train"), load(cfg.dataset, cfg.eval_split)
    n = len(train.labels) if cfg.subset is None else min(cfg.subset, len(train.labels))
    prep = lambda images: ((np.asarray(images, np.float32) - np.asarray(train.mean, np.float32)) / np.asarray(train.std, np.float32))
    x_test, y_test = prep(test.images), np.asarray(test.labels)
    perm = np.random.default_rng(cfg.seed + 1).permutation(len(y_test))
    arrays = (prep(train.images[:n]), np.asarray(train.labels[:n]), x_test, y_test, x_test[perm], y_test[perm])
    return Data(*map(jnp.asarray, arrays), train.num_classes)


def build(cfg: NormKindsConfig, net: str, variant: str, num_classes: int) -> nn.Module:
    """The flax module of ``net`` with ``variant``'s normalization.

    Raises:
      ValueError: unknown net or variant, or a conv-only variant on a non-conv net.
    """
    spec, n = lookup(VARIANTS, variant, "variant"), lookup(cfg.nets, net, "net")
    if spec.conv_only and not n.conv:
        raise ValueError(f"variant {variant!r} needs a conv net; {net!r} ({n.model}) is not one.")
    kwargs = {**n.kwargs, **n.variant_kwargs.get(variant, {})}
    return get_model(n.model, norm=spec.norm, weight_reparam=spec.weight_reparam, num_classes=num_classes, **kwargs)


def _loss_acc(logits, y):
    return jnp.mean(cross_entropy(logits, y)), jnp.mean(accuracy(logits, y))


# --------------------------------------------------------------------------- BN statistics


def _batch_norm_inputs(module: nn.Module, variables, x) -> dict:
    """``{path: input}`` of every BatchNorm layer in a training-mode forward pass of ``x``."""
    captured = {}

    def capture(next_fun, args, kwargs, ctx):
        if isinstance(ctx.module, Norm) and ctx.method_name == "__call__" and ctx.module.kind == "batch":
            captured[tuple(ctx.module.path)] = args[0]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(capture):
        module.apply(variables, x, train=True, mutable=["batch_stats"])
    return captured


def population_batch_stats(module: nn.Module, variables, x: jax.Array, batch_size: int, seed: int = 0) -> dict:
    """Exact inference statistics of every BatchNorm layer (Ioffe & Szegedy 2015, Alg. 2).

    The training examples ``x``, in the order :func:`data_order` ``(seed, 0)``, go
    through the network in training mode in batches of ``batch_size`` (the incomplete
    last batch dropped), each BN layer normalizing with the statistics of its batch as in
    training (nothing is updated); every BN layer's inputs feed a
    :class:`jaxnorm.norms.PopulationAccumulator`: mean = the mean of the batch means,
    var = m/(m − 1) × the mean of the biased batch variances, m the values per feature
    of a batch (:func:`jaxnorm.norms.population_stats`). With ``batch_size = len(x)``
    (one batch) they are the training set's mean and unbiased variance of each layer's
    input.

    Returns:
      a ``batch_stats`` collection shaped like ``variables['batch_stats']``, with the
      population ``mean``/``var`` in place of the running averages.

    Raises:
      ValueError: ``batch_size`` < 2 or larger than ``len(x)``; a model without BatchNorm.
    """
    n = len(x)
    if not 2 <= batch_size <= n:
        raise ValueError(f"population statistics need 2 <= batch_size <= {n} (the examples), got {batch_size}.")
    if not variables.get("batch_stats"):
        raise ValueError("population statistics: the model has no BatchNorm layer (no batch_stats).")
    steps = n // batch_size
    idx = data_order(seed, 0, n)[: steps * batch_size].reshape(steps, batch_size)

    @jax.jit
    def run(variables, x, idx):
        batches = x[idx]
        shapes = jax.eval_shape(lambda b: _batch_norm_inputs(module, variables, b), batches[0])
        init = {p: norms.PopulationAccumulator.init(s.shape[-1]) for p, s in shapes.items()}

        def body(accs, b):
            inputs = _batch_norm_inputs(module, variables, b)
            return {p: acc.update(inputs[p]) for p, acc in accs.items()}, None

        accs, _ = jax.lax.scan(body, init, batches)
        return {p: acc.result() for p, acc in accs.items()}

    stats = run(variables, x, idx)
    out = flax.core.unfreeze(variables["batch_stats"])  # a copy: the caller's tree stays as it was
    for path, s in stats.items():
        node = out
        for key in path:
            node = node[key]
        node["mean"], node["var"] = s.mean, s.var
    return out


def evaluator(module: nn.Module) -> Callable[..., dict]:
    """``evaluate(variables, x, y, *, mode='running', batch_size=None) -> {'loss', 'accuracy', 'n'}``
    for ``module``: mean loss and accuracy on ``(x, y)``, jitted once per (mode, batch
    size, shapes).

    Modes: ``'running'`` -- eval mode (BN on the ``batch_stats`` given: running averages
    or population statistics); the examples are independent, ``batch_size`` only chunks
    the work (None: one chunk; the last chunk is padded and the padding not counted).
    ``'batch'`` -- training-mode BN on consecutive batches of ``batch_size``, each
    normalized by its own statistics (nothing is updated); the incomplete last batch is
    dropped, ``n`` counts the examples evaluated.

    Raises (when called):
      ValueError: unknown mode; ``'batch'`` without 2 <= batch_size <= len(x).
    """

    def logits_running(variables, xs):
        return jax.lax.map(lambda xb: module.apply(variables, xb, train=False), xs)

    def logits_batch(variables, xs):
        return jax.lax.map(lambda xb: module.apply(variables, xb, train=True, mutable=["batch_stats"])[0], xs)

    @functools.partial(jax.jit, static_argnames=("batch_mode", "k", "b", "n"))
    def metrics(variables, x, y, batch_mode: bool, k: int, b: int, n: int):
        # Pad (eval mode) or cut (batch mode) to k batches of b inside the jitted call:
        # eager slicing would compile a program of its own for every shape.
        x = jnp.concatenate([x, jnp.zeros((max(k * b - len(x), 0),) + x.shape[1:], x.dtype)])[: k * b]
        logits = (logits_batch if batch_mode else logits_running)(variables, x.reshape((k, b) + x.shape[1:]))
        return _loss_acc(logits.reshape((-1, logits.shape[-1]))[:n], y[:n])

    def evaluate(variables, x, y, *, mode: str = "running", batch_size: Optional[int] = None) -> dict:
        n = len(y)
        if mode == "running":
            b = n if batch_size is None else min(batch_size, n)
            k = -(-n // b)
        elif mode == "batch":
            if batch_size is None or not 2 <= batch_size <= n:
                raise ValueError(f"batch-statistics evaluation needs 2 <= batch_size <= {n}, got {batch_size}.")
            b, k = batch_size, n // batch_size
            n = k * b
        else:
            raise ValueError(f"evaluation mode must be 'running' or 'batch', got {mode!r}.")
        loss, acc = metrics(variables, x, y, mode == "batch", k, b, n)
        return {"loss": float(loss), "accuracy": float(acc), "n": int(n)}

    return evaluate


def eval_stats_records(cfg: NormKindsConfig, module, variables, data: Data, train_batch: int, test_batches: Sequence[int]) -> list[dict]:
    """Part 3 for one trained BN net: ``eval_stats`` records of the running averages, the
    population statistics (training batches of ``train_batch``) and test-batch statistics
    at each of ``test_batches`` (clipped to the split; the split in a fixed random order)."""
    split = cfg.eval_split
    ev = evaluator(module)
    records = [{"kind": "eval_stats", "method": "running", "batch_size": None, "split": split, **ev(variables, data.x_test, data.y_test)}]
    pop = {**variables, "batch_stats": population_batch_stats(module, variables, data.x, min(train_batch, len(data.y)), cfg.seed)}
    records.append({"kind": "eval_stats", "method": "population", "batch_size": None, "split": split, **ev(pop, data.x_test, data.y_test)})
    n = len(data.y_test)
    x, y = data.x_test_shuffled, data.y_test_shuffled
    for b in sorted({min(b, n) for b in test_batches}):
        r = ev(variables, x, y, mode="batch", batch_size=b)
        records.append({"kind": "eval_stats", "method": "batch", "batch_size": b, "split": split, **r})
    return records


def rows_columns_records(cfg: NormKindsConfig, module, variables, data: Data) -> list[dict]:
    """The lecture's picture, measured: the input Z (batch × features) of the first norm
    layer (``norm1``) on ``rows_columns_batch`` test examples (the test split's stored
    order), normalized per row by :func:`jaxnorm.norms.layer_norm` and per column by
    :func:`jaxnorm.norms.batch_norm` (training mode, no γ/β). Returns one
    ``rows_columns`` record per normalization: the largest |mean| and |std − 1| over the
    rows and over the columns; none if the net has no ``norm1`` or Z is not a matrix."""

    def first_norm_input(variables, x):
        z = {}

        def capture(next_fun, args, kwargs, ctx):
            if isinstance(ctx.module, Norm) and ctx.module.path == ("norm1",):
                z["z"] = args[0]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(capture):
            module.apply(variables, x, train=True, mutable=["batch_stats"])
        return z

    z = jax.jit(first_norm_input)(variables, data.x_test[: cfg.rows_columns_batch]).get("z")
    if z is None or z.ndim != 2:
        return []
    normalized = {
        "layer": jax.jit(norms.layer_norm)(z),
        "batch": jax.jit(lambda z: norms.batch_norm(z, norms.BatchStats.init(z.shape[-1]), train=True)[0])(z),
    }
    out = []
    for name, h in normalized.items():
        h = np.asarray(h, np.float64)
        out.append({
            "kind": "rows_columns", "norm": name,
            "rows_mean": float(np.abs(h.mean(axis=1)).max()), "rows_std": float(np.abs(h.std(axis=1) - 1).max()),
            "cols_mean": float(np.abs(h.mean(axis=0)).max()), "cols_std": float(np.abs(h.std(axis=0) - 1).max()),
        })  # fmt: skip
    return out


# --------------------------------------------------------------------------- one run


def train_run(cfg: NormKindsConfig, net: str, variant: str, batch_size: int, learning_rate: float, epochs: int, data: Data, run: RunDir):
    """Trains one (net, variant, batch size) with SGD (momentum ``cfg.momentum``); writes
    ``config.json`` and ``metrics.jsonl`` to ``run`` and returns ``(records, module,
    variables)``. Per epoch (one jitted call, a ``fori_loop`` over its steps): a
    ``train`` record and two ``eval`` records (training set and held-out split, eval
    mode); or a ``divergence`` record, and the run stops."""
    module = build(cfg, net, variant, data.num_classes)
    n = len(data.y)
    per_epoch = steps_per_epoch(n, batch_size)
    # Eager, not jitted: its small ops compile once per shape and are shared by every
    # run of the net, where a jitted init would compile the whole initializer per run.
    variables = module.init(jax.random.PRNGKey(cfg.seed), data.x[:2], train=False)
    params, stats = variables["params"], variables.get("batch_stats", {})
    tx = optax.sgd(learning_rate, momentum=cfg.momentum or None)
    opt = tx.init(params)
    # The examples of every step, drawn up front (epoch e: a permutation keyed by (seed, e)).
    order = np.stack([data_order(cfg.seed, e, n)[: per_epoch * batch_size].reshape(per_epoch, batch_size) for e in range(epochs)])

    def objective(params, stats, x, y):
        logits, new = module.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
        loss, acc = _loss_acc(logits, y)
        return loss, (new.get("batch_stats", {}), acc)

    k = n if cfg.train_eval_subset is None else min(cfg.train_eval_subset, n)

    @jax.jit
    def epoch(params, stats, opt, idx, x, y, x_test, y_test):
        def step(i, carry):
            params, stats, opt, loss_sum, acc_sum = carry
            xb, yb = x[idx[i]], y[idx[i]]
            (loss, (stats, acc)), g = jax.value_and_grad(objective, has_aux=True)(params, stats, xb, yb)
            updates, opt = tx.update(g, opt, params)
            return optax.apply_updates(params, updates), stats, opt, loss_sum + loss, acc_sum + acc

        zero = jnp.zeros((), jnp.float32)
        params, stats, opt, loss_sum, acc_sum = jax.lax.fori_loop(0, per_epoch, step, (params, stats, opt, zero, zero))
        predict = lambda x: module.apply({"params": params, "batch_stats": stats}, x, train=False)
        evals = {"train": _loss_acc(predict(x[:k]), y[:k]), "test": _loss_acc(predict(x_test), y_test)}
        return params, stats, opt, loss_sum / per_epoch, acc_sum / per_epoch, evals

    spec = VARIANTS[variant]
    write_json(run.config, {
        **dataclasses.asdict(cfg), "net": net, "variant": variant, "norm": spec.norm, "weight_reparam": spec.weight_reparam,
        "batch_size": batch_size, "learning_rate": learning_rate, "epochs": epochs,
    })  # fmt: skip
    records: list[dict] = []
    for e in range(epochs):
        params, stats, opt, loss, acc, evals = epoch(params, stats, opt, order[e], data.x, data.y, data.x_test, data.y_test)
        loss, acc = float(loss), float(acc)
        step = (e + 1) * per_epoch
        # The eval losses too: a last step that blows the weights up leaves the epoch's
        # mean training loss finite.
        losses = {"training loss": loss, **{f"eval-mode {split} loss": float(v[0]) for split, v in evals.items()}}
        bad = [what for what, v in losses.items() if not math.isfinite(v)]
        if bad:
            records.append({"kind": "divergence", "step": step, "reason": f"non-finite {', '.join(bad)} in epoch {e + 1}"})
            break
        records.append({"kind": "train", "epoch": e + 1, "step": step, "loss": loss, "accuracy": acc})
        for split, (l, a) in (("train", evals["train"]), (cfg.eval_split, evals["test"])):
            records.append({"kind": "eval", "epoch": e + 1, "step": step, "split": split, "loss": float(l), "accuracy": float(a)})
    rewrite_jsonl(run.metrics, records)
    return records, module, {"params": params, "batch_stats": stats} if stats else {"params": params}


def run_curves(cfg: NormKindsConfig, net: str, variant: str, data: Data, root: pathlib.Path, log=print) -> list[dict]:
    """Part 1 for one (net, variant): trains, then (BN) part 3's evaluations and, where
    the first norm layer's input is a matrix (MLPs), the rows-vs-columns check; writes
    and returns the records."""
    run = RunDir(root / "curves" / net / variant)
    records, module, variables = train_run(cfg, net, variant, cfg.batch_size, cfg.learning_rate, cfg.epochs, data, run)
    if not _diverged(records):
        if "batch_stats" in variables:
            records += eval_stats_records(cfg, module, variables, data, cfg.batch_size, cfg.eval_batch_sizes)
            records += rows_columns_records(cfg, module, variables, data)
        rewrite_jsonl(run.metrics, records)
    s = summarize(records, cfg.loss_target)
    log(f"  {net:>8s} {variant:>11s}: final train loss {s['train_loss']:.4f} acc {s['train_accuracy']:.3f}, test acc {s['test_accuracy']:.3f} (best {s['best_test_accuracy']:.3f}), {s['status']}")
    return records


def run_batch_size(cfg: NormKindsConfig, net: str, variant: str, batch_size: int, data: Data, root: pathlib.Path, log=print) -> list[dict]:
    """Part 2 for one (net, variant, batch size); BN nets also get part 3's evaluations
    with test batches of the training batch size."""
    run = RunDir(root / "batch_size" / net / f"{variant}_b{batch_size}")
    lr = cfg.bs_learning_rate(batch_size)
    records, module, variables = train_run(cfg, net, variant, batch_size, lr, cfg.bs_epochs, data, run)
    if not _diverged(records) and "batch_stats" in variables:
        records += eval_stats_records(cfg, module, variables, data, batch_size, (batch_size,))
        rewrite_jsonl(run.metrics, records)
    s = summarize(records)
    log(f"  {net:>8s} {variant:>6s} b{batch_size:<4d} lr {lr:<8.3g}: final train loss {s['train_loss']:.4f}, test acc {s['test_accuracy']:.3f}, {s['status']}")
    return records


def _diverged(records: list[dict]) -> bool:
    return any(r.get("kind") == "divergence" for r in records)


# --------------------------------------------------------------------------- report


def summarize(records: list[dict], loss_target: float = 0.05) -> dict:
    """One run's numbers: ``first_loss`` (training-mode loss of epoch 1), ``train_loss`` /
    ``train_accuracy`` (training mode, last epoch), ``train_eval_loss`` (eval mode on the
    training set, last epoch), ``epochs_to_target`` (first epoch whose eval-mode training
    loss is <= ``loss_target``; None if none), ``test_accuracy`` (last) and
    ``best_test_accuracy`` (held-out split), the ``eval_stats`` accuracies (``running``,
    ``population``, ``batch@<b>``) and ``status``. NaN where there are no such records."""
    nan = float("nan")
    train = [r for r in records if r.get("kind") == "train"]
    train_eval = [r for r in records if r.get("kind") == "eval" and r["split"] == "train"]
    test = [r for r in records if r.get("kind") == "eval" and r["split"] != "train"]
    reached = [r["epoch"] for r in train_eval if r["loss"] <= loss_target]
    out = {
        "first_loss": train[0]["loss"] if train else nan,
        "train_loss": train[-1]["loss"] if train else nan,
        "train_accuracy": train[-1]["accuracy"] if train else nan,
        "train_eval_loss": train_eval[-1]["loss"] if train_eval else nan,
        "epochs_to_target": reached[0] if reached else None,
        "test_accuracy": test[-1]["accuracy"] if test else nan,
        "best_test_accuracy": max(r["accuracy"] for r in test) if test else nan,
        "status": "diverged" if _diverged(records) else "finished",
    }
    for r in records:
        if r.get("kind") == "eval_stats":
            out[r["method"] if r["batch_size"] is None else f"batch@{r['batch_size']}"] = r["accuracy"]
    return out


def _colors(plt) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {v: cycle[i % len(cycle)] for i, v in enumerate(VARIANTS)}


# The rows of curves.png: (record kind, split or None, value, y label, log scale).
_CURVE_ROWS = (
    ("train", None, "loss", "training loss (training mode, epoch mean)", True),
    ("eval", "train", "loss", "training-set loss (eval mode)", True),
    ("train", None, "accuracy", "training accuracy (training mode)", False),
    ("eval", "test", "accuracy", "test accuracy (eval mode)", False),
)


def _plot_curves(plt, path, cfg, curves) -> None:
    nets = list(cfg.nets)
    colors = _colors(plt)
    fig, axes = plt.subplots(len(_CURVE_ROWS), len(nets), figsize=(5.5 * len(nets), 12), squeeze=False, sharex="col")
    for j, net in enumerate(nets):
        for variant in variants_for(cfg, net, cfg.variants):
            recs = curves.get((net, variant), [])
            for i, (kind, split, key, _, _) in enumerate(_CURVE_ROWS):
                split = cfg.eval_split if split == "test" else split
                rows = [r for r in recs if r["kind"] == kind and r.get("split") == split]
                axes[i, j].plot([r["epoch"] for r in rows], [r[key] for r in rows], color=colors[variant], label=variant)
        for i, (_, split, _, label, log) in enumerate(_CURVE_ROWS):
            axes[i, j].set_ylabel(label.replace("test", cfg.eval_split) if split == "test" else label)
            if log:
                axes[i, j].set_yscale("log")
        if cfg.loss_target:
            axes[1, j].axhline(cfg.loss_target, color="gray", ls=":", lw=1)
        axes[0, j].set_title(f"{net}: {cfg.nets[net].model} {cfg.nets[net].kwargs}", fontsize=8)
        axes[-1, j].set_xlabel("epoch")
        axes[0, j].legend(fontsize=7)
    fig.suptitle(f"{cfg.dataset}: SGD lr {cfg.learning_rate:g}, momentum {cfg.momentum:g}, batch {cfg.batch_size}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_batch_size(plt, path, cfg, sweep) -> None:
    colors = _colors(plt)
    fig, axes = plt.subplots(1, len(cfg.bs_nets), figsize=(6.5 * len(cfg.bs_nets), 4.2), squeeze=False)
    for ax, net in zip(axes[0], cfg.bs_nets):
        for variant in variants_for(cfg, net, cfg.bs_variants):
            pts = [(b, summarize(sweep.get((net, variant, b), []))["test_accuracy"]) for b in cfg.batch_sizes]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colors[variant], label=f"{variant} ({VARIANTS[variant].label})")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="batch size", ylabel=f"final {cfg.eval_split} accuracy (eval mode)")
        ax.set_title(f"{net}: {cfg.bs_epochs} epochs at every batch size, lr {cfg.lr_scaling} in it ({cfg.learning_rate:g} at {cfg.batch_size})", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_METHOD_STYLE = {"running": ("C0", "-", "running averages"), "population": ("C2", "--", "population statistics"), "batch": ("C3", "-", "test-batch statistics")}


def _eval_stats(records: list[dict], method: str) -> list[dict]:
    return [r for r in records if r.get("kind") == "eval_stats" and r["method"] == method]


def _plot_eval_stats(plt, path, cfg, curves, sweep) -> None:
    panels = [("curves", n) for n in cfg.nets if (n, "batch") in curves]
    panels += [("sweep", n) for n in cfg.bs_nets if any((n, "batch", b) in sweep for b in cfg.batch_sizes)]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 4.2), squeeze=False)
    for ax, (part, net) in zip(axes[0], panels):
        if part == "curves":
            recs = curves[(net, "batch")]
            for m in ("running", "population"):
                color, ls, label = _METHOD_STYLE[m]
                for r in _eval_stats(recs, m):
                    ax.axhline(r["accuracy"], color=color, ls=ls, label=label)
            color, _, label = _METHOD_STYLE["batch"]
            rows = _eval_stats(recs, "batch")
            ax.plot([r["batch_size"] for r in rows], [r["accuracy"] for r in rows], "o-", color=color, label=label)
            ax.set(xlabel="test batch size", title=f"{net}: BN trained at batch {cfg.batch_size}")
        else:
            for m in EVAL_METHODS:
                color, ls, label = _METHOD_STYLE[m]
                pts = [(b, r["accuracy"]) for b in cfg.batch_sizes for r in _eval_stats(sweep.get((net, "batch", b), []), m)]
                label += " (test batch = training batch)" if m == "batch" else ""
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o" + ls, color=color, label=label)
            ax.set(xlabel="training batch size", title=f"{net}: BN nets of the batch-size sweep")
        ax.set_xscale("log", base=2)
        ax.set_ylabel(f"{cfg.eval_split} accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(root: pathlib.Path, cfg: NormKindsConfig, curves: dict, sweep: dict) -> None:
    """``plots/curves.png``, ``batch_size.png``, ``eval_stats.png`` and ``summary.md`` from
    the records (``curves``: ``{(net, variant): records}``; ``sweep``: ``{(net, variant,
    batch_size): records}``)."""
    plt = _pyplot()
    plots = root / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    _plot_curves(plt, plots / "curves.png", cfg, curves)
    _plot_batch_size(plt, plots / "batch_size.png", cfg, sweep)
    _plot_eval_stats(plt, plots / "eval_stats.png", cfg, curves, sweep)
    (plots / "summary.md").write_text(summary_markdown(cfg, curves, sweep))


def _f(x, spec=".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _curves_section(cfg: NormKindsConfig, curves: dict) -> list[str]:
    s = {k: summarize(v, cfg.loss_target) for k, v in curves.items()}
    lines = [
        "## 1. Training curves (`curves.png`)",
        "",
        "Claim (lecture, \"LayerNorm illustration\"): for a standard fully connected net, LayerNorm makes the network "
        "harder to train to low loss (the relative norms of the examples, which it removes, are a useful discriminative "
        "feature).",
        "",
        f"| net | variant | epoch-1 loss | final loss (training mode) | final training-set loss (eval mode) | epochs to ≤ {cfg.loss_target:g} "
        f"| final train acc | final {cfg.eval_split} acc | best {cfg.eval_split} acc | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (net, variant), t in s.items():
        lines.append(
            f"| {net} | {variant} | {_f(t['first_loss'], '.3f')} | {_f(t['train_loss'], '.3g')} | {_f(t['train_eval_loss'], '.3g')} | "
            f"{_f(t['epochs_to_target'], 'd')} | {_f(t['train_accuracy'])} | {_f(t['test_accuracy'])} | {_f(t['best_test_accuracy'])} | {t['status']} |"
        )
    lines.append("")
    measures = (
        ("epoch-1 loss", "first_loss", ".3f"),
        ("final eval-mode training loss", "train_eval_loss", ".3g"),
        (f"epochs to ≤ {cfg.loss_target:g}", "epochs_to_target", "d"),
    )
    for net in cfg.nets:
        if (net, "layer") in s and (net, "batch") in s:
            ln, bn, none = s[(net, "layer")], s[(net, "batch")], s.get((net, "none"), {})
            key = lambda t, k: math.inf if t.get(k) is None else t[k]
            behind = [what for what, k, _ in measures if key(ln, k) > key(bn, k)]
            behind_none = [what for what, k, _ in measures if key(ln, k) > key(none, k)] if none else []
            verdict = (
                f"LayerNorm is behind BatchNorm on {len(behind)} of the 3 ({', '.join(behind)})" if behind else "LayerNorm is not behind BatchNorm on any of them"
            ) + (f", and behind no normalization on {len(behind_none)} of the 3" if none else "")
            lines.append(
                f"- {net}, LayerNorm vs BatchNorm" + (" (no normalization)" if none else "") + ": "
                + "; ".join(
                    f"{what} {_f(ln.get(k), spec)} vs {_f(bn.get(k), spec)}" + (f" ({_f(none.get(k), spec)})" if none else "")
                    for what, k, spec in measures
                )
                + f". {verdict}."
            )
    if any(v == "layer" for _, v in s):
        lines.append(
            "- One seed; a difference of an epoch or a factor below 2 in a loss that small is within what another seed "
            "could change. The lecture's LayerNorm follows the activation and has no γ/β; here every norm sits before the "
            "ReLU with learned γ/β (the library's convention)."
        )
    for net in cfg.nets:
        # Highest first; ties keep the config's order.
        ranked = sorted(((t["test_accuracy"], v) for (n, v), t in s.items() if n == net and t["status"] == "finished"), key=lambda r: -r[0])
        if ranked:
            lines.append(f"- {net}, final {cfg.eval_split} accuracy from the highest: " + ", ".join(f"{v} {_f(a)}" for a, v in ranked) + ".")
    lines.append("")
    rc = [(net, r) for (net, _), recs in curves.items() for r in recs if r.get("kind") == "rows_columns"]
    if rc:
        lines += [
            "Rows vs columns: the first norm layer's input Z (batch × features) of the trained BN net on "
            f"{cfg.rows_columns_batch} {cfg.eval_split} examples, normalized without γ/β; largest |mean| and |std − 1|.",
            "",
            "| net | normalized by | rows: max abs mean | rows: max abs(std − 1) | columns: max abs mean | columns: max abs(std − 1) |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for net, r in rc:
            lines.append(f"| {net} | {r['norm']} | {r['rows_mean']:.2g} | {r['rows_std']:.2g} | {r['cols_mean']:.2g} | {r['cols_std']:.2g} |")
        lines += ["", "LayerNorm standardizes each row (example), BatchNorm each column (feature over the batch); neither touches the other direction."]
    return lines + [""]


def _batch_size_section(cfg: NormKindsConfig, sweep: dict) -> list[str]:
    lo, hi = min(cfg.batch_sizes), max(cfg.batch_sizes)
    lines = [
        "## 2. Batch size (`batch_size.png`)",
        "",
        "Claim: BatchNorm depends on the batch size and degrades at small batches; the batch-independent norms do not. "
        f"{cfg.bs_epochs} epochs at every batch size (the same examples seen), lr {cfg.lr_scaling} in the batch size "
        f"({cfg.learning_rate:g} at batch {cfg.batch_size}). Final {cfg.eval_split} accuracy (eval mode):",
        "",
        "| net | variant | " + " | ".join(f"b{b}" for b in cfg.batch_sizes) + f" | b{lo} − b{hi} |",
        "|---|---|" + "---:|" * (len(cfg.batch_sizes) + 1),
    ]
    change = {}
    for net in cfg.bs_nets:
        for variant in variants_for(cfg, net, cfg.bs_variants):
            accs = [summarize(sweep.get((net, variant, b), []))["test_accuracy"] for b in cfg.batch_sizes]
            change[(net, variant)] = accs[0] - accs[-1]
            lines.append(f"| {net} | {variant} | " + " | ".join(_f(a) for a in accs) + f" | {_f(accs[0] - accs[-1], '+.3f')} |")
    lines.append("")
    for net in cfg.bs_nets:
        others = {v: d for (n, v), d in change.items() if n == net and v != "batch"}
        if (net, "batch") not in change or not others or lo == hi:
            continue
        holds = change[(net, "batch")] < min(others.values())
        lines.append(
            f"- {net}: from batch {hi} to {lo} BatchNorm's accuracy changes by {_f(change[(net, 'batch')], '+.3f')}, the others' by "
            + ", ".join(f"{v} {_f(d, '+.3f')}" for v, d in others.items())
            + (": BatchNorm degrades most, as claimed." if holds else ": BatchNorm is not the one that degrades most here.")
        )
        t = summarize(sweep.get((net, "batch", lo), []))
        if "population" in t:
            cause = (
                "the running averages account for much of it"
                if t["population"] - t["running"] > 0.05
                else "the damage is done in training (a network trained on batches of that size), not by the running averages"
            )
            lines.append(
                f"- {net}, BN at batch {lo}: final training-mode loss {_f(t['train_loss'], '.3g')}; {cfg.eval_split} accuracy "
                f"{_f(t['running'])} with the running averages, {_f(t['population'])} with exact population statistics: {cause}."
            )
    return lines + [""]


def _eval_stats_section(cfg: NormKindsConfig, curves: dict, sweep: dict) -> list[str]:
    lines = [
        "## 3. BatchNorm's evaluation statistics (`eval_stats.png`)",
        "",
        "Claim: at test time BatchNorm normalizes with running averages of the training statistics, so that a prediction "
        "does not depend on the rest of the test batch. Compared: the running averages (momentum 0.9), exact population "
        "statistics (Ioffe & Szegedy's Alg. 2 over one epoch of training batches of the training batch size), and each "
        f"test batch's own statistics ({cfg.eval_split} set in a fixed random order).",
        "",
    ]
    nets = [n for n in cfg.nets if _eval_stats(curves.get((n, "batch"), []), "running")]
    sizes = sorted({r["batch_size"] for n in nets for r in _eval_stats(curves[(n, "batch")], "batch")})
    if nets:
        lines += [
            "| BN net | running | population | " + " | ".join(f"test batch {b}" for b in sizes) + " |",
            "|---|---:|---:|" + "---:|" * len(sizes),
        ]
        for net in nets:
            t = summarize(curves[(net, "batch")])
            lines.append(
                f"| {net} (trained at b{cfg.batch_size}) | {_f(t['running'])} | {_f(t['population'])} | "
                + " | ".join(_f(t.get(f"batch@{b}")) for b in sizes) + " |"
            )
        lines.append("")
    rows = [(net, b, summarize(sweep[(net, "batch", b)])) for net in cfg.bs_nets for b in cfg.batch_sizes if (net, "batch", b) in sweep]
    rows = [r for r in rows if "running" in r[2]]
    if rows:
        lines += [
            "BN nets of the batch-size sweep, each evaluated the three ways (test-batch statistics at the training batch size):",
            "",
            "| net | training batch | running | population | test-batch statistics |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [f"| {net} | {b} | {_f(t['running'])} | {_f(t['population'])} | {_f(t.get(f'batch@{b}'))} |" for net, b, t in rows]
        lines.append("")
    for net in nets:
        t = summarize(curves[(net, "batch")])
        worse = [b for b in sizes if t[f"batch@{b}"] < t["running"] - 0.01]
        lines.append(
            f"- {net}: running averages {_f(t['running'])} vs population statistics {_f(t['population'])} "
            f"(difference {_f(t['population'] - t['running'], '+.3f')}); test-batch statistics are more than 0.01 below "
            + (f"the running averages at test batches {', '.join(map(str, worse))} (batch {sizes[0]}: {_f(t[f'batch@{sizes[0]}'])})" if worse else "them at no test batch size")
            + ": predictions made from the test batch's own statistics depend on the batch, and small test batches hurt."
        )
    return lines + [""] if nets else lines


def summary_markdown(cfg: NormKindsConfig, curves: dict, sweep: dict) -> str:
    """The lecture's claims, a table per part, and what the numbers say about each claim."""
    head = [
        f"# LayerNorm vs BatchNorm and the other normalizations: {cfg.name}",
        "",
        f"{cfg.dataset}" + (f" (first {cfg.subset} training examples)" if cfg.subset else "")
        + f"; SGD with momentum {cfg.momentum:g}; curves: batch {cfg.batch_size}, lr {cfg.learning_rate:g}, {cfg.epochs} epochs. "
        "Norm layers sit between each hidden weight layer and its ReLU (γ and β learned); `weight_norm` has no norm layer; "
        "`ws_group` is weight standardization with GroupNorm. Training-mode numbers are means over an epoch (BN on batch "
        "statistics); eval mode uses BN's running averages.",
        "",
    ]
    return "\n".join(head + _curves_section(cfg, curves) + _batch_size_section(cfg, sweep) + _eval_stats_section(cfg, curves, sweep)) + "\n"


# --------------------------------------------------------------------------- main


def _stored(root: pathlib.Path, cfg: NormKindsConfig) -> tuple[dict, dict]:
    curves, sweep = {}, {}
    for net in cfg.nets:
        for v in variants_for(cfg, net, cfg.variants):
            path = RunDir(root / "curves" / net / v).metrics
            if path.exists():
                curves[(net, v)] = read_jsonl(path)
    for net in cfg.bs_nets:
        for v in variants_for(cfg, net, cfg.bs_variants):
            for b in cfg.batch_sizes:
                path = RunDir(root / "batch_size" / net / f"{v}_b{b}").metrics
                if path.exists():
                    sweep[(net, v, b)] = read_jsonl(path)
    return curves, sweep


def run_study(cfg: NormKindsConfig, root: pathlib.Path, log=print) -> tuple[dict, dict]:
    """Parts 1-3 for every net, variant and batch size of ``cfg``; returns ``(curves, sweep)``."""
    data = load_data(cfg)
    log(f"norm_kinds {cfg.name}: {len(data.y)} training examples; part 1 (curves)")
    curves = {(net, v): run_curves(cfg, net, v, data, root, log) for net in cfg.nets for v in variants_for(cfg, net, cfg.variants)}
    log("part 2 (batch size)")
    sweep = {
        (net, v, b): run_batch_size(cfg, net, v, b, data, root, log)
        for net in cfg.bs_nets for v in variants_for(cfg, net, cfg.bs_variants) for b in cfg.batch_sizes
    }  # fmt: skip
    return curves, sweep


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="digits", help=f"one of {sorted(CONFIGS)}")
    p.add_argument("--quick", action="store_true", help="tiny nets, 2 epochs on 256 examples (tests)")
    p.add_argument("--variants", nargs="+", help=f"part 1's variants, a subset of {list(VARIANTS)}")
    p.add_argument("--epochs", type=int, help="part 1's epochs")
    p.add_argument("--lr", type=float, help="SGD learning rate (at the curves' batch size)")
    p.add_argument("--batch-sizes", type=int, nargs="+", help="part 2's batch sizes")
    p.add_argument("--bs-epochs", type=int, help="part 2's epochs")
    p.add_argument("--plot-only", action="store_true", help="plots + summary.md from the stored files")
    p.add_argument("--results", default="results", help="results folder")
    args = p.parse_args(argv)
    changes = {
        "variants": tuple(args.variants) if args.variants else None,
        "epochs": args.epochs,
        "learning_rate": args.lr,
        "batch_sizes": tuple(args.batch_sizes) if args.batch_sizes else None,
        "bs_epochs": args.bs_epochs,
    }
    cfg = study_config(get_config(args.config), changes, quick=args.quick)
    root = pathlib.Path(args.results) / "norm_kinds" / cfg.name
    t0 = time.time()
    if args.plot_only:
        curves, sweep = _stored(root, cfg)
        if not curves and not sweep:
            raise ValueError(f"--plot-only: no stored runs under {root}.")
    else:
        curves, sweep = run_study(cfg, root)
    write_report(root, cfg, curves, sweep)
    report_done(t0, root)


if __name__ == "__main__":
    main()
