"""Loss-landscape smoothness with and without BatchNorm, and BatchNorm under injected
internal covariate shift (Santurkar, Tsipras, Ilyas & Madry 2018, "How does batch
normalization help optimization?", Fig. 2/7 and Fig. 4).

Three variants train with plain minibatch SGD ``w <- w - lr ∇L_B(w)`` (BatchNorm in
training mode, running statistics updated): ``vanilla`` (no normalization), ``bn``
(standard BatchNorm, learned γ and β: ``bn_gamma_beta``) and ``noisy_bn`` (the same BN
layers, each followed by non-stationary noise; below). Every ``every`` steps, at the
current weights w and on the current batch B (the one the next step trains on), with
g = ∇L_B(w) and for every step size η of the grid ``eta_factors × lr``:

* **loss landscape** (Fig. 4a): L_B(w − ηg); recorded: the min and max over η (the band);
* **gradient predictiveness** (Fig. 4b): ‖∇L_B(w − ηg) − g‖₂; min and max over η;
* **effective β-smoothness** (Fig. 4c): max over η of ‖∇L_B(w − ηg) − g‖₂ / ‖ηg‖₂.

L_B is the training objective itself (mean cross-entropy, BN normalizing with the
statistics of B at the probed weights, ``noisy_bn`` with the noise of that step), and
all η are evaluated in one jitted call (``vmap`` over η). The grid defaults to 8
log-spaced η from lr/4 to 4·lr: steps of the order of the training step, as in the
paper, from well inside the step SGD takes (the local picture) to four times it (where
a non-smooth landscape shows).

**Noisy BN** (Fig. 2, "BN followed by non-stationary noise still trains about as well
as BN"): the output y of every BatchNorm layer becomes ``y · s + m`` with per-channel
``m ~ U(−noise_mean, noise_mean)`` and ``s = √v``, ``v ~ U(1, 1 + noise_var)``, drawn
afresh at every step: the next layer's input distribution has a different non-zero mean
and non-unit variance at each step: internal covariate shift added on purpose. The
paper draws the noise per activation and sample from such a
distribution; a per-channel draw shared by the batch is the cleaner distribution shift
(per-sample noise would also act as a regularizer). The draw is a pure function of
(``noise_seed``, step, layer name) (:func:`bn_noise`), injected without touching the
library by wrapping ``jaxnorm.layers.Norm.__call__`` with ``flax.linen.intercept_methods``
(:func:`inject_bn_noise`); magnitudes 0 give exactly the ``bn`` network. Held-out
accuracy is measured without noise (eval mode, running statistics; for ``noisy_bn``
re-estimated by one noise-free pass over the training set first, since the running
averages saw noisy activations).

    python -m experiments.smoothness                  # digits, 6-layer ConvNet, 400 SGD steps: ~2 min on 2 CPU cores (100-140 s)
    python -m experiments.smoothness --quick          # 20 steps, 256 examples, 3-layer MLP, 3 η (tests): ~12 s
    python -m experiments.smoothness --config cifar10 # 3C3D on CIFAR-10 (GPU; tfds-prepared CIFAR-10)
    python -m experiments.smoothness --plot-only      # plots + summary.md from the stored files

Results in ``<results>/smoothness/<config>[-quick]/``: per variant ``<variant>/`` with
``config.json`` (the study config plus ``variant``, ``norm``, ``noise``, ``etas``) and
``metrics.jsonl``: lines ``{"kind": "smoothness", "step", "loss", "loss_min",
"loss_max", "grad_change_min", "grad_change_max", "beta_smoothness", "grad_norm"}``
(``loss`` = L_B(w)), ``{"kind": "train", "step", "loss", "accuracy"}`` (means over the
``every`` steps before ``step``), ``{"kind": "eval", "split", "loss", "accuracy"}`` at
the end, and a ``{"kind": "divergence", "step", "reason"}`` line where the loss became
non-finite (that run stops; the study goes on). ``plots/landscape.png``,
``plots/predictiveness.png`` (bands over training), ``plots/beta_smoothness.png``,
``plots/ics.png`` (training loss and accuracy of the three variants) and
``plots/summary.md`` (the claims and the measured medians and ratios).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import time
import zlib
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments._cli import report_done, stored_runs, study_config
from jaxnorm._registry import lookup
from jaxnorm.data import epoch_permutation, load, steps_per_epoch
from jaxnorm.data.augmentation import normalize
from jaxnorm.layers import Norm
from jaxnorm.models import get_model
from jaxnorm.objective import accuracy, cross_entropy
from jaxnorm.results import RunDir, read_jsonl, rewrite_jsonl, write_json


@dataclasses.dataclass(frozen=True)
class Variant:
    """A network of the study: the model's ``norm`` and whether noise follows its BN layers."""

    norm: str
    noise: bool = False
    label: str = ""


