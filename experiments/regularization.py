"""Weight decay and dropout, with and without BatchNorm (source document 003, the
lecture's "Regularization" slides; van Laarhoven 2017, "L2 regularization versus batch
and weight normalization"; Zhang, Wang, Xu & Grosse 2019, "Three mechanisms of weight
decay regularization").

The lecture's claims:

* **weight decay** λ: plain SGD on ``L + λ/2 Σ‖W‖²`` is ``W ← (1 − ηλ) W − η ∇L``: every
  step first shrinks the weights by (1 − ηλ);
* **dropout** p: at training time each activation is zeroed with probability p and the
  kept ones are scaled by 1/(1 − p), so its expectation is unchanged; at test time it is
  the identity;
* both **regularize**: a smaller gap between training and test performance.

The formulas are checked numerically in ``tests/experiments/test_regularization.py``
(one SGD step against the closed form, with the decay in the optimizer and as the L2
term in the loss; dropout's exact 1/(1 − p), its mean over many keys, the identity at
eval). This script measures the rest on a small training subset, where a network
overfits:

1. **Sweep**: every (λ, p) of ``weight_decays`` × ``dropout_rates`` for each ``norm``
   (``vanilla``: no normalization; ``bn_gamma_beta``: standard BatchNorm), one run per
   seed. Plain SGD with the decay λ on the weight kernels only (the output layer's
   included; not biases, γ, β) as an optax transformation whose λ is part of the
   optimizer state (:func:`kernel_weight_decay`), so all (λ, seed) runs of one (norm,
   p) are one vmapped program; the step is :func:`jaxnorm.train.make_train_step` with
   ``fit``'s data order and per-step dropout keys, so a run equals ``fit`` of
   ``TrainConfig(weight_decay=λ, model_kwargs={'dropout_rate': p})`` (checked on a
   quick run: the same test loss to float32 rounding). At the end each run is evaluated
   in eval mode (BN on its running statistics, no dropout) on its training subset and
   on the test split: accuracy and loss, the accuracy gap train − test and the loss gap
   test − train. The runs of one seed share initialization, data order and dropout
   masks, so the report compares settings by paired differences.
2. **Effective learning rate of scale-invariant weights**: a weight layer feeding a
   BatchNorm layer (no bias: the library drops it there) computes the same function for
   W and cW, and its gradient scales as 1/c, so SGD moves the direction W/‖W‖ with an
   effective step η/‖W‖². Without weight decay ‖W‖ can only grow (the gradient is
   orthogonal to W: ‖W − ηg‖² = ‖W‖² + η²‖g‖²); weight decay shrinks it, so for these
   weights it does not restrict the function but raises the effective learning rate.
   The :class:`WeightNorms` observer (the :mod:`jaxnorm.observers` protocol, so
   ``fit`` can run it too) records ‖W‖_F of every kernel every ``record_every`` steps;
   the report shows ‖W‖ and η/‖W‖² of the pre-BN layers per λ, against the pure-decay
   curve (1 − ηλ)^t ‖W₀‖.

    python -m experiments.regularization                   # digits: 2 norms x 4 λ x 4 p x 3 seeds, 360 examples, 2000 SGD steps: 95 s on 2 CPU cores shared with other jobs (load 6; 52 s CPU time)
    python -m experiments.regularization --quick           # 40 steps, 64 examples, λ ∈ {0, 0.01}, p ∈ {0, 0.5}, one seed (smoke): 22 s there (13 s CPU), mostly compiling
    python -m experiments.regularization --config cifar10  # MLP on 5,000 CIFAR-10 images (GPU; tfds-prepared CIFAR-10)
    python -m experiments.regularization --plot-only       # plots + summary.md from the stored files
    python -m experiments.regularization --weight-decays 0 1e-3 3e-2 --dropout-rates 0 0.5 --seeds 0 1   # (flags win over --quick)

Results in ``<results>/regularization/<config>[-quick]/``: one folder per (norm, λ, p,
seed), ``<norm>_wd<λ>_p<p>_s<seed>/``, with ``config.json`` (the study config plus
``norm``, ``weight_decay``, ``dropout_rate``, ``seed``) and ``metrics.jsonl``: lines
``{"kind": "weight_norms", "step", "<layer>": ‖W‖_F, ..., "scale_invariant": [layers]}``
every ``record_every`` steps (step 0 = initialization), ``{"kind": "train", "step",
"loss", "acc", "steps"}`` (cross-entropy and accuracy in training mode, means over the
``steps`` steps before ``step``), at the end ``{"kind": "eval", "split": "train" |
"test", "step", "loss", "acc", "n"}`` (``train`` = the training subset itself), or a
``{"kind": "divergence", "step", "reason"}`` line where the loss became non-finite
(that run is no longer recorded; the others go on). ``plots/gap.png`` (test accuracy,
accuracy gap and loss gap vs λ and vs p, with and without BN; mean ± std over seeds),
``plots/grid.png`` (test accuracy and loss gap over the whole λ × p grid per norm),
``plots/weight_norms.png`` (‖W‖ and η/‖W‖² of the pre-BN layers over training per λ)
and ``plots/summary.md`` (the claims, the paired gap changes and verdicts, the
effective learning rates, the final accuracies table).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import pathlib
import time
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments._cli import stored_runs
from jaxnorm._registry import lookup
from jaxnorm.data import epoch_permutation, load, steps_per_epoch
from jaxnorm.layers import NORMS
from jaxnorm.models import get_model
from jaxnorm.train import TrainState, create_state, layout_eval, make_evaluate, make_train_step
from jaxnorm.objective import is_weight
from jaxnorm.results import RunDir, read_jsonl, rewrite_jsonl, write_json


@dataclasses.dataclass(frozen=True)
class RegularizationConfig:
    """One regularization study: every (λ, p) of ``weight_decays`` × ``dropout_rates``
    for every norm and seed.

    Attributes:
      dataset, train_subset: training data (the first ``train_subset`` examples of the
        ``train`` split; None = all); the test split is evaluated whole.
      model, model_kwargs: the network (``norm`` is set per run, and ``dropout_rate``
        where p > 0: the model must accept it, as ``mlp`` does).
      norms: names from :data:`jaxnorm.layers.NORMS`.
      weight_decays: the λ of ``λ/2 Σ‖W‖²`` over the weight kernels; dropout_rates: p.
      learning_rate, batch_size, steps: plain SGD (no momentum: the lecture's update).
      seeds: one run per seed (initialization, data order and dropout masks).
      record_every: the interval of the weight norms and training records; ``steps``
        must be a multiple of it.
      eval_batch_size: batch size of the final evaluation.
    """

    name: str = "digits"
    dataset: str = "digits"
    train_subset: Optional[int] = 360
    model: str = "mlp"
    model_kwargs: dict = dataclasses.field(default_factory=lambda: {"depth": 3, "width": 128})
    norms: tuple = ("vanilla", "bn_gamma_beta")
    weight_decays: tuple = (0.0, 1e-4, 1e-3, 1e-2)
    dropout_rates: tuple = (0.0, 0.1, 0.3, 0.5)
    learning_rate: float = 0.1
    batch_size: int = 32
    steps: int = 2000
    seeds: tuple = (0, 1, 2)
    record_every: int = 20
    eval_batch_size: int = 500

    def __post_init__(self):
        if not self.norms:
            raise ValueError("norms: need at least one.")
        for n in self.norms:
            lookup(NORMS, n, "norm")
        _check_values("weight_decays", self.weight_decays, lambda v: v >= 0, ">= 0")
        _check_values("dropout_rates", self.dropout_rates, lambda v: 0 <= v < 1, "in [0, 1)")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be finite and > 0, got {self.learning_rate!r}.")
        for f in ("batch_size", "steps", "record_every", "eval_batch_size"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{f} must be an int >= 1, got {v!r}.")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (BatchNorm needs two values per feature), got {self.batch_size}.")
        if self.train_subset is not None and self.train_subset < self.batch_size:
            raise ValueError(f"train_subset ({self.train_subset}) must be >= batch_size ({self.batch_size}).")
        if self.steps % self.record_every:
            raise ValueError(f"steps ({self.steps}) must be a multiple of record_every ({self.record_every}).")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds):
            raise ValueError(f"seeds must be distinct ints >= 0, at least one, got {self.seeds!r}.")

    def quick(self) -> "RegularizationConfig":
        """A smoke run of the whole pipeline: 40 steps on 64 examples, λ ∈ {0, 1e-2},
        p ∈ {0, 0.5}, one seed, a small MLP whatever the config's model."""
        return dataclasses.replace(
            self, name=self.name + "-quick", train_subset=64, batch_size=16, steps=40, seeds=(0,),
            weight_decays=(0.0, 1e-2), dropout_rates=(0.0, 0.5), record_every=10,
            model="mlp", model_kwargs={"depth": 3, "width": 32},
        )  # fmt: skip


def _check_values(name: str, values, ok, what: str) -> None:
    good = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and ok(v)
    if not len(values) or not all(good(v) for v in values) or len(set(values)) != len(values):
        raise ValueError(f"{name} must be a non-empty list of distinct finite numbers {what}, got {values!r}.")


CONFIGS: dict[str, RegularizationConfig] = {
    "digits": RegularizationConfig(),
    # The lecture's setting on a GPU: an MLP on a 5,000-image CIFAR-10 subset, which it
    # overfits heavily. Not yet run here (no GPU with CIFAR-10 prepared): 8 programs (2
    # norms x 4 p) of 10,000 steps, each advancing its 12 runs (4 λ x 3 seeds) at once.
    "cifar10": RegularizationConfig(
        name="cifar10", dataset="cifar10", train_subset=5000, model_kwargs={"depth": 4, "width": 512},
        learning_rate=0.05, batch_size=128, steps=10000, record_every=100, eval_batch_size=1000,
    ),  # fmt: skip
}


def get_config(name: str) -> RegularizationConfig:
    """The registered config ``name`` (ValueError listing the known ones otherwise)."""
    return lookup(CONFIGS, name, "config")


# --------------------------------------------------------------------------- the observer


def _layer(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path[:-1])


def kernels(params) -> dict[str, jax.Array]:
    """The weight kernels by layer path: ``{'dense1': W1, ...}`` (leaves named ``kernel``)."""
    return {_layer(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params) if is_weight(path)}


def scale_invariant_layers(params) -> list[str]:
    """The layers whose kernel feeds a per-feature norm (BatchNorm): those without a bias.

    The models drop a weight layer's bias exactly where a batch (or instance) norm follows
    it (README "One vocabulary of norms"), and such a layer computes the same function
    for W and cW (c > 0): its weights are scale-invariant."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    biased = {_layer(path) for path, _ in leaves if getattr(path[-1], "key", None) == "bias"}
    return sorted(layer for layer in kernels(params) if layer not in biased)


class WeightNorms:
    """An observer (:mod:`jaxnorm.observers`): ‖W‖_F of every weight kernel every
    ``every`` steps, as ``metrics.jsonl`` lines ``{"kind": "weight_norms", "step",
    "<layer>": norm, ..., "scale_invariant": [...]}`` (the annotation names the layers
    whose effective learning rate is η/‖W‖²; see :func:`scale_invariant_layers`)."""

    name = "weight_norms"
    sink = "metrics"

    def __init__(self, every: int, scale_invariant: Sequence[str] = ()):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}.")
        self.every = every
        self.annotations = {"scale_invariant": sorted(scale_invariant)}

    def __call__(self, state) -> dict[str, jax.Array]:
        return {layer: jnp.sqrt(jnp.sum(jnp.square(w.astype(jnp.float32)))) for layer, w in kernels(state.params).items()}


# --------------------------------------------------------------------------- the runs


class KernelDecayState(NamedTuple):
    weight_decay: jax.Array  # λ, a float32 scalar (one per run when runs are stacked)


def kernel_weight_decay() -> optax.GradientTransformation:
    """``g ← g + λ W`` on the weight kernels (leaves named ``kernel``; not biases, γ, β).

    λ lives in the state (0 after ``init``; :func:`with_weight_decay` sets it), so runs
    with different λ share one compiled program. Chained before ``optax.sgd(η)`` it makes
    the step ``W ← W − η(∇L + λW) = (1 − ηλ) W − η ∇L``: the gradient step on ``L +
    λ/2 Σ‖W‖²`` (the lecture's weight decay; ``TrainConfig.weight_decay`` puts the same
    term in the loss instead)."""

    def init(params):
        return KernelDecayState(jnp.zeros((), jnp.float32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("kernel_weight_decay needs the params in update().")
        add = lambda path, g, w: g + state.weight_decay.astype(g.dtype) * w if is_weight(path) else g
        return jax.tree_util.tree_map_with_path(add, updates, params), state

    return optax.GradientTransformation(init, update)


def make_sgd(learning_rate: float) -> optax.GradientTransformationExtraArgs:
    """Plain SGD with :func:`kernel_weight_decay` (λ = 0 until set)."""
    return optax.with_extra_args_support(optax.chain(kernel_weight_decay(), optax.sgd(learning_rate)))


def with_weight_decay(state: TrainState, weight_decay: float) -> TrainState:
    """``state`` (built with :func:`make_sgd`) with λ set."""
    decay, rest = state.opt_state[0], state.opt_state[1:]
    return state.replace(opt_state=(decay._replace(weight_decay=jnp.asarray(weight_decay, jnp.float32)), *rest))


def run_name(norm: str, weight_decay: float, dropout: float, seed: int) -> str:
    return f"{norm}_wd{weight_decay:g}_p{dropout:g}_s{seed}"


def _module(cfg: RegularizationConfig, norm: str, dropout: float, num_classes: int):
    extra = {"dropout_rate": dropout} if dropout > 0 else {}  # p = 0: any model, dropout or not
    return get_model(cfg.model, norm=norm, num_classes=num_classes, **cfg.model_kwargs, **extra)


def _data(cfg: RegularizationConfig):
    """The training subset and the test split (unnormalized, as the train step wants them)."""
    train, test = load(cfg.dataset, "train"), load(cfg.dataset, "test")
    n = len(train.labels) if cfg.train_subset is None else min(cfg.train_subset, len(train.labels))
    if n < cfg.batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the {n} training examples.")
    return train, (train.images[:n], train.labels[:n]), (test.images, test.labels)


@functools.partial(jax.jit, static_argnums=2)
def _epoch_orders(seeds: jax.Array, epochs: jax.Array, n: int) -> jax.Array:
    """``(seeds, epochs, n)``: :func:`jaxnorm.data.epoch_permutation` of every (seed, epoch),
    the data order ``fit`` uses."""
    return jax.vmap(jax.vmap(epoch_permutation, in_axes=(None, 0, None)), in_axes=(0, None, None))(seeds, epochs, n)


def run_norm(cfg: RegularizationConfig, norm: str, root: pathlib.Path, log=print) -> dict:
    """Trains every (λ, p, seed) of one norm, each p as one program advancing all its (λ,
    seed) runs at once; writes each run's folder and returns ``{(λ, p, seed): records}``.

    The runs of one seed share the initialization, the data order and the dropout masks
    (all keyed by the seed, as in :func:`jaxnorm.train.fit`), so the settings are compared
    on paired runs. Every ``record_every`` steps: the weight norms and the mean training
    loss/accuracy of each run, and whether a loss became non-finite (that run's
    ``divergence`` line is written and it is no longer recorded; the others go on)."""
    ds, (x_train, y_train), (x_test, y_test) = _data(cfg)
    n = len(y_train)
    tx = make_sgd(cfg.learning_rate)
    # Dropout has no variables: the dropout-free module initializes (and evaluates) the
    # parameters of every p.
    plain = _module(cfg, norm, 0.0, ds.num_classes)
    runs = [(float(wd), seed) for wd in cfg.weight_decays for seed in cfg.seeds]
    sample = jnp.asarray(x_train[:1])

    # Initialized eagerly, op by op: those small programs are compiled once per shape and
    # shared by every seed and norm, where a jitted init (threefry and all) compiles anew
    # per norm -- the largest compile of a quick run. Kept on the host: every p starts
    # from a fresh device copy (the training chunks donate their input).
    init = {seed: create_state(jax.random.PRNGKey(seed), plain, tx, sample) for seed in cfg.seeds}
    initial = jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get([with_weight_decay(init[seed], wd) for wd, seed in runs]))
    epochs = -(-cfg.steps // steps_per_epoch(n, cfg.batch_size))
    orders = _epoch_orders(jnp.asarray(cfg.seeds, jnp.int32), jnp.arange(epochs, dtype=jnp.int32), n)
    evaluate = _evaluator(plain, ds, (x_train, y_train), (x_test, y_test), cfg.eval_batch_size)
    out = {}
    for p in cfg.dropout_rates:
        module = _module(cfg, norm, float(p), ds.num_classes)
        records, states = _train(cfg, module, tx, jax.device_put(initial), runs, (jnp.asarray(x_train), jnp.asarray(y_train)), orders, ds)
        evals = evaluate(states)
        for i, r in enumerate(runs):
            if not any(x["kind"] == "divergence" for x in records[r]):
                records[r] += [{"kind": "eval", "step": cfg.steps, **e} for e in evals[i]]
            run = RunDir(root / run_name(norm, r[0], float(p), r[1]))
            write_json(run.config, {**dataclasses.asdict(cfg), "norm": norm, "weight_decay": r[0], "dropout_rate": float(p), "seed": r[1]})
            rewrite_jsonl(run.metrics, records[r])
            out[(r[0], float(p), r[1])] = records[r]
        for wd in cfg.weight_decays:
            s = aggregate([records[(float(wd), seed)] for seed in cfg.seeds])
            log(
                f"  {norm:>14s} λ {wd:<6g} p {p:<4g}: train acc {s['train_acc'][0]:.3f}, test acc {s['test_acc'][0]:.3f} "
                f"(gap {s['acc_gap'][0]:+.3f}), loss gap {s['loss_gap'][0]:.3f}, {s['finished']}/{len(cfg.seeds)} finished"
            )
    return out


def _train(cfg: RegularizationConfig, module, tx, states: TrainState, runs: list, data, orders, ds) -> tuple[dict, TrainState]:
    """``cfg.steps`` SGD steps of the stacked runs ``states`` (``runs``: their (λ, seed)),
    ``record_every`` per call; returns ``({run: records}, final states)``."""
    per_epoch = steps_per_epoch(len(data[1]), cfg.batch_size)
    seeds = jnp.asarray([seed for _, seed in runs], jnp.int32)
    seed_index = jnp.asarray([cfg.seeds.index(seed) for _, seed in runs], jnp.int32)
    observer = WeightNorms(cfg.record_every, scale_invariant_layers(states.params))
    step_fn = make_train_step(module, tx, batch_size=cfg.batch_size, mean=ds.mean, std=ds.std)

    def one_run(state, data, orders, index, seed, t):
        epoch, s = t // per_epoch, t % per_epoch
        return step_fn(state, data, orders[index, epoch], seed, epoch, s)

    many = jax.vmap(one_run, in_axes=(0, None, None, 0, 0, None))

    @functools.partial(jax.jit, donate_argnums=(0,))
    def chunk(states, data, orders, start):
        # `record_every` steps per call (fori_loop: compiled once); one host pull per call.
        def body(i, carry):
            states, ce, acc, bad = carry
            states, m = many(states, data, orders, seed_index, seeds, start + i)
            bad = jnp.where((bad < 0) & ~jnp.isfinite(m["ce"]), start + i, bad)
            return states, ce + m["ce"], acc + m["acc"], bad

        zero = jnp.zeros(len(runs), jnp.float32)
        carry = (states, zero, zero, jnp.full(len(runs), -1, jnp.int32))
        states, ce, acc, bad = jax.lax.fori_loop(0, cfg.record_every, body, carry)
        return states, jax.vmap(observer)(states), ce / cfg.record_every, acc / cfg.record_every, bad

    records: dict = {r: [] for r in runs}
    diverged: set = set()

    def norm_lines(step, norms):
        for i, r in enumerate(runs):
            if r not in diverged:
                records[r].append({"kind": observer.name, "step": step, **observer.annotations, **{k: float(v[i]) for k, v in norms.items()}})

    norm_lines(0, {k: np.linalg.norm(np.asarray(w).reshape(len(runs), -1), axis=1) for k, w in kernels(states.params).items()})
    for start in range(0, cfg.steps, cfg.record_every):
        states, *out = chunk(states, data, orders, jnp.int32(start))
        norms, ce, acc, bad = jax.device_get(out)
        end = start + cfg.record_every
        for i, r in enumerate(runs):
            if r in diverged:
                continue
            if bad[i] >= 0:
                diverged.add(r)
                records[r].append({"kind": "divergence", "step": int(bad[i]), "reason": f"non-finite loss at step {int(bad[i])}"})
            else:
                records[r].append({"kind": "train", "step": end, "loss": float(ce[i]), "acc": float(acc[i]), "steps": cfg.record_every})
        norm_lines(end, norms)
    return records, states


def _evaluator(module, ds, train, test, batch_size: int):
    """``evaluate(states)`` -> per stacked run, ``[{"split": "train", "loss", "acc", "n"},
    {"split": "test", ...}]``: eval mode (BN on running statistics, no dropout), both splits in one layout told
    apart by their masks (one compiled program)."""
    n, total = len(train[1]), len(train[1]) + len(test[1])
    batch = min(batch_size, total)
    images, labels, mask = layout_eval(np.concatenate([train[0], test[0]]), np.concatenate([train[1], test[1]]), batch)
    index = layout_eval(np.arange(total), np.arange(total), batch)[0]
    masks = {"train": jnp.asarray(mask * (index < n)), "test": jnp.asarray(mask * (index >= n))}
    laid = jnp.asarray(images), jnp.asarray(labels)
    totals = jax.jit(jax.vmap(make_evaluate(module, mean=ds.mean, std=ds.std), in_axes=(0, None, None, None)))

    def evaluate(states):
        got = {split: jax.device_get(totals(states, *laid, m)) for split, m in masks.items()}
        runs = len(got["train"]["count"])
        line = lambda split, t, i: {
            "split": split, "loss": float(t["loss_sum"][i] / t["count"][i]), "acc": float(t["correct"][i] / t["count"][i]), "n": int(t["count"][i]),
        }  # fmt: skip
        return [[line(split, t, i) for split, t in got.items()] for i in range(runs)]

    return evaluate


# --------------------------------------------------------------------------- summaries


def run_metrics(records: list[dict]) -> dict:
    """One run's final eval numbers (NaN if absent): train/test ``acc`` and ``loss``,
    ``acc_gap`` = train − test accuracy, ``loss_gap`` = test − train loss; ``finished``."""
    ev = {r["split"]: r for r in records if r.get("kind") == "eval"}
    get = lambda split, k: ev[split][k] if split in ev else float("nan")
    out = {f"{split}_{k}": get(split, k) for split in ("train", "test") for k in ("acc", "loss")}
    out["acc_gap"] = out["train_acc"] - out["test_acc"]
    out["loss_gap"] = out["test_loss"] - out["train_loss"]
    out["finished"] = not any(r.get("kind") == "divergence" for r in records) and bool(ev)
    return out


METRICS = ("train_acc", "test_acc", "acc_gap", "train_loss", "test_loss", "loss_gap")


def aggregate(runs: list[list[dict]]) -> dict:
    """Mean and std over the finished runs (seeds) of each of :data:`METRICS`
    (``(mean, std)``, NaN without finished runs), and ``finished`` (the count)."""
    done = [m for m in map(run_metrics, runs) if m["finished"]]
    stat = lambda xs: (float(np.mean(xs)), float(np.std(xs))) if xs else (float("nan"), float("nan"))
    return {**{k: stat([m[k] for m in done]) for k in METRICS}, "finished": len(done)}


def weight_norm_series(records: list[dict]) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """``(steps, {layer: ‖W‖ per step}, scale_invariant layers)`` from a run's records."""
    lines = [r for r in records if r.get("kind") == "weight_norms"]
    if not lines:
        return np.zeros(0), {}, []
    layers = [k for k in lines[0] if k not in ("kind", "step", "scale_invariant")]
    return np.array([r["step"] for r in lines]), {k: np.array([r[k] for r in lines]) for k in layers}, list(lines[0]["scale_invariant"])


def effective_lr(cfg: RegularizationConfig, results: dict, norm: str) -> dict:
    """Per λ (at the smallest p) and scale-invariant layer, means over the seeds that
    finished: ``init`` and ``end`` ‖W‖_F, ``shrink`` = (1 − ηλ)^T ‖W₀‖ (where pure weight
    decay, no gradient, would have taken it in the T recorded steps), ``lr_init`` and
    ``lr_end`` = η/‖W‖². ``{}`` for a norm without scale-invariant layers."""
    out = {}
    eta, p0 = cfg.learning_rate, min(cfg.dropout_rates)
    for wd in cfg.weight_decays:
        runs = [r for (n, w, p, _), r in results.items() if n == norm and w == wd and p == p0 and run_metrics(r)["finished"]]
        series = [s for s in map(weight_norm_series, runs) if s[2]]
        for layer in series[0][2] if series else []:
            mean = lambda f: float(np.mean([f(s[0], s[1][layer]) for s in series]))
            out[(float(wd), layer)] = {
                "init": mean(lambda t, w: w[0]),
                "end": mean(lambda t, w: w[-1]),
                "shrink": mean(lambda t, w: (1 - eta * wd) ** t[-1] * w[0]),
                "lr_init": mean(lambda t, w: eta / w[0] ** 2),
                "lr_end": mean(lambda t, w: eta / w[-1] ** 2),
            }
    return out


def paired_change(results: dict, norm: str, base: tuple, other: tuple, metric: str) -> tuple[float, float, int]:
    """``(mean, std, n)`` over the seeds where both finished of ``metric`` at the setting
    ``other`` minus at ``base`` (settings are ``(λ, p)``): runs of one seed share the
    initialization, the data order and the dropout masks, so the difference is paired."""
    diffs = []
    for (n, wd, p, seed), recs in results.items():
        if n == norm and (wd, p) == base and (norm, *other, seed) in results:
            a, b = run_metrics(recs), run_metrics(results[(norm, *other, seed)])
            if a["finished"] and b["finished"]:
                diffs.append(b[metric] - a[metric])
    return (float(np.mean(diffs)), float(np.std(diffs)), len(diffs)) if diffs else (float("nan"), float("nan"), 0)


def _sweeps(cfg: RegularizationConfig) -> list[tuple[str, str, list[tuple[float, float]], tuple]]:
    """``(name, symbol, settings, values)``: λ at the smallest p, p at the smallest λ."""
    wd0, p0 = min(cfg.weight_decays), min(cfg.dropout_rates)
    return [
        ("weight decay", "λ", [(float(w), float(p0)) for w in cfg.weight_decays], cfg.weight_decays),
        ("dropout", "p", [(float(wd0), float(p)) for p in cfg.dropout_rates], cfg.dropout_rates),
    ]


# --------------------------------------------------------------------------- report


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _by_setting(results: dict) -> dict:
    grouped: dict = {}
    for (norm, wd, p, _), recs in results.items():
        grouped.setdefault((norm, wd, p), []).append(recs)
    return {k: aggregate(v) for k, v in grouped.items()}


def write_report(root: pathlib.Path, cfg: RegularizationConfig, results: dict) -> None:
    """``plots/gap.png``, ``plots/grid.png``, ``plots/weight_norms.png`` and
    ``plots/summary.md`` from the runs' records (``{(norm, λ, p, seed): records}``)."""
    plt = _pyplot()
    plots = root / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    agg = _by_setting(results)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    nan = (math.nan, math.nan)

    rows = (("test_acc", "test accuracy"), ("acc_gap", "accuracy gap: train − test"), ("loss_gap", "loss gap: test − train"))
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 9), squeeze=False)
    for j, (name, sym, keys, values) in enumerate(_sweeps(cfg)):
        fixed = f"dropout {keys[0][1]:g}" if sym == "λ" else f"weight decay {keys[0][0]:g}"
        for i, (metric, ylabel) in enumerate(rows):
            ax = axes[i, j]
            for c, norm in enumerate(cfg.norms):
                stats = [agg.get((norm, *k), {}).get(metric, nan) for k in keys]
                ax.errorbar(range(len(keys)), [s[0] for s in stats], yerr=[s[1] for s in stats], color=cycle[c % len(cycle)], marker="o", capsize=3, label=norm)
            ax.set_xticks(range(len(keys)), [f"{v:g}" for v in values])
            ax.set(xlabel=f"{name} {sym} ({fixed})", ylabel=ylabel)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{cfg.dataset}, {len(cfg.seeds)} seed(s), mean ± std; eval mode (running BN statistics, no dropout)", fontsize=10)
    fig.tight_layout()
    fig.savefig(plots / "gap.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, len(cfg.norms), figsize=(4.6 * len(cfg.norms), 7.4), squeeze=False)
    for j, norm in enumerate(cfg.norms):
        for i, (metric, label, cmap) in enumerate((("test_acc", "test accuracy", "viridis"), ("loss_gap", "loss gap: test − train", "magma_r"))):
            grid = np.array([[agg.get((norm, float(wd), float(p)), {}).get(metric, nan)[0] for p in cfg.dropout_rates] for wd in cfg.weight_decays])
            ax = axes[i, j]
            im = ax.imshow(grid, cmap=cmap, aspect="auto")
            for (r, c), v in np.ndenumerate(grid):
                dark = not math.isnan(v) and (im.norm(v) < 0.5) == (i == 0)  # viridis is dark low, magma_r dark high
                ax.text(c, r, "-" if math.isnan(v) else f"{v:.3f}", ha="center", va="center", fontsize=8, color="w" if dark else "k")
            ax.set_xticks(range(len(cfg.dropout_rates)), [f"{p:g}" for p in cfg.dropout_rates])
            ax.set_yticks(range(len(cfg.weight_decays)), [f"{w:g}" for w in cfg.weight_decays])
            ax.set(xlabel="dropout p", ylabel="weight decay λ", title=f"{norm}: {label}")
            ax.title.set_fontsize(10)
            fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(plots / "grid.png", dpi=110)
    plt.close(fig)

    _plot_weight_norms(plt, plots / "weight_norms.png", cfg, results, cycle)
    (plots / "summary.md").write_text(summary_markdown(cfg, results))


def _plot_weight_norms(plt, path: pathlib.Path, cfg: RegularizationConfig, results: dict, cycle) -> None:
    """Per norm with scale-invariant layers: ‖W‖ over training per λ (smallest p; seed
    mean) with the pure-decay curve (1 − ηλ)^t ‖W₀‖ dotted, and the effective learning
    rate η/‖W‖²; a line style per layer."""
    norms = [n for n in cfg.norms if any(weight_norm_series(r)[2] for (m, _, _, _), r in results.items() if m == n)]
    fig, axes = plt.subplots(max(len(norms), 1), 2, figsize=(11, 4 * max(len(norms), 1)), squeeze=False)
    styles = ("-", "--", "-.")
    p0 = min(cfg.dropout_rates)
    for i, norm in enumerate(norms):
        for c, wd in enumerate(cfg.weight_decays):
            series = [weight_norm_series(r) for (n, w, p, _), r in results.items() if n == norm and w == wd and p == p0]
            series = [s for s in series if len(s[0])]
            if not series:
                continue
            length = min(len(s[0]) for s in series)  # a diverged seed stops early
            steps = series[0][0][:length]
            color = cycle[c % len(cycle)]
            for k, layer in enumerate(series[0][2]):
                norm_w = np.mean([s[1][layer][:length] for s in series], axis=0)
                axes[i, 0].plot(steps, norm_w, color=color, ls=styles[k % len(styles)], label=f"λ = {wd:g}, {layer}")
                axes[i, 1].plot(steps, cfg.learning_rate / norm_w**2, color=color, ls=styles[k % len(styles)])
                if k == 0 and wd > 0:
                    axes[i, 0].plot(steps, norm_w[0] * (1 - cfg.learning_rate * wd) ** steps, color=color, ls=":", lw=1)
        axes[i, 0].set(xlabel="SGD step", ylabel="‖W‖_F", title=f"{norm}: norm of the pre-BN (scale-invariant) kernels; dotted: (1 − ηλ)^t ‖W₀‖")
        title = f"{norm}: effective learning rate η/‖W‖² (η = {cfg.learning_rate:g})"
        axes[i, 1].set(xlabel="SGD step", ylabel="η / ‖W‖²", yscale="log", title=title)
        axes[i, 0].legend(fontsize=7, ncol=2)
        for ax in axes[i]:
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
    if not norms:
        axes[0, 0].text(0.5, 0.5, "no run with scale-invariant (pre-BN) layers", ha="center", transform=axes[0, 0].transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(stat, digits: int = 3, sign: bool = False) -> str:
    mean, std = stat[:2]
    return "-" if math.isnan(mean) else f"{mean:{'+' if sign else ''}.{digits}f} ± {std:.{digits}f}"


def _verdict(change: tuple) -> str:
    mean, std = change[:2]
    # A change within the seed spread of the paired differences is no change.
    return "no clear change" if abs(mean) <= std else ("smaller" if mean < 0 else "larger")


def summary_markdown(cfg: RegularizationConfig, results: dict) -> str:
    """The claims, the paired gap changes with their verdicts, the effective learning
    rates of the pre-BN layers and the final accuracies table, as markdown."""
    agg = _by_setting(results)
    n_seeds = len(cfg.seeds)
    lines = [
        f"# Weight decay and dropout, with and without BatchNorm: {cfg.name}",
        "",
        f"{cfg.model} {cfg.model_kwargs} on the first {cfg.train_subset or 'all'} training examples of {cfg.dataset}; plain SGD, "
        f"η = {cfg.learning_rate:g}, batch {cfg.batch_size}, {cfg.steps} steps; every (λ, p) of λ ∈ {{{', '.join(f'{w:g}' for w in cfg.weight_decays)}}} "
        f"× p ∈ {{{', '.join(f'{p:g}' for p in cfg.dropout_rates)}}}, {n_seeds} seed(s) each. Final numbers in eval mode "
        "(BN on running statistics, no dropout); train = the training subset itself; gaps: accuracy train − test, loss test − train.",
        "",
        "**Claims.** Lecture (source 003): weight decay shrinks the weights by (1 − ηλ) every step (plain SGD on the L2 "
        "penalty λ/2 Σ‖W‖²); dropout zeroes activations with probability p and scales the kept ones by 1/(1 − p); both "
        "regularize: a smaller train − test gap. van Laarhoven 2017, Zhang et al. 2019: weights feeding a BN layer are "
        "scale-invariant, so weight decay does not restrict the function they compute; it shrinks ‖W‖ and so raises their "
        "effective learning rate η/‖W‖². The update and dropout formulas are checked numerically in "
        "`tests/experiments/test_regularization.py` (one SGD step against the closed form; dropout's exact 1/(1 − p), "
        "its mean over 4,000 keys, the identity at eval).",
        "",
        "## Does regularization shrink the gap?",
        "",
        "Changes from the unregularized setting, paired by seed (same initialization, data order and dropout masks): "
        "mean ± std over seeds.",
        "",
        "| norm | change | Δ test acc | Δ acc gap | Δ loss gap |",
        "|---|---|---:|---:|---:|",
    ]
    verdicts = []
    for norm in cfg.norms:
        for name, sym, keys, _ in _sweeps(cfg):
            base, said = keys[0], []
            for other in keys[1:]:
                d = {m: paired_change(results, norm, base, other, m) for m in ("test_acc", "acc_gap", "loss_gap")}
                lo, hi = (base[0], other[0]) if sym == "λ" else (base[1], other[1])
                cells = " | ".join(_fmt(d[m], 3, sign=True) for m in ("test_acc", "acc_gap", "loss_gap"))
                lines.append(f"| {norm} | {sym} {lo:g} → {hi:g} | {cells} |")
                if d["acc_gap"][2]:
                    said.append(f"{sym} = {hi:g}: accuracy gap {_verdict(d['acc_gap'])}, loss gap {_verdict(d['loss_gap'])}")
            if said:
                verdicts.append(f"- {norm}, {name}: " + "; ".join(said) + ".")
    lines += [
        "",
        "Verdicts (\"no clear change\": |mean| ≤ std of the paired differences over seeds):",
        "",
        *verdicts,
        "",
        "## Scale-invariant (pre-BN) weights under weight decay",
        "",
    ]
    any_si = False
    for norm in cfg.norms:
        eff = effective_lr(cfg, results, norm)
        if not eff:
            continue
        any_si = True
        lines += [
            f"{norm} (dropout {min(cfg.dropout_rates):g}), seed means: ‖W‖_F at initialization and after the last step T, "
            "where pure decay would have taken it ((1 − ηλ)^T ‖W₀‖), and the effective learning rate η/‖W‖². "
            "(The output layer feeds no BN, so there weight decay does act on the function.)",
            "",
            "| λ | layer | ‖W‖ init | ‖W‖ end | (1 − ηλ)^T ‖W₀‖ | η/‖W‖² init | η/‖W‖² end | end vs λ = 0 |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for (wd, layer), e in eff.items():
            ref = eff.get((min(map(float, cfg.weight_decays)), layer))
            ratio = f"{e['lr_end'] / ref['lr_end']:.2f}x" if ref else "-"
            lines.append(
                f"| {wd:g} | {layer} | {e['init']:.3g} | {e['end']:.3g} | {e['shrink']:.3g} | {e['lr_init']:.3g} | {e['lr_end']:.3g} | {ratio} |"
            )
        lines.append("")
        for layer in sorted({layer for _, layer in eff}):
            got = [(wd, eff[(wd, layer)]) for wd in map(float, cfg.weight_decays) if (wd, layer) in eff]
            ends = [e["end"] for _, e in got]
            monotone = all(x > y for x, y in zip(ends, ends[1:]))
            lines.append(
                f"- {layer}: final ‖W‖ {' → '.join(f'{x:.3g}' for x in ends)} over λ = {', '.join(f'{wd:g}' for wd, _ in got)}: "
                + ("falls with every larger λ, so the effective learning rate η/‖W‖² rises with λ" if monotone else "not monotone in λ")
                + f" ({got[-1][1]['lr_end'] / got[0][1]['lr_end']:.3g}x from the smallest to the largest λ)."
            )
        lines.append("")
    if not any_si:
        lines += ["No run has scale-invariant (pre-BN) layers.", ""]
    lines += [
        "## Final accuracies and losses",
        "",
        "| norm | λ | p | train acc | test acc | acc gap | train loss | test loss | loss gap | finished |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (norm, wd, p), s in sorted(agg.items(), key=lambda kv: (cfg.norms.index(kv[0][0]), kv[0][2], kv[0][1])):
        cells = " | ".join(_fmt(s[k], 3 if "acc" in k else 4) for k in METRICS)
        lines.append(f"| {norm} | {wd:g} | {p:g} | {cells} | {s['finished']}/{n_seeds} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- entry point


def _stored(root: pathlib.Path, cfg: RegularizationConfig) -> dict:
    out = {}
    for norm in cfg.norms:
        for p in cfg.dropout_rates:
            for wd in cfg.weight_decays:
                for seed in cfg.seeds:
                    path = RunDir(root / run_name(norm, float(wd), float(p), seed)).metrics
                    if path.exists():
                        out[(norm, float(wd), float(p), seed)] = read_jsonl(path)
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="digits", help=f"one of {sorted(CONFIGS)}")
    p.add_argument("--quick", action="store_true", help="a few steps on a small subset (tests)")
    p.add_argument("--norms", nargs="+", help="norms to compare")
    p.add_argument("--weight-decays", type=float, nargs="+", help="the λ values")
    p.add_argument("--dropout-rates", type=float, nargs="+", help="the p values")
    p.add_argument("--seeds", type=int, nargs="+", help="one run per seed")
    p.add_argument("--steps", type=int, help="SGD steps per run")
    p.add_argument("--lr", type=float, help="SGD learning rate")
    p.add_argument("--plot-only", action="store_true", help="plots + summary.md from the stored files")
    p.add_argument("--results", default="results", help="results folder")
    args = p.parse_args(argv)
    tuples = {"norms": args.norms, "weight_decays": args.weight_decays, "dropout_rates": args.dropout_rates, "seeds": args.seeds}
    changes = {k: tuple(v) for k, v in tuples.items() if v is not None}
    changes.update({k: v for k, v in {"steps": args.steps, "learning_rate": args.lr}.items() if v is not None})
    cfg = get_config(args.config)
    cfg = dataclasses.replace(cfg.quick() if args.quick else cfg, **changes)  # explicit flags win over --quick
    root = pathlib.Path(args.results) / "regularization" / cfg.name
    t0 = time.time()
    if args.plot_only:
        results = stored_runs(_stored(root, cfg), root)
    else:
        print(
            f"regularization {cfg.name}: {len(cfg.norms)} norms x {len(cfg.weight_decays)} λ x {len(cfg.dropout_rates)} p "
            f"x {len(cfg.seeds)} seeds, {cfg.steps} steps"
        )
        results = {}
        for norm in cfg.norms:
            for (wd, drop, seed), recs in run_norm(cfg, norm, root).items():
                results[(norm, wd, drop, seed)] = recs
    write_report(root, cfg, results)
    print(f"done in {time.time() - t0:.1f} s; plots and summary.md in {root / 'plots'}")


if __name__ == "__main__":
    main()
