"""Initialization scale in a deep ReLU MLP, with and without normalization (the lecture,
source document 003, "Initialization vs. optimization"; REFERENCE.md §4).

The lecture's claims, for a deep ReLU MLP with ``W_i ~ N(0, c/n)`` (n = fan-in) trained
with vanilla SGD and no normalization: ``c = 3`` gives NaN, ``c = 2`` trains, ``c = 1``
makes no progress; and "the effects/scales present at initialization *persist*
throughout training": each layer's weight norm stays about where initialization put it.
Why: with zero biases, ``E[mean(z_{i+1}^2)] = (c/2) mean(z_i^2)`` for ``z = relu(W z)``
(half of a symmetric pre-activation is cut), so over D layers the activations -- and
the gradients, which pass back through the same matrices -- scale like ``(c/2)^(D/2)``:
``c = 2`` preserves them, ``c = 1`` makes them vanish, ``c = 3`` explode.

For each normalization (``vanilla``; BatchNorm ``bn_gamma_beta``; LayerNorm ``layer``,
after every hidden dense layer) and each ``c`` the study trains
``get_model('mlp', depth, width, activation='relu', kernel_init='scaled_normal',
kernel_init_kwargs={'c': c}, norm=...)`` with plain minibatch SGD ``w <- w - lr ∇L_B(w)``
(no momentum, no weight decay; one learning rate for every run, so c is the only
difference within a norm), and records:

* the training loss (mean over every ``every`` steps; the loss of the first step at
  step 0), classified by :func:`classify` as ``diverged``, ``no progress`` or ``trained``;
* on a fixed probe batch of training images (BN on the probe batch's statistics), at
  initialization and every ``probe_every`` steps (:func:`layer_probe`): per layer the RMS
  of its output (after the activation for hidden layers, the logits for the last),
  ``‖∂L/∂W_i‖_F`` and ``‖W_i‖_F``;
* the per-layer weight-norm ratio ``‖W_T‖_F / ‖W_0‖_F`` after training;
* the held-out loss and accuracy (BN on running statistics) of every run that did not diverge.

A run whose training loss becomes non-finite or explodes (the :func:`classify` rule)
stops there with a ``divergence`` record; the study goes on.

    python -m experiments.init_scale                 # digits, 50 layers x 128, 1000 SGD steps, 9 runs: 2.5 min on 2 CPU cores shared (load 5; 90 s CPU)
    python -m experiments.init_scale --quick         # 3 layers (2 hidden of 16), 20 steps, 9 runs: ~15 s (mostly compiling)
    python -m experiments.init_scale --scales 1 1.5 2 2.5 3 --norms vanilla
    python -m experiments.init_scale --config mnist  # the lecture's MNIST setting (a GPU; tfds-prepared MNIST)
    python -m experiments.init_scale --plot-only     # plots + summary.md from the stored files

Why 50 x 128 at lr 0.005 for 1000 steps on digits: depth 50 is the lecture's regime (the
c = 1 signal is down by 2^(-24.5) ≈ 4e-8 at the logits, the c = 3 one up by 1.5^24.5 ≈
2e4); at width 64 a c = 2 net was still at loss ~1.4 after 600 steps, at 128 it reaches
~0.4 in 1000; lr 0.01 already made the c = 2 curve erratic, 0.02 stalled it.

Results in ``<results>/init_scale/<config>[-quick]/``, per run ``<norm>_c<c>/`` with
``config.json`` (the study config plus ``norm`` and ``c``), ``metrics.jsonl`` (lines
``{"kind": "train", "step", "loss", "accuracy"}``, ``{"kind": "probe", "step", "loss",
"accuracy"}`` on the probe batch (null where non-finite), ``{"kind": "divergence",
"step", "reason"}``, ``{"kind": "eval", "split", "loss", "accuracy"}``) and
``layer_norms.npz``: ``steps`` ``(P,)`` (the probe steps, 0 first), ``activation_rms``,
``grad_norm``, ``weight_norm`` ``(P, D)`` (layer 1..D along the second axis),
``weight_ratio`` ``(D,)`` (‖W_T‖/‖W_0‖; NaN for a diverged run). ``plots/``:
``loss.png`` (a panel per norm, a line per c), ``layers_init.png`` (activation RMS and
gradient norm vs layer at initialization, log scale), ``layers_training.png`` (the same
profiles at initialization and at the end of training),
``weight_ratio.png`` (‖W_T‖/‖W_0‖ per layer) and ``summary.md`` (the claims, the outcome
table norm × c, the init profile against the (c/2)^(D/2) law, the weight-norm ratios).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import pathlib
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments._cli import report_done, stored_runs, study_config
from experiments.smoothness import _data, _pyplot, _sub
from jaxnorm._registry import lookup
from jaxnorm.data import epoch_permutation, steps_per_epoch
from jaxnorm.layers import NORMS, get_activation
from jaxnorm.models import get_model
from jaxnorm.objective import accuracy, cross_entropy
from jaxnorm.results import RunDir, read_json, read_jsonl, read_npz, rewrite_jsonl, write_json, write_npz

# --------------------------------------------------------------------------- outcome

#: What :func:`classify` returns.
OUTCOMES = ("diverged", "no progress", "trained")

#: Thresholds of :func:`classify` (defaults of :class:`InitScaleConfig` too).
EXPLODE_FACTOR = 10.0
PROGRESS_FRACTION = 0.1
TAIL_FRACTION = 0.1


def classify(
    losses: Sequence[float],
    *,
    chance: Optional[float] = None,
    explode_factor: float = EXPLODE_FACTOR,
    progress_fraction: float = PROGRESS_FRACTION,
    tail_fraction: float = TAIL_FRACTION,
) -> str:
    """The outcome of a training-loss curve: one of :data:`OUTCOMES`, ``'diverged'``,
    ``'no progress'`` or ``'trained'``.

    Args:
      losses: ``(T,)`` loss values in training order, ``losses[0]`` the initial loss;
        finite values must be ≥ 0 (a cross-entropy); NaN/±inf are allowed.
      chance: the chance-level loss (``ln K`` for K balanced classes), or None.
      explode_factor: > 1.
      progress_fraction: in (0, 1).
      tail_fraction: in (0, 1]: the share of the curve averaged as its final value.

    The rule, in order:

    * **diverged**: any value is non-finite, or any value exceeds ``explode_factor`` ×
      ``max(losses[0], chance)`` (an explosion SGD may not have turned into NaN yet);
    * **no progress**: the final loss -- the mean of the last
      ``max(1, round(tail_fraction · T))`` values, so one noisy step decides nothing --
      is above ``(1 − progress_fraction)`` × the reference ``min(losses[0], chance)``:
      it did not get ``progress_fraction`` below where it started *and* below chance (a
      run starting far above chance, e.g. at c = 3, must still beat chance). A curve of
      one value has made no progress;
    * **trained** otherwise.

    Raises:
      ValueError: an empty or not 1-D curve, a negative finite value, or a threshold
        out of range.
    """
    a = np.asarray(losses, dtype=np.float64)
    if a.ndim != 1 or not a.size:
        raise ValueError(f"classify needs a non-empty 1-D loss curve, got shape {a.shape}.")
    finite = np.isfinite(a)
    if np.any(a[finite] < 0):
        raise ValueError(f"classify: losses must be >= 0 (a cross-entropy), got min {a[finite].min():g}.")
    if chance is not None and not (math.isfinite(chance) and chance > 0):
        raise ValueError(f"classify: chance must be finite and > 0, got {chance!r}.")
    if not explode_factor > 1:
        raise ValueError(f"classify: explode_factor must be > 1, got {explode_factor!r}.")
    if not 0 < progress_fraction < 1:
        raise ValueError(f"classify: progress_fraction must be in (0, 1), got {progress_fraction!r}.")
    if not 0 < tail_fraction <= 1:
        raise ValueError(f"classify: tail_fraction must be in (0, 1], got {tail_fraction!r}.")
    if not finite.all():
        return "diverged"
    start = a[0]
    if np.any(a > explode_factor * max(start, chance or 0.0)):
        return "diverged"
    final = a[-max(1, round(tail_fraction * a.size)) :].mean()
    reference = start if chance is None else min(start, chance)
    return "no progress" if a.size == 1 or final > (1 - progress_fraction) * reference else "trained"


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class InitScaleConfig:
    """One initialization-scale study.

    Attributes:
      dataset, subset: training data (``subset``: the first n examples; None = all);
        eval_split: held-out split for the final loss/accuracy (None: skip).
      depth, width, activation: the MLP (``depth`` weight layers, the output included).
      scales: the c of ``W ~ N(0, c/n)``; norms: names from :data:`jaxnorm.layers.NORMS`.
      learning_rate, batch_size, steps: plain minibatch SGD, the same for every run.
      every: training-loss record interval (``steps`` a multiple of it); probe_every:
        per-layer probe interval (a multiple of ``every`` dividing ``steps``, so the
        last probe is at the end); probe_size: examples in the fixed probe batch (the
        first of the training set).
      explode_factor, progress_fraction: :func:`classify`'s thresholds.
      seed: initialization and data order (the same for every run: runs with the same
        norm differ in c alone, their kernels are the same draws scaled by √c).
    """

    name: str = "digits"
    dataset: str = "digits"
    subset: Optional[int] = None
    eval_split: Optional[str] = "test"
    depth: int = 50
    width: int = 128
    activation: str = "relu"
    scales: tuple = (1.0, 2.0, 3.0)
    norms: tuple = ("vanilla", "bn_gamma_beta", "layer")
    learning_rate: float = 0.005
    batch_size: int = 64
    steps: int = 1000
    every: int = 20
    probe_every: int = 100
    probe_size: int = 256
    explode_factor: float = EXPLODE_FACTOR
    progress_fraction: float = PROGRESS_FRACTION
    seed: int = 0

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
        for what in ("every", "probe_every", "steps", "probe_size"):
            v = getattr(self, what)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if what == "steps" else 1):
                raise ValueError(f"{what} must be an int >= {0 if what == 'steps' else 1}, got {v!r}.")
        if self.steps % self.every or self.probe_every % self.every or self.steps % self.probe_every:
            raise ValueError(
                f"steps ({self.steps}) must be a multiple of probe_every ({self.probe_every}), "
                f"itself a multiple of every ({self.every})."
            )
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be finite and > 0, got {self.learning_rate!r}.")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (BatchNorm needs two values per feature), got {self.batch_size}.")
        classify([1.0], explode_factor=self.explode_factor, progress_fraction=self.progress_fraction)  # checks them

    def quick(self) -> "InitScaleConfig":
        """A smoke run of the whole pipeline: 3 layers (2 hidden of 16), 20 steps on 256 examples."""
        return dataclasses.replace(
            self, name=self.name + "-quick", subset=256, depth=3, width=16, steps=20, every=10, probe_every=10, probe_size=64,
        )  # fmt: skip


CONFIGS: dict[str, InitScaleConfig] = {
    "digits": InitScaleConfig(),
    # The lecture's setting: a 50-layer ReLU MLP on MNIST, trained to a few per cent
    # error. Not yet run here (MNIST must be prepared by tfds); on one GPU expect a few
    # minutes (50 dense layers of 256 at batch 128: ~2.5 GFLOP per step fwd+bwd, but
    # 50 sequential layers make each step latency-bound rather than compute-bound).
    "mnist": InitScaleConfig(name="mnist", dataset="mnist", width=256, batch_size=128, steps=5000, every=50, probe_every=500, probe_size=512),
}


def get_config(name: str) -> InitScaleConfig:
    """The registered config ``name`` (ValueError listing the known ones otherwise)."""
    return lookup(CONFIGS, name, "config")


def run_name(norm: str, c: float) -> str:
    return f"{norm}_c{c:g}"


# --------------------------------------------------------------------------- the probe


def _layer_indices(params) -> list[int]:
    return sorted(int(k[len("dense") :]) for k in params if k.startswith("dense"))


def layer_probe(module, params, stats, x, y, activation: str = "relu") -> dict:
    """Per-layer measurements of an ``'mlp'`` on one batch (BN, if any, in training mode
    on the batch's statistics; running statistics are not updated).

    Args:
      module: an ``'mlp'`` built by :func:`jaxnorm.models.get_model` (layers ``dense1``
        .. ``denseD``, norms ``norm{k}``).
      params, stats: its ``params`` and ``batch_stats`` collections.
      x, y: the batch and its integer labels.
      activation: the model's activation name (applied here to the captured
        pre-activations: flax captures module outputs, and the activation is no module).

    Returns ``{"loss", "accuracy"}`` (scalars) and ``(D,)`` arrays, entry i-1 for layer i:
    ``activation_rms`` (√mean(z_i²) over batch and units, z_i the layer's output after
    its norm and activation; the logits for i = D), ``grad_norm`` (‖∂L/∂W_i‖_F of the
    mean cross-entropy L) and ``weight_norm`` (‖W_i‖_F).
    """
    act = get_activation(activation)
    layers = _layer_indices(params)

    def loss_fn(p):
        logits, state = module.apply(
            {"params": p, "batch_stats": stats}, x, train=True, capture_intermediates=True, mutable=["batch_stats", "intermediates"]
        )
        return jnp.mean(cross_entropy(logits, y)), (logits, state["intermediates"])

    (loss, (logits, inter)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    outputs = [act(inter.get(f"norm{i}", inter[f"dense{i}"])["__call__"][0]) for i in layers[:-1]] + [logits]
    frob = lambda a: jnp.sqrt(jnp.sum(jnp.square(a.astype(jnp.float32))))
    return {
        "loss": loss,
        "accuracy": jnp.mean(accuracy(logits, y)),
        "activation_rms": jnp.stack([jnp.sqrt(jnp.mean(jnp.square(z.astype(jnp.float32)))) for z in outputs]),
        "grad_norm": jnp.stack([frob(grads[f"dense{i}"]["kernel"]) for i in layers]),
        "weight_norm": jnp.stack([frob(params[f"dense{i}"]["kernel"]) for i in layers]),
    }


# --------------------------------------------------------------------------- one run


def _model(norm: str, c: float, num_classes: int, depth: int, width: int, activation: str):
    return get_model(
        "mlp", norm=norm, num_classes=num_classes, depth=depth, width=width, activation=activation,
        kernel_init="scaled_normal", kernel_init_kwargs={"c": float(c)},
    )  # fmt: skip


class _Trainer:
    """The jitted training chunk (``every`` SGD steps), probe and evaluation of one
    network and SGD setting."""

    def __init__(self, module, activation: str, learning_rate: float, every: int):
        def objective(params, stats, x, y):
            logits, new = module.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return jnp.mean(cross_entropy(logits, y)), (new.get("batch_stats", {}), jnp.mean(accuracy(logits, y)))

        def chunk(params, stats, start, data):
            # `every` SGD steps in one call (fori_loop: compiled once); one host pull per
            # chunk. The data is an argument: closed over, it would be baked in as a constant.
            def sgd(i, carry):
                params, stats, first, sums = carry
                idx = data[2][start + i]
                (value, (stats, acc)), g = jax.value_and_grad(objective, has_aux=True)(params, stats, data[0][idx], data[1][idx])
                first = jnp.where(i == 0, jnp.stack([value, acc]), first)
                return _sub(params, g, learning_rate), stats, first, sums + jnp.stack([value, acc])

            zero = jnp.zeros(2, jnp.float32)
            params, stats, first, sums = jax.lax.fori_loop(0, every, sgd, (params, stats, zero, zero))
            return params, stats, first, sums / every

        def evaluate(params, stats, x, y):
            logits = module.apply({"params": params, "batch_stats": stats}, x, train=False)
            return jnp.mean(cross_entropy(logits, y)), jnp.mean(accuracy(logits, y))

        self.chunk = jax.jit(chunk)
        self.probe = jax.jit(lambda params, stats, x, y: layer_probe(module, params, stats, x, y, activation))
        self.evaluate = jax.jit(evaluate)


@functools.lru_cache(maxsize=8)
def _compiled(norm: str, num_classes: int, depth: int, width: int, activation: str, learning_rate: float, every: int) -> _Trainer:
    # Keyed on what the programs depend on: c only enters at initialization, so every c
    # of a norm (and every config object with the same network) shares one compilation.
    return _Trainer(_model(norm, 2.0, num_classes, depth, width, activation), activation, learning_rate, every)


def _trainer(cfg: InitScaleConfig, norm: str, num_classes: int) -> _Trainer:
    return _compiled(norm, num_classes, cfg.depth, cfg.width, cfg.activation, cfg.learning_rate, cfg.every)


def _finite_or_none(v: float) -> Optional[float]:
    return v if math.isfinite(v) else None


def run_one(cfg: InitScaleConfig, norm: str, c: float, root: pathlib.Path, log=print) -> "RunResult":
    """Trains one (norm, c) with the probes; writes and returns its records and arrays."""
    lookup(NORMS, norm, "norm")
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise ValueError(f"c must be a finite number > 0, got {c!r}.")
    x_all, y_all, num_classes = _data(cfg, "train")
    n = len(y_all)
    per_epoch = steps_per_epoch(n, cfg.batch_size)
    module = _model(norm, c, num_classes, cfg.depth, cfg.width, cfg.activation)
    trainer = _trainer(cfg, norm, num_classes)
    variables = module.init(jax.random.PRNGKey(cfg.seed), x_all[:2], train=False)
    # The examples of every step, drawn up front (epoch e: a permutation keyed by (seed, e)).
    epochs = range(-(-max(cfg.steps, 1) // per_epoch))
    order = jnp.concatenate([epoch_permutation(cfg.seed, e, n)[: per_epoch * cfg.batch_size] for e in epochs])
    data = (x_all, y_all, order.reshape(-1, cfg.batch_size))
    probe_x, probe_y = x_all[: cfg.probe_size], y_all[: cfg.probe_size]
    chance = math.log(num_classes)

    run = RunDir(root / run_name(norm, c))
    write_json(run.config, {**dataclasses.asdict(cfg), "norm": norm, "c": float(c), "num_classes": num_classes})
    params, stats = variables["params"], variables.get("batch_stats", {})
    records: list[dict] = []
    probes: dict[str, list] = {"steps": [], "activation_rms": [], "grad_norm": [], "weight_norm": []}

    def probe(step):
        p = jax.device_get(trainer.probe(params, stats, probe_x, probe_y))
        records.append({"kind": "probe", "step": step, "loss": _finite_or_none(float(p["loss"])), "accuracy": float(p["accuracy"])})
        probes["steps"].append(step)
        for k in ("activation_rms", "grad_norm", "weight_norm"):
            probes[k].append(np.asarray(p[k], np.float64))

    probe(0)
    curve: list[float] = []
    for start in range(0, cfg.steps, cfg.every):
        params, stats, first, means = trainer.chunk(params, stats, start, data)
        (first, first_acc), (loss, acc) = np.asarray(first, np.float64).tolist(), np.asarray(means, np.float64).tolist()
        if not curve:
            curve.append(first)
            if math.isfinite(first):
                records.append({"kind": "train", "step": 0, "loss": first, "accuracy": first_acc})
        curve.append(loss)
        end = start + cfg.every
        if classify(curve, chance=chance, explode_factor=cfg.explode_factor) == "diverged":
            what = "non-finite" if not all(map(math.isfinite, curve)) else f"above {cfg.explode_factor:g} x max(initial, chance)"
            records.append({"kind": "divergence", "step": end, "reason": f"training loss {what} ({loss:.3g}) in steps {start}-{end - 1}"})
            break
        records.append({"kind": "train", "step": end, "loss": loss, "accuracy": acc})
        if end % cfg.probe_every == 0:
            probe(end)
    diverged = records[-1]["kind"] == "divergence"
    arrays = {k: np.asarray(v) for k, v in probes.items()}
    w = arrays["weight_norm"]
    arrays["weight_ratio"] = np.full(w.shape[1], np.nan) if diverged else w[-1] / w[0]
    write_npz(run.root / "layer_norms.npz", arrays)
    if cfg.eval_split and not diverged:
        loss, acc = trainer.evaluate(params, stats, *_data(cfg, cfg.eval_split)[:2])
        records.append({"kind": "eval", "split": cfg.eval_split, "loss": float(loss), "accuracy": float(acc)})
    rewrite_jsonl(run.metrics, records)
    s = summarize(records, arrays, cfg, chance)
    log(
        f"  {norm:>14s} c={c:<4g}: {s['outcome']:<11s} initial loss {s['initial_loss']:.3g}, final {s['final_loss']:.3g}, "
        f"{cfg.eval_split or 'eval'} acc {s['eval_accuracy']:.3f}, activation RMS layer 1 {s['act_first']:.3g} / layer {cfg.depth - 1} "
        f"{s['act_last_hidden']:.3g}, ‖W_T‖/‖W_0‖ {s['ratio_min']:.3g}-{s['ratio_max']:.3g}"
    )
    return RunResult(records, arrays, chance)


# --------------------------------------------------------------------------- report


def loss_curve(records: list[dict]) -> list[float]:
    """The training-loss curve of a run's records (step order), NaN appended where the
    run stopped for divergence (the value that stopped it was not recorded)."""
    curve = [r["loss"] for r in records if r.get("kind") == "train"]
    return curve + [math.nan] if any(r.get("kind") == "divergence" for r in records) else curve


def summarize(records: list[dict], arrays: dict, cfg: InitScaleConfig, chance: Optional[float] = None) -> dict:
    """A run in numbers: ``outcome`` (:func:`classify` of :func:`loss_curve` with
    ``chance``, the chance-level loss ln K), ``initial_loss``, ``final_loss`` (first and
    last train records), ``eval_accuracy``, ``diverged_at`` (step or None) and
    ``divergence`` (its reason or None); at
    initialization (the probe arrays' first row) ``act_first`` / ``act_last_hidden`` /
    ``act_logits`` (activation RMS of layers 1, D−1, D) and ``grad_first`` / ``grad_last``
    (‖∂L/∂W‖ of layers 1 and D); ``ratio_min`` / ``ratio_median`` / ``ratio_max`` of
    ‖W_T‖/‖W_0‖ over the layers. NaN where unknown."""
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    div = [r for r in records if r.get("kind") == "divergence"]
    curve = loss_curve(records)
    nan = float("nan")
    act, grad = arrays.get("activation_rms"), arrays.get("grad_norm")
    at_init = lambda a, i: float(a[0][i]) if a is not None and len(a) else nan
    ratio = np.asarray(arrays.get("weight_ratio", []), np.float64)
    ratio = ratio[np.isfinite(ratio)]
    stat = lambda f: float(f(ratio)) if ratio.size else nan
    return {
        # No curve: no training step was taken (steps = 0).
        "outcome": classify(curve, chance=chance, explode_factor=cfg.explode_factor, progress_fraction=cfg.progress_fraction) if curve else "no progress",
        "initial_loss": train[0]["loss"] if train else nan,
        "final_loss": train[-1]["loss"] if train else nan,
        "eval_accuracy": evals[-1]["accuracy"] if evals else nan,
        "diverged_at": div[0]["step"] if div else None,
        "divergence": div[0]["reason"] if div else None,
        "act_first": at_init(act, 0),
        "act_last_hidden": at_init(act, -2),
        "act_logits": at_init(act, -1),
        "grad_first": at_init(grad, 0),
        "grad_last": at_init(grad, -1),
        "ratio_min": stat(np.min),
        "ratio_median": stat(np.median),
        "ratio_max": stat(np.max),
    }


@dataclasses.dataclass(frozen=True)
class RunResult:
    """A run's stored records, its ``layer_norms.npz`` arrays and its chance-level loss."""

    records: list
    arrays: dict
    chance: Optional[float] = None


#: The lecture's outcomes for vanilla SGD without normalization, by c.
LECTURE_OUTCOMES = {1.0: "no progress", 2.0: "trained", 3.0: "diverged"}
#: ‖W_T‖/‖W_0‖ within this relative distance of 1 in every layer: "the scale persisted".
PERSIST_TOLERANCE = 0.25


def _c_colors(plt, cfg: InitScaleConfig) -> dict:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {c: cycle[i % len(cycle)] for i, c in enumerate(cfg.scales)}


def _figure(plt, rows: int, cols: int, size, **kwargs):
    # Constrained layout is done within the one draw savefig makes; tight_layout would
    # draw the figure once more (half the report's time in the quick study).
    return plt.subplots(rows, cols, figsize=size, squeeze=False, layout="constrained", **kwargs)


def _save(plt, fig, path: pathlib.Path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _positive(a) -> np.ndarray:
    """Values a log axis can show (non-finite and non-positive ones become gaps)."""
    a = np.asarray(a, np.float64)
    return np.where(np.isfinite(a) & (a > 0), a, np.nan)


def _plot_losses(plt, path, cfg, results, colors) -> None:
    # Not sharey: a c = 3 vanilla net starts near 1e5 and would flatten the other panels.
    fig, axes = _figure(plt, 1, len(cfg.norms), (5 * len(cfg.norms), 3.8))
    for ax, norm in zip(axes[0], cfg.norms):
        for c in cfg.scales:
            if (norm, c) not in results:
                continue
            res = results[(norm, c)]
            train = [r for r in res.records if r["kind"] == "train"]
            outcome = summarize(res.records, res.arrays, cfg, res.chance)["outcome"]
            steps, losses = [r["step"] for r in train], [r["loss"] for r in train]
            ax.plot(steps, losses, color=colors[c], marker="o" if len(steps) == 1 else None, label=f"c = {c:g}: {outcome}")
            div = [r["step"] for r in res.records if r["kind"] == "divergence"]
            if div:  # where the loss left the finite numbers
                ax.plot([div[0]], [losses[-1] if losses else 1.0], "x", color=colors[c], ms=10, mew=2)
        if results and next(iter(results.values())).chance:
            ax.axhline(next(iter(results.values())).chance, color="grey", ls=":", lw=1, label="chance (ln K)")
        ax.set_yscale("log")
        ax.set_title(f"{norm}: training loss (x: diverged)", fontsize=10)
        ax.set_xlabel("SGD step")
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel(f"training loss (mean over {cfg.every} steps)")
    _save(plt, fig, path)


def _plot_layer_profiles(plt, path, cfg, results, colors, with_end: bool) -> None:
    """Rows: activation RMS, gradient norm; a panel per norm; per c the per-layer profile
    at initialization -- and, ``with_end``, dashed, with the profile at the last probe
    solid (the end, or the last probe before a divergence). Every probe is in
    ``layer_norms.npz``."""
    keys = (("activation_rms", "activation RMS (layer output)"), ("grad_norm", "‖∂L/∂W_i‖_F"))
    fig, axes = _figure(plt, 2, len(cfg.norms), (5 * len(cfg.norms), 7), sharex=True)
    layers = np.arange(1, cfg.depth + 1)
    for j, norm in enumerate(cfg.norms):
        for i, (key, label) in enumerate(keys):
            ax = axes[i, j]
            for c in cfg.scales:
                arrays = results[(norm, c)].arrays if (norm, c) in results else {}
                if not len(arrays.get(key, ())):
                    continue
                if with_end:
                    ax.plot(layers, _positive(arrays[key][0]), color=colors[c], ls="--", lw=1)
                    ax.plot(layers, _positive(arrays[key][-1]), color=colors[c], label=f"c = {c:g}, step {int(arrays['steps'][-1])}")
                else:
                    ax.plot(layers, _positive(arrays[key][0]), color=colors[c], marker=".", ms=3, label=f"c = {c:g}")
            ax.set_yscale("log")
            ax.set_ylabel(label)
            ax.set_title(f"{norm}: {label}" + (", init (dashed) and end" if with_end else " at initialization"), fontsize=10)
            ax.legend(fontsize=7)
        axes[1, j].set_xlabel("layer i (D = logits)")
    _save(plt, fig, path)


def _plot_weight_ratio(plt, path, cfg, results, colors) -> None:
    fig, axes = _figure(plt, 1, len(cfg.norms), (5 * len(cfg.norms), 3.8), sharey=True)
    for ax, norm in zip(axes[0], cfg.norms):
        for c in cfg.scales:
            ratio = results[(norm, c)].arrays.get("weight_ratio") if (norm, c) in results else None
            if ratio is not None and np.isfinite(ratio).any():
                ax.plot(np.arange(1, len(ratio) + 1), ratio, color=colors[c], marker=".", ms=3, label=f"c = {c:g}")
            elif ratio is not None:
                ax.plot([], [], color=colors[c], label=f"c = {c:g}: diverged")
        ax.axhline(1.0, color="grey", ls=":", lw=1)
        ax.set_title(f"{norm}: ‖W_T‖_F / ‖W_0‖_F per layer", fontsize=10)
        ax.set_xlabel("layer i")
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("weight-norm ratio after training")
    _save(plt, fig, path)


def write_report(root: pathlib.Path, cfg: InitScaleConfig, results: dict) -> None:
    """The plots and ``plots/summary.md`` from ``{(norm, c): RunResult}``."""
    plt = _pyplot()
    plots = root / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    colors = _c_colors(plt, cfg)
    _plot_losses(plt, plots / "loss.png", cfg, results, colors)
    _plot_layer_profiles(plt, plots / "layers_init.png", cfg, results, colors, with_end=False)
    _plot_layer_profiles(plt, plots / "layers_training.png", cfg, results, colors, with_end=True)
    _plot_weight_ratio(plt, plots / "weight_ratio.png", cfg, results, colors)
    (plots / "summary.md").write_text(summary_markdown(cfg, results))


def _fmt(v, spec: str = ".3g") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def summary_markdown(cfg: InitScaleConfig, results: dict) -> str:
    """The claims, the outcome table norm × c, the initial per-layer signal against the
    (c/2)^(D/2) law, the weight-norm ratios, and a verdict per claim."""
    s = {key: summarize(r.records, r.arrays, cfg, r.chance) for key, r in results.items()}
    d = cfg.depth
    lines = [
        f"# Initialization scale: {cfg.name}",
        "",
        f"{d}-layer ReLU MLP, width {cfg.width}, W_i ~ N(0, c/n) (biases 0), on {cfg.dataset}"
        + (f" (first {cfg.subset} examples)" if cfg.subset else "")
        + f"; plain SGD, lr {cfg.learning_rate:g}, batch {cfg.batch_size}, {cfg.steps} steps, the same for every run; one seed. "
        f"Outcome: `classify` of the training-loss curve (diverged: non-finite or above {cfg.explode_factor:g} x max(initial, chance); "
        f"no progress: final loss, the mean of the last 10% of the curve, above {1 - cfg.progress_fraction:g} x min(initial, chance); "
        "trained otherwise).",
        "",
        "## Claim 1: without normalization, c = 3 gives NaN, c = 2 trains, c = 1 makes no progress",
        "",
        "(Lecture, \"Initialization vs. optimization\": vanilla SGD on MNIST.)",
        "",
        f"| norm | c | outcome | initial loss | final train loss | {cfg.eval_split or 'eval'} acc | diverged at step |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for (norm, c), t in s.items():
        lines.append(
            f"| {norm} | {c:g} | {t['outcome']} | {_fmt(t['initial_loss'])} | {_fmt(None if t['diverged_at'] is not None else t['final_loss'], '.4g')} | "
            f"{_fmt(t['eval_accuracy'], '.3f')} | {_fmt(t['diverged_at'], 'd')} |"
        )
    lines.append("")
    vanilla = {c: s[("vanilla", c)]["outcome"] for c in cfg.scales if ("vanilla", c) in s}
    expected = {c: LECTURE_OUTCOMES[float(c)] for c in vanilla if float(c) in LECTURE_OUTCOMES}
    if expected:
        agree = all(vanilla[c] == o for c, o in expected.items())
        lines += [
            "Measured without normalization: " + ", ".join(f"c = {c:g} {vanilla[c]}" for c in expected)
            + f"; the lecture: " + ", ".join(f"c = {c:g} {o}" for c, o in expected.items())
            + f". Claim 1 {'reproduces' if agree else 'does not reproduce'} here."
            + "".join(f" c = {c:g} stopped at step {s[('vanilla', c)]['diverged_at']}: {s[('vanilla', c)]['divergence']}." for c in vanilla if s[("vanilla", c)]["divergence"]),
            "",
        ]
    lines += [
        "## Why: the signal at initialization",
        "",
        "With zero biases, E[mean z_{i+1}²] = (c/2) · mean z_i² for z = relu(W z) (half of a symmetric pre-activation is cut), "
        f"so without normalization the RMS of layer {d - 1}'s output over that of layer 1 should be about (c/2)^(({d} - 2)/2); "
        "the gradients ‖∂L/∂W_i‖ pass back through the same matrices. With BN or LayerNorm every hidden layer's output is "
        "relu of a normalized pre-activation: RMS ≈ √(1/2) ≈ 0.71 whatever c, but the gradients need not be flat (deep BN nets "
        "without skip connections have gradients growing exponentially towards the input at initialization, Yang et al. 2019). "
        "Probe batch at initialization:",
        "",
        f"| norm | c | act RMS layer 1 | act RMS layer {d - 1} | measured ratio | (c/2)^(({d}-2)/2) | logits RMS | ‖∂L/∂W_1‖ | ‖∂L/∂W_{d}‖ | ‖∂L/∂W_1‖ / ‖∂L/∂W_{d}‖ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (norm, c), t in s.items():
        law = (c / 2) ** ((d - 2) / 2) if norm == "vanilla" else None
        lines.append(
            f"| {norm} | {c:g} | {_fmt(t['act_first'])} | {_fmt(t['act_last_hidden'])} | {_fmt(t['act_last_hidden'] / t['act_first'])} | "
            f"{_fmt(law)} | {_fmt(t['act_logits'])} | {_fmt(t['grad_first'])} | {_fmt(t['grad_last'])} | {_fmt(t['grad_first'] / t['grad_last'])} |"
        )
    off = [t["act_last_hidden"] / t["act_first"] / (c / 2) ** ((d - 2) / 2) for (n, c), t in s.items() if n == "vanilla"]
    if off:
        # Same seed: the vanilla kernels are the same draws times √c and relu is positively
        # homogeneous, so measured / law is one number for every c.
        lines += [
            "",
            f"Without normalization, measured / law = {', '.join(_fmt(o) for o in off)} over c: the same kernels scaled by √c "
            "(one seed) and a positively homogeneous ReLU give the same factor for every c; it is the fluctuation of one "
            f"finite-width draw (the log of a layer's mean square varies by about √(5/n) per layer: over {d - 2} layers of "
            f"{cfg.width}, a factor of about {math.exp(0.5 * math.sqrt(5 * (d - 2) / cfg.width)):.2g} in the RMS either way).",
        ]
    lines += [
        "",
        "## Claim 2: the scales set at initialization persist (‖W_T‖/‖W_0‖ ≈ 1 in every layer)",
        "",
        "(Lecture: \"even when trained successfully, the effects/scales present at initialization *persist* throughout training\".) "
        f"Runs that did not diverge; \"persists\": every layer within {PERSIST_TOLERANCE:.0%} of 1.",
        "",
        "| norm | c | outcome | min ‖W_T‖/‖W_0‖ | median | max | persists |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    persisted = {}
    for (norm, c), t in s.items():
        if t["outcome"] == "diverged":
            continue
        ok = t["ratio_min"] >= 1 - PERSIST_TOLERANCE and t["ratio_max"] <= 1 + PERSIST_TOLERANCE
        persisted[(norm, c)] = (ok, t["outcome"])
        lines.append(
            f"| {norm} | {c:g} | {t['outcome']} | {_fmt(t['ratio_min'], '.4g')} | {_fmt(t['ratio_median'], '.4g')} | "
            f"{_fmt(t['ratio_max'], '.4g')} | {'yes' if ok else 'no'} |"
        )
    trained = {k: ok for k, (ok, outcome) in persisted.items() if outcome == "trained"}
    lines.append("")
    if trained:
        held = [f"{n} c={c:g}" for (n, c), ok in trained.items() if ok]
        broke = [f"{n} c={c:g}" for (n, c), ok in trained.items() if not ok]
        lines += [
            f"Among the runs that trained, the per-layer weight norms stayed within {PERSIST_TOLERANCE:.0%} of their initial "
            f"values in {len(held)} of {len(trained)}" + (f" (not in: {', '.join(broke)})" if broke else "")
            + f": claim 2 {'holds' if not broke else 'holds only in part'} here. Where it holds, networks trained from "
            "different c keep their weight norms in the ratio √c of their initializations. A weight layer followed by BN is "
            "invariant to its weights' scale, so its gradient is orthogonal to W and plain SGD can only grow ‖W‖ "
            "(‖W − ηg‖² = ‖W‖² + η²‖g‖²): where its gradients are large, the norm grows.",
            "",
        ]
    lines += [
        "## Claim 3: normalization removes the sensitivity to c",
        "",
        "| norm | outcomes over c | final train loss (min - max over c) | max / min | "
        f"{cfg.eval_split or 'eval'} acc (min - max over c) | every c trains |",
        "|---|---|---:|---:|---:|---|",
    ]
    for norm in cfg.norms:
        rows = [(c, s[(norm, c)]) for c in cfg.scales if (norm, c) in s]
        if not rows:
            continue
        outcomes = {t["outcome"] for _, t in rows}
        loss = [t["final_loss"] for _, t in rows if t["outcome"] != "diverged"]
        acc = [t["eval_accuracy"] for _, t in rows if math.isfinite(t["eval_accuracy"])]
        span = lambda v, f: f"{_fmt(min(v), f)} - {_fmt(max(v), f)}" if v else "-"
        spread = max(loss) / min(loss) if loss and min(loss) > 0 else float("nan")
        lines.append(
            f"| {norm} | {', '.join('c=%g: %s' % (c, t['outcome']) for c, t in rows)} | {span(loss, '.4g')} | {_fmt(spread, '.3g')} | "
            f"{span(acc, '.3f')} | {'yes' if outcomes == {'trained'} else 'no'} |"
        )
    normed = [n for n in cfg.norms if n != "vanilla" and any((n, c) in s for c in cfg.scales)]
    if normed:
        ok = [n for n in normed if all(s[(n, c)]["outcome"] == "trained" for c in cfg.scales if (n, c) in s)]
        lines += [
            "",
            f"With normalization every c trained in {len(ok)} of {len(normed)} norms ({', '.join(ok) or 'none'}): claim 3 "
            f"{'holds' if len(ok) == len(normed) else 'does not hold for ' + ', '.join(n for n in normed if n not in ok)} "
            "as far as the outcome goes (no NaN, no stall). It does not make c irrelevant: a normalized layer is invariant "
            "to its weights' scale, so c no longer scales the signal but the effective step size of those weights "
            "(lr/‖W‖², ∝ lr/c), and the unnormalized output layer still scales the logits by √c; the spread of the final "
            "losses over c above is what is left of the sensitivity.",
        ]
    return "\n".join(lines) + "\n"


def _stored(root: pathlib.Path, cfg: InitScaleConfig) -> dict:
    out = {}
    for norm in cfg.norms:
        for c in cfg.scales:
            run = RunDir(root / run_name(norm, c))
            if run.metrics.exists():
                chance = math.log(read_json(run.config)["num_classes"])
                out[(norm, c)] = RunResult(read_jsonl(run.metrics), read_npz(run.root / "layer_norms.npz"), chance)
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="digits", help=f"one of {sorted(CONFIGS)}")
    p.add_argument("--quick", action="store_true", help="3 layers, 2 hidden of 16, a few steps on a small subset (tests)")
    p.add_argument("--scales", type=float, nargs="+", help="the c of W ~ N(0, c/n)")
    p.add_argument("--norms", nargs="+", help=f"subset of {sorted(NORMS)}")
    p.add_argument("--depth", type=int, help="weight layers, the output included")
    p.add_argument("--width", type=int, help="hidden units")
    p.add_argument("--steps", type=int, help="SGD steps per run")
    p.add_argument("--lr", type=float, help="SGD learning rate")
    p.add_argument("--plot-only", action="store_true", help="plots + summary.md from the stored files")
    p.add_argument("--results", default="results", help="results folder")
    args = p.parse_args(argv)
    changes = {
        "scales": tuple(args.scales) if args.scales else None,
        "norms": tuple(args.norms) if args.norms else None,
        "depth": args.depth,
        "width": args.width,
        "steps": args.steps,
        "learning_rate": args.lr,
    }
    cfg = study_config(get_config(args.config), changes, quick=args.quick)
    root = pathlib.Path(args.results) / "init_scale" / cfg.name
    t0 = time.time()
    if args.plot_only:
        results = stored_runs(_stored(root, cfg), root)
    else:
        print(f"init_scale {cfg.name}: {cfg.depth} x {cfg.width} ReLU MLP, c in {cfg.scales}, norms {cfg.norms}, {cfg.steps} steps")
        results = {(norm, c): run_one(cfg, norm, c, root) for norm in cfg.norms for c in cfg.scales}
    write_report(root, cfg, results)
    report_done(t0, root)


if __name__ == "__main__":
    main()