VARIANTS: dict[str, Variant] = {
    "vanilla": Variant("vanilla", label="no normalization"),
    "bn": Variant("bn_gamma_beta", label="BatchNorm"),
    "noisy_bn": Variant("bn_gamma_beta", noise=True, label="BatchNorm + non-stationary noise"),
}


@dataclasses.dataclass(frozen=True)
class SmoothnessConfig:
    """One smoothness study.

    Attributes:
      dataset, subset: training data (``subset``: the first n examples; None = all);
        eval_split: held-out split for the final accuracy (None: skip).
      model, model_kwargs: the network (``norm`` is set per variant).
      variants: names from :data:`VARIANTS`.
      learning_rate, batch_size, steps: plain minibatch SGD (no momentum, no weight
        decay: the probe's step w − ηg is then exactly a training step for η = lr).
      every: probe and train-record interval (``steps`` must be a multiple of it).
      eta_factors: the probed step sizes as multiples of ``learning_rate``.
      noise_mean, noise_var: ``noisy_bn``'s shift range U(−noise_mean, noise_mean) and
        variance range U(1, 1 + noise_var).
      seed: initialization and data order; noise_seed: the noise stream.
    """

    name: str = "digits"
    dataset: str = "digits"
    subset: Optional[int] = None
    eval_split: Optional[str] = "test"
    # A small plain ConvNet (6 weight layers, 16 channels, He init, ReLU): the paper's
    # VGG in miniature. Not an MLP: a 6x64 ReLU MLP at lr 0.1 memorizes digits within
    # ~400 steps (vanilla faster than BN), so its bands collapse towards 0 and BN did
    # not come out smoother there (median loss range 0.004 vanilla, 0.018 BN).
    model: str = "convnet"
    model_kwargs: dict = dataclasses.field(default_factory=lambda: {"depth": 6, "width": 16, "stages": 2})
    variants: tuple = ("vanilla", "bn", "noisy_bn")
    learning_rate: float = 0.1
    batch_size: int = 64
    steps: int = 400
    every: int = 20
    eta_factors: tuple = tuple(float(f) for f in np.geomspace(0.25, 4.0, 8))
    noise_mean: float = 1.0
    noise_var: float = 2.0
    seed: int = 0
    noise_seed: int = 1

    def __post_init__(self):
        for v in self.variants:
            lookup(VARIANTS, v, "variant")
        if not self.variants:
            raise ValueError("variants: need at least one.")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"every must be an int >= 1, got {self.every!r}.")
        if self.steps < 0 or self.steps % self.every:
            raise ValueError(f"steps must be a multiple of every ({self.every}) and >= 0, got {self.steps}.")
        etas = self.eta_factors
        if not len(etas) or not all(isinstance(f, (int, float)) and math.isfinite(f) and f > 0 for f in etas):
            raise ValueError(f"eta_factors must be a non-empty list of finite numbers > 0, got {etas!r}.")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be finite and > 0, got {self.learning_rate!r}.")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (BatchNorm needs two values per feature), got {self.batch_size}.")
        if self.noise_mean < 0 or self.noise_var < 0:
            raise ValueError(f"noise_mean and noise_var must be >= 0, got {self.noise_mean}, {self.noise_var}.")

    @property
    def etas(self) -> tuple[float, ...]:
        return tuple(f * self.learning_rate for f in self.eta_factors)

    def quick(self) -> "SmoothnessConfig":
        """A smoke run of the whole pipeline: 20 steps on 256 examples, 3 η, and a 3-layer
        MLP whatever the config's model (compiling a convnet's probe alone takes longer
        than the whole quick run should; the code path does not depend on the model)."""
        return dataclasses.replace(
            self, name=self.name + "-quick", subset=256, steps=20, every=10, eta_factors=(0.5, 1.0, 2.0),
            model="mlp", model_kwargs={"depth": 3, "width": 32},
        )  # fmt: skip


