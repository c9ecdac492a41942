"""Loss-landscape smoothness with and without BatchNorm, and BatchNorm under injected
internal covariate shift (Santurkar, Tsipras, Ilyas & Madry 2018, "How does batch
normalization help optimization?", Fig. 2/7 and Fig. 4).

Three variants train with plain minibatch SGD ``w <- w - lr ∇L_B(w)`` through
:func:`jaxnorm.train.fit_many` (BatchNorm in training mode, running statistics updated):
``vanilla`` (no normalization), ``bn`` (standard BatchNorm, learned γ and β:
``bn_gamma_beta``) and ``noisy_bn`` (the same network, each BN output followed by
non-stationary noise). ``vanilla`` and ``bn`` train as one program (the ``bn_ablation``
superset); ``noisy_bn`` is a model option, so it is a program of its own.

Every ``every`` steps the :class:`~jaxnorm.observers.smoothness.Smoothness` observer
probes the training loss L on a fixed probe set (the first ``probe_examples`` training
examples, in batches of the training batch size, BN with batch statistics) at w and at
w − ηg for every η of ``eta_factors × lr`` (g = ∇L(w); all η in one vmapped call):
the loss range over η (Fig. 4a), the gradient change ‖∇L(w − ηg) − g‖ (Fig. 4b) and the
effective β-smoothness max_η ‖∇L(w − ηg) − g‖ / ‖ηg‖ (Fig. 4c). The grid defaults to 8
log-spaced η from lr/4 to 4·lr.

**Noisy BN** (Fig. 2): :class:`jaxnorm.layers.Norm`'s ``noise_mean``/``noise_var``
(``norm_options``): in training mode every BN output y becomes ``y·√v + m`` with
per-channel ``m ~ U(−noise_mean, noise_mean)``, ``v ~ U(1, 1 + noise_var)``, redrawn
every step from the ``'dropout'`` stream (keyed by (seed, epoch, step): a resumed run
draws the same noise). Held-out accuracy is measured without noise (running
statistics); for ``noisy_bn`` the running averages saw noisy activations, so an
``after`` step also evaluates with the noise-free network's population statistics over
the training set (:func:`jaxnorm.diagnostics.bn_statistics.population_batch_stats`), written to
``<run>/recalibrated_eval.json`` -- the accuracy the summary reports for it.

    python -m experiments.smoothness                  # digits, 6-layer ConvNet, 400 SGD steps, seeds 0 1 2 (see the README for the time)
    python -m experiments.smoothness --quick          # 20 steps, 256 examples, 3-layer MLP, 3 η, seed 0 (tests): ~20-30 s
    python -m experiments.smoothness --config cifar10 # 3C3D on CIFAR-10 (GPU; tfds-prepared CIFAR-10)
    python -m experiments.smoothness --plot-only      # plots + summary.md from the stored files

Results in ``<results>/smoothness/<setup>/``: runs ``<variant>_s<seed>/`` (fit's files;
``config.json``'s ``tag`` is the variant; ``metrics.jsonl`` has the ``smoothness`` lines),
``study.json``, ``plots/landscape.png``, ``plots/predictiveness.png``,
``plots/beta_smoothness.png``, ``plots/ics.png`` and ``plots/summary.md``
(:mod:`jaxnorm.analysis.smoothness`: mean ± 95% t-interval over the seeds, the
vanilla/BN comparisons paired by seed with their p-values and verdicts, bands over
seeds in the plots).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm.study
from jaxnorm._registry import lookup
from jaxnorm.analysis import smoothness as analysis
from jaxnorm.data import load, steps_per_epoch
from jaxnorm.data.augmentation import normalize
from jaxnorm.diagnostics.bn_statistics import evaluate_in_mode, population_batch_stats
from jaxnorm.observers.smoothness import Smoothness, check_etas
from jaxnorm.results import read_json, write_json
from jaxnorm.study import RunGroup, run_location
from jaxnorm.train import TrainConfig, build_model


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
class SmoothnessSetup:
    """One smoothness study.

    Attributes:
      dataset, subset: training data (``subset``: the first n examples; None = all);
        eval_split: the held-out split evaluated at the end.
      model, model_kwargs: the network (``norm`` and the noise are set per variant).
      variants: names from :data:`VARIANTS`.
      learning_rate, batch_size, steps: plain minibatch SGD (no momentum, no weight
        decay: w − ηg at η = lr is exactly a training step on the probe set).
      every: probe and train-record interval.
      eta_factors: the probed step sizes as multiples of ``learning_rate``.
      probe_examples: the probe set, the first n training examples (in batches of
        ``batch_size``).
      noise_mean, noise_var: ``noisy_bn``'s shift range U(−noise_mean, noise_mean) and
        variance range U(1, 1 + noise_var).
      seeds: default seeds (initialization, data order, noise).
    """

    name: str = "digits"
    dataset: str = "digits"
    subset: Optional[int] = None
    eval_split: str = "test"
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
    probe_examples: int = 64
    noise_mean: float = 1.0
    noise_var: float = 2.0
    # Three seeds: the summary's intervals and paired tests need them (vanilla's medians
    # varied ~4x between two seeds).
    seeds: tuple = (0, 1, 2)

    def __post_init__(self):
        # Command-line lists become tuples (the setup is frozen and compared).
        for f in ("variants", "eta_factors", "seeds"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        if not self.variants:
            raise ValueError("variants: need at least one.")
        for v in self.variants:
            lookup(VARIANTS, v, "variant")
        for f in ("steps", "every", "batch_size", "probe_examples"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{f} must be an int >= 1, got {v!r}.")
        try:
            check_etas(self.eta_factors)
        except ValueError:
            raise ValueError(f"eta_factors must be a non-empty list of finite numbers > 0, got {self.eta_factors!r}.") from None
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be finite and > 0, got {self.learning_rate!r}.")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (BatchNorm needs two values per feature), got {self.batch_size}.")
        if not (self.noise_mean >= 0 and self.noise_var >= 0 and math.isfinite(self.noise_mean + self.noise_var)):
            raise ValueError(f"noise_mean and noise_var must be finite and >= 0, got {self.noise_mean}, {self.noise_var}.")

    @property
    def etas(self) -> tuple[float, ...]:
        return tuple(f * self.learning_rate for f in self.eta_factors)

    def quick(self) -> "SmoothnessSetup":
        """A smoke run of the whole pipeline: 20 steps on 256 examples, 3 η, one seed, and
        a 3-layer MLP whatever the setup's model (compiling a convnet's probe alone takes
        longer than the whole quick run should; the code path does not depend on the
        model)."""
        return dataclasses.replace(
            self, name=self.name + "-quick", subset=256, steps=20, every=10, eta_factors=(0.5, 1.0, 2.0),
            model="mlp", model_kwargs={"depth": 3, "width": 32}, seeds=(0,),
        )  # fmt: skip


SETUPS: dict[str, SmoothnessSetup] = {
    "digits": SmoothnessSetup(),
    # The paper's setting on a GPU: a VGG-like convnet on CIFAR-10 (DeepOBS 3C3D here),
    # ~16 epochs of SGD at batch 128. Not yet run here (no GPU with CIFAR-10 prepared);
    # expect minutes on an H100 (3C3D is ~0.6 GFLOP per step fwd+bwd; the probes add
    # 2 x 8 forward/backward passes on 128 examples every 50 steps, about a third more).
    "cifar10": SmoothnessSetup(
        name="cifar10", dataset="cifar10", eval_split="validation", model="3c3d", model_kwargs={},
        learning_rate=0.05, batch_size=128, steps=5000, every=50, probe_examples=128,
    ),  # fmt: skip
}

RECALIBRATED = "recalibrated_eval.json"


class SmoothnessStudy:
    name = "smoothness"
    setups = SETUPS
    default = "digits"

    def add_arguments(self, parser) -> None:
        parser.add_argument("--variants", nargs="+", help=f"subset of {list(VARIANTS)}")
        parser.add_argument("--steps", type=int, help="SGD steps per run")
        parser.add_argument("--every", type=int, help="probe interval")
        parser.add_argument("--lr", dest="learning_rate", type=float, help="SGD learning rate")
        parser.add_argument("--eta-factors", type=float, nargs="+", help="probed step sizes as multiples of the lr")
        parser.add_argument("--probe-examples", type=int, help="probe set size (first n training examples)")
        parser.add_argument("--noise-mean", type=float, help="noisy_bn's shift range U(-m, m)")
        parser.add_argument("--noise-var", type=float, help="noisy_bn's variance range U(1, 1 + v)")

    def config(self, setup: SmoothnessSetup, variant: str, seed: int, root: pathlib.Path) -> TrainConfig:
        spec = VARIANTS[variant]
        n = len(load(setup.dataset, "train").labels) if setup.subset is None else setup.subset
        epochs = math.ceil(setup.steps / steps_per_epoch(n, setup.batch_size))
        kwargs = dict(setup.model_kwargs)
        if spec.noise:
            kwargs["norm_options"] = {**dict(kwargs.get("norm_options") or {}), "noise_mean": setup.noise_mean, "noise_var": setup.noise_var}
        return TrainConfig(
            dataset=setup.dataset, model=setup.model, model_kwargs=kwargs, norm=spec.norm,
            batch_size=setup.batch_size, epochs=epochs, max_steps=setup.steps, learning_rate=setup.learning_rate,
            train_subset=setup.subset, eval_splits=(setup.eval_split,), eval_every_epochs=epochs,
            log_every_steps=setup.every, checkpoint_every_epochs=5, seed=seed, tag=variant,
            **run_location(root), name=f"{variant}_s{seed}",
        )  # fmt: skip

    def groups(self, setup: SmoothnessSetup, seeds, root: pathlib.Path) -> list[RunGroup]:
        plain = [v for v in setup.variants if not VARIANTS[v].noise]
        noisy = [v for v in setup.variants if VARIANTS[v].noise]
        out = []
        for variants, after in ((plain, None), (noisy, self.recalibrated_eval)):
            if variants:
                configs = tuple(self.config(setup, v, s, root) for v in variants for s in seeds)
                out.append(RunGroup(configs, observers=lambda c=configs: [self.observer(setup, c)], after=after))
        return out

    def observer(self, setup: SmoothnessSetup, configs) -> Smoothness:
        train = load(setup.dataset, "train")
        mixed = len({c.norm for c in configs}) > 1  # fit_many trains them as the bn_ablation superset
        module = build_model(configs[0], train.num_classes, norm="bn_ablation" if mixed else None)
        n = min(setup.probe_examples, len(train.labels) if setup.subset is None else setup.subset)
        images, labels = train.images[:n], train.labels[:n]
        return Smoothness(module, images, labels, train.mean, train.std, etas=setup.etas, every=setup.every, batch_size=min(setup.batch_size, n))

    def recalibrated_eval(self, results) -> None:
        """Noisy runs: held-out loss/accuracy of the noise-free network with population
        statistics over the training set (skipped if already written or diverged)."""
        for r in results:
            out = r.run_dir / RECALIBRATED
            if out.exists() or r.status != "finished":
                continue
            cfg = TrainConfig.from_dict(read_json(r.run_dir / "config.json"))
            train = load(cfg.dataset, cfg.train_split)
            kwargs = dict(cfg.model_kwargs)
            kwargs["norm_options"] = {k: v for k, v in dict(kwargs.get("norm_options") or {}).items() if not k.startswith("noise_")}
            clean = build_model(cfg.replace(model_kwargs=kwargs), train.num_classes)
            n = len(train.labels) if cfg.train_subset is None else cfg.train_subset
            x = normalize(jnp.asarray(train.images[:n]), train.mean, train.std)
            stats = population_batch_stats(clean, r.state.variables, x[: n - n % cfg.batch_size], batch_size=cfg.batch_size)
            state = r.state.replace(batch_stats=stats)
            test = load(cfg.dataset, cfg.eval_splits[0])
            xt = normalize(jnp.asarray(test.images), train.mean, train.std)
            t = jax.device_get(evaluate_in_mode(clean, state.variables, xt, jnp.asarray(test.labels), bn_mode="running", batch_size=cfg.eval_batch_size))
            write_json(out, {"kind": "eval", "split": cfg.eval_splits[0], "step": r.step, "bn_stats": "population (noise-free, training set)",
                             "loss": float(t["loss"]), "acc": float(t["acc"]), "n": int(t["n"])})  # fmt: skip

    def analyze(self, setup: SmoothnessSetup, root: pathlib.Path) -> str:
        return analysis.write_report(root, labels={k: v.label for k, v in VARIANTS.items()})


STUDY = SmoothnessStudy()


def main(argv=None) -> int:
    return jaxnorm.study.main(STUDY, argv)


if __name__ == "__main__":
    raise SystemExit(main())