CONFIGS: dict[str, SmoothnessConfig] = {
    "digits": SmoothnessConfig(),
    # The paper's setting on a GPU: a VGG-like convnet on CIFAR-10 (DeepOBS 3C3D here),
    # ~16 epochs of SGD at batch 128. Not yet run here (no GPU with CIFAR-10 prepared);
    # expect minutes on an H100 (3C3D is ~0.6 GFLOP per step fwd+bwd; the probes add
    # 2 x 8 forward/backward passes every 50 steps, about a third more).
    "cifar10": SmoothnessConfig(
        name="cifar10", dataset="cifar10", eval_split="validation", model="3c3d", model_kwargs={},
        learning_rate=0.05, batch_size=128, steps=5000, every=50,
    ),  # fmt: skip
}


def get_config(name: str) -> SmoothnessConfig:
    """The registered config ``name`` (ValueError listing the known ones otherwise)."""
    return lookup(CONFIGS, name, "config")


# --------------------------------------------------------------------------- the noise


def bn_noise(key: jax.Array, step, layer: str, features: int, noise_mean: float, noise_var: float) -> tuple[jax.Array, jax.Array]:
    """``(scale, shift)``, each ``(features,)``: the noise of one BN layer at one step.

    ``shift ~ U(−noise_mean, noise_mean)``, ``scale = √v`` with ``v ~ U(1, 1 + noise_var)``,
    independent per channel, keyed by ``fold_in(fold_in(key, step), crc32(layer))``: a
    pure function of (key, step, layer name), ``step`` may be traced. Magnitudes 0 give
    exactly scale 1 and shift 0 (``uniform`` with minval = maxval returns minval).
    """
    k = jax.random.fold_in(jax.random.fold_in(key, step), zlib.crc32(layer.encode()) & 0x7FFFFFFF)
    k_shift, k_var = jax.random.split(k)
    shift = jax.random.uniform(k_shift, (features,), minval=-noise_mean, maxval=noise_mean)
    var = jax.random.uniform(k_var, (features,), minval=1.0, maxval=1.0 + noise_var)
    return jnp.sqrt(var), shift


def inject_bn_noise(key: jax.Array, step, noise_mean: float, noise_var: float):
    """A context manager: inside it, every batch-kind :class:`jaxnorm.layers.Norm`'s output
    y becomes ``y · scale + shift`` (:func:`bn_noise` of its layer path at ``step``).

    Use around ``module.apply`` (also while tracing under jit: the noise becomes part of
    the traced function). Other modules and other norm kinds are untouched.
    """

    def interceptor(next_fun, args, kwargs, ctx):
        y = next_fun(*args, **kwargs)
        if isinstance(ctx.module, Norm) and ctx.method_name == "__call__" and ctx.module.kind == "batch":
            scale, shift = bn_noise(key, step, "/".join(ctx.module.path), y.shape[-1], noise_mean, noise_var)
            y = y * scale.astype(y.dtype) + shift.astype(y.dtype)
        return y

    return nn.intercept_methods(interceptor)


# --------------------------------------------------------------------------- the probe


def _sub(a, b, c: float = 1.0):
    return jax.tree.map(lambda x, y: x - c * y, a, b)


def _norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def smoothness_probe(loss: Callable, params, etas) -> dict:
    """The three smoothness measurements of Santurkar et al. (2018, Fig. 4) at ``params``.

    Args:
      loss: ``params -> scalar`` (the batch, BN mode and any noise closed over).
      params: a pytree.
      etas: ``(k,)`` step sizes; all evaluated at once (``vmap``).

    Returns scalars: ``loss`` L(w), ``grad_norm`` ‖g‖ (g = ∇L(w)); over η, ``loss_min``
    / ``loss_max`` of L(w − ηg), ``grad_change_min`` / ``grad_change_max`` of
    ‖∇L(w − ηg) − g‖, and ``beta_smoothness`` = max ‖∇L(w − ηg) − g‖ / ‖ηg‖.
    """
    value, g = jax.value_and_grad(loss)(params)
    g_norm = _norm(g)

    def at(eta):
        moved, g_moved = jax.value_and_grad(loss)(_sub(params, g, eta))
        return moved, _norm(_sub(g_moved, g))

    etas = jnp.asarray(etas, jnp.float32)
    losses, changes = jax.vmap(at)(etas)
    return {
        "loss": value,
        "grad_norm": g_norm,
        "loss_min": jnp.min(losses),
        "loss_max": jnp.max(losses),
        "grad_change_min": jnp.min(changes),
        "grad_change_max": jnp.max(changes),
        "beta_smoothness": jnp.max(changes / (etas * g_norm)),
    }


# --------------------------------------------------------------------------- one run


def _data(cfg: SmoothnessConfig, split: str):
    ds = load(cfg.dataset, split)
    n = len(ds.labels) if cfg.subset is None or split != "train" else min(cfg.subset, len(ds.labels))
    x = normalize(jnp.asarray(ds.images[:n]), ds.mean, ds.std)
    return x, jnp.asarray(ds.labels[:n]), ds.num_classes


def run_one(cfg: SmoothnessConfig, variant: str, root: pathlib.Path, log=print) -> list[dict]:
    """Trains one variant with the probes; writes and returns its records."""
    spec = lookup(VARIANTS, variant, "variant")
    x_all, y_all, num_classes = _data(cfg, "train")
    n = len(y_all)
    per_epoch = steps_per_epoch(n, cfg.batch_size)
    module = get_model(cfg.model, norm=spec.norm, num_classes=num_classes, **cfg.model_kwargs)
    variables = module.init(jax.random.PRNGKey(cfg.seed), x_all[:2], train=False)
    noise_key = jax.random.PRNGKey(cfg.noise_seed)
    etas = cfg.etas

    # The examples of every step, drawn up front (epoch e: a permutation keyed by (seed,
    # e)): shuffling inside the jitted chunk would compile threefry and a sort into it.
    epochs = range(-(-max(cfg.steps, 1) // per_epoch))
    order = jnp.concatenate([epoch_permutation(cfg.seed, e, n)[: per_epoch * cfg.batch_size] for e in epochs])
    data = (x_all, y_all, order.reshape(-1, cfg.batch_size))

    def batch(data, step):
        idx = data[2][step]
        return data[0][idx], data[1][idx]

    def objective(params, stats, x, y, step):
        def apply():
            return module.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])

        if spec.noise:
            with inject_bn_noise(noise_key, step, cfg.noise_mean, cfg.noise_var):
                logits, new = apply()
        else:
            logits, new = apply()
        return jnp.mean(cross_entropy(logits, y)), (new.get("batch_stats", {}), jnp.mean(accuracy(logits, y)))

    @jax.jit
    def chunk(params, stats, start, data):
        # One call per `every` steps: the probe at step `start`, then `every` SGD steps
        # (fori_loop: compiled once, whatever `every` is); one host pull per chunk. The
        # data is an argument: closed over, it would be baked into the program as a constant.
        x, y = batch(data, start)
        probe = smoothness_probe(lambda p: objective(p, stats, x, y, start)[0], params, etas)

        def sgd(i, carry):
            params, stats, loss_sum, acc_sum = carry
            x, y = batch(data, start + i)
            (value, (stats, acc)), g = jax.value_and_grad(objective, has_aux=True)(params, stats, x, y, start + i)
            return _sub(params, g, cfg.learning_rate), stats, loss_sum + value, acc_sum + acc

        zero = jnp.zeros((), jnp.float32)
        params, stats, loss_sum, acc_sum = jax.lax.fori_loop(0, cfg.every, sgd, (params, stats, zero, zero))
        return params, stats, probe, loss_sum / cfg.every, acc_sum / cfg.every

    def recalibrate(params, stats, data):
        def one(stats, step):
            x, _ = batch(data, step)
            _, new = module.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return new["batch_stats"], None

        return jax.lax.scan(one, stats, jnp.arange(per_epoch))[0]

    run = RunDir(root / variant)
    write_json(run.config, {**dataclasses.asdict(cfg), "variant": variant, "norm": spec.norm, "noise": spec.noise, "etas": list(etas)})
    params, stats = variables["params"], variables.get("batch_stats", {})
    records: list[dict] = []
    for start in range(0, cfg.steps, cfg.every):
        params, stats, probe, train_loss, train_acc = chunk(params, stats, start, data)
        probe = {k: float(v) for k, v in probe.items()}
        train_loss, train_acc = float(train_loss), float(train_acc)
        if not all(map(math.isfinite, probe.values())):
            bad = {k: v for k, v in probe.items() if not math.isfinite(v)}
            records.append({"kind": "divergence", "step": start, "reason": f"non-finite probe at step {start}: {bad}"})
            break
        records.append({"kind": "smoothness", "step": start, **probe})
        if not math.isfinite(train_loss):
            records.append({"kind": "divergence", "step": start + cfg.every, "reason": f"non-finite training loss in steps {start}-{start + cfg.every - 1}"})
            break
        records.append({"kind": "train", "step": start + cfg.every, "loss": train_loss, "accuracy": train_acc})
    if cfg.eval_split and not any(r["kind"] == "divergence" for r in records):
        if spec.noise:
            # The running statistics averaged noisy activations; the noise-free network
            # evaluated needs noise-free ones: one pass over the training set re-estimates them.
            stats = jax.jit(recalibrate)(params, stats, data)
        records.append(_evaluate(cfg, module, params, stats))
    rewrite_jsonl(run.metrics, records)
    s = summarize(records)
    log(
        f"  {variant:>9s}: median loss range {s['loss_range']:.3g}, median grad change {s['grad_change']:.3g}, "
        f"median β {s['beta_smoothness']:.3g}, final train loss {s['train_loss']:.3g} acc {s['train_accuracy']:.3f}, {s['status']}"
    )
    return records


def _evaluate(cfg: SmoothnessConfig, module, params, stats) -> dict:
    """Loss and accuracy on ``cfg.eval_split`` in eval mode (running statistics, no noise)."""
    x, y, _ = _data(cfg, cfg.eval_split)

    @jax.jit
    def metrics(params, stats, x, y):
        logits = module.apply({"params": params, "batch_stats": stats}, x, train=False)
        return jnp.mean(cross_entropy(logits, y)), jnp.mean(accuracy(logits, y))

    loss, acc = metrics(params, stats, x, y)
    return {"kind": "eval", "split": cfg.eval_split, "loss": float(loss), "accuracy": float(acc)}


# --------------------------------------------------------------------------- report


def summarize(records: list[dict]) -> dict:
    """Medians over training of the loss range (loss_max − loss_min), the largest gradient
    change and β-smoothness, the largest β; the last train record's loss/accuracy; the
    eval accuracy; the status (NaN where there are no such records)."""
    probes = [r for r in records if r.get("kind") == "smoothness"]
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    med = lambda xs: float(np.median(xs)) if len(xs) else float("nan")
    beta = [r["beta_smoothness"] for r in probes]
    return {
        "loss_range": med([r["loss_max"] - r["loss_min"] for r in probes]),
        "grad_change": med([r["grad_change_max"] for r in probes]),
        "beta_smoothness": med(beta),
        "max_beta_smoothness": float(max(beta)) if beta else float("nan"),
        "train_loss": train[-1]["loss"] if train else float("nan"),
        "train_accuracy": train[-1]["accuracy"] if train else float("nan"),
        "eval_accuracy": evals[-1]["accuracy"] if evals else float("nan"),
        "status": "diverged" if any(r.get("kind") == "divergence" for r in records) else "finished",
    }


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band_plot(plt, path, results, colors, low: str, high: str, title: str, ylabel: str) -> None:
    """One shaded min–max band over training per variant (the paper's Fig. 4a/b)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for variant, recs in results.items():
        probes = [r for r in recs if r["kind"] == "smoothness"]
        steps = [r["step"] for r in probes]
        ax.fill_between(steps, [r[low] for r in probes], [r[high] for r in probes], color=colors[variant], alpha=0.35, lw=0, label=variant)
    ax.set_yscale("log")
    ax.set_xlabel("SGD step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(root: pathlib.Path, cfg: SmoothnessConfig, results: dict[str, list[dict]]) -> None:
    """The four plots and ``plots/summary.md`` from the runs' records (``{variant: records}``)."""
    plt = _pyplot()
    plots = root / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {v: cycle[i % len(cycle)] for i, v in enumerate(VARIANTS)}
    grid = f"η ∈ [{min(cfg.etas):.3g}, {max(cfg.etas):.3g}] ({len(cfg.etas)} values)"
    _band_plot(plt, plots / "landscape.png", results, colors, "loss_min", "loss_max", f"loss landscape: L(w − ηg), {grid}", "training loss along the gradient")
    _band_plot(plt, plots / "predictiveness.png", results, colors, "grad_change_min", "grad_change_max", f"gradient predictiveness: ‖∇L(w − ηg) − ∇L(w)‖, {grid}", "ℓ2 change of the gradient")

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for variant, recs in results.items():
        probes = [r for r in recs if r["kind"] == "smoothness"]
        ax.plot([r["step"] for r in probes], [r["beta_smoothness"] for r in probes], color=colors[variant], label=variant)
    ax.set_yscale("log")
    ax.set(xlabel="SGD step", ylabel="max_η ‖∇L(w − ηg) − g‖ / ‖ηg‖")
    ax.set_title(f"effective β-smoothness, {grid}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plots / "beta_smoothness.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant, recs in results.items():
        train = [r for r in recs if r["kind"] == "train"]
        steps = [r["step"] for r in train]
        axes[0].plot(steps, [r["loss"] for r in train], color=colors[variant], label=f"{variant} ({VARIANTS[variant].label})")
        axes[1].plot(steps, [r["accuracy"] for r in train], color=colors[variant], label=variant)
    axes[0].set_yscale("log")
    axes[0].set(xlabel="SGD step", ylabel=f"training loss (mean over {cfg.every} steps)")
    axes[1].set(xlabel="SGD step", ylabel="training accuracy")
    axes[0].set_title(f"noisy_bn: per-step shift U(±{cfg.noise_mean:g}), variance U(1, {1 + cfg.noise_var:g}) after each BN", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plots / "ics.png", dpi=110)
    plt.close(fig)
    (plots / "summary.md").write_text(summary_markdown(cfg, results))


def summary_markdown(cfg: SmoothnessConfig, results: dict[str, list[dict]]) -> str:
    """The claims, a table per variant, and the vanilla / BN ratios."""
    s = {v: summarize(recs) for v, recs in results.items()}
    lines = [
        f"# Loss-landscape smoothness and BatchNorm: {cfg.name}",
        "",
        f"{cfg.model} {cfg.model_kwargs} on {cfg.dataset}"
        + (f" (first {cfg.subset} examples)" if cfg.subset else "")
        + f", SGD lr {cfg.learning_rate:g}, batch {cfg.batch_size}, {cfg.steps} steps; probes every {cfg.every} steps "
        f"on the current batch at η = {', '.join(f'{e:.3g}' for e in cfg.etas)}. Medians over training.",
        "",
        "Claims (Santurkar et al. 2018): (1) with BN the loss changes less along the gradient, the gradient is more "
        "predictive and the effective β-smoothness is lower (Fig. 4); (2) BN followed by non-stationary noise "
        "(more internal covariate shift) trains about as well as BN, both better than no BN (Fig. 2).",
        "",
        f"| variant | median loss range | median max grad change | median β | max β | final train loss | final train acc | {cfg.eval_split or 'eval'} acc | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for v, t in s.items():
        lines.append(
            f"| {v} | {t['loss_range']:.4g} | {t['grad_change']:.4g} | {t['beta_smoothness']:.4g} | {t['max_beta_smoothness']:.4g} | "
            f"{t['train_loss']:.4g} | {t['train_accuracy']:.3f} | {t['eval_accuracy']:.3f} | {t['status']} |"
        )
    lines.append("")
    if "vanilla" in s and "bn" in s:
        ratio = {k: s["vanilla"][k] / s["bn"][k] for k in ("loss_range", "grad_change", "beta_smoothness")}
        smoother = all(r > 1 for r in ratio.values())
        lines += [
            f"Smoothness, vanilla / BN: loss range {ratio['loss_range']:.3g}x, gradient change {ratio['grad_change']:.3g}x, "
            f"β-smoothness {ratio['beta_smoothness']:.3g}x: claim (1) {'holds' if smoother else 'does not hold on every measure'} here.",
            "",
        ]
    if {"vanilla", "bn", "noisy_bn"} <= set(s):
        losses = {v: s[v]["train_loss"] for v in ("vanilla", "bn", "noisy_bn")}
        lines.append(
            "Final training loss: " + ", ".join(f"{v} {l:.4g}" for v, l in losses.items())
            + f"; noisy_bn / bn {losses['noisy_bn'] / losses['bn']:.3g}, vanilla / bn {losses['vanilla'] / losses['bn']:.3g}."
        )
    return "\n".join(lines) + "\n"


def _stored(root: pathlib.Path, cfg: SmoothnessConfig) -> dict[str, list[dict]]:
    return {v: read_jsonl(RunDir(root / v).metrics) for v in cfg.variants if RunDir(root / v).metrics.exists()}


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="digits", help=f"one of {sorted(CONFIGS)}")
    p.add_argument("--quick", action="store_true", help="a few steps on a small subset, 3 η (tests)")
    p.add_argument("--variants", nargs="+", help=f"subset of {list(VARIANTS)}")
    p.add_argument("--steps", type=int, help="SGD steps per run")
    p.add_argument("--every", type=int, help="probe interval")
    p.add_argument("--lr", type=float, help="SGD learning rate")
    p.add_argument("--eta-factors", type=float, nargs="+", help="probed step sizes as multiples of the lr")
    p.add_argument("--noise", type=float, nargs=2, metavar=("MEAN", "VAR"), help="noisy_bn's noise_mean and noise_var")
    p.add_argument("--plot-only", action="store_true", help="plots + summary.md from the stored files")
    p.add_argument("--results", default="results", help="results folder")
    args = p.parse_args(argv)
    changes = {
        "variants": tuple(args.variants) if args.variants else None,
        "steps": args.steps,
        "every": args.every,
        "learning_rate": args.lr,
        "eta_factors": tuple(args.eta_factors) if args.eta_factors else None,
        "noise_mean": args.noise[0] if args.noise else None,
        "noise_var": args.noise[1] if args.noise else None,
    }
    cfg = study_config(get_config(args.config), changes, quick=args.quick)
    root = pathlib.Path(args.results) / "smoothness" / cfg.name
    t0 = time.time()
    if args.plot_only:
        results = stored_runs(_stored(root, cfg), root)
    else:
        print(f"smoothness {cfg.name}: {len(cfg.variants)} variants, {cfg.steps} steps, η = {', '.join(f'{e:.3g}' for e in cfg.etas)}")
        results = {v: run_one(cfg, v, root) for v in cfg.variants}
    write_report(root, cfg, results)
    report_done(t0, root)


if __name__ == "__main__":
    main()
