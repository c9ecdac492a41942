"""Weight decay and dropout, with and without BatchNorm (CMU lecture “Normalization and Regularization”, the
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
(one step of the engine's SGD with weight decay against the float64 closed form;
dropout's exact 1/(1 − p), its mean over many keys, the identity at eval). This study
measures the rest on a small training subset, where a network overfits:

1. **Sweep**: every (λ, p) of ``weight_decays`` × ``dropout_rates`` for each ``norm``
   (``vanilla``: no normalization; ``bn_gamma_beta``: standard BatchNorm), one run per
   seed, trained by :func:`jaxnorm.train.fit_many`: plain SGD (no momentum), λ is
   ``TrainConfig.weight_decay`` (the objective's ``0.5 λ Σ‖W‖²`` over the weight
   kernels, the output layer's included; not biases, γ, β), held as data in the
   optimizer state, so every (λ, seed) of one (norm, p) is ONE compiled program (a
   RunGroup); the dropout rate is the model's structure, a group of its own. At the end
   each run is evaluated in eval mode (BN on its running statistics, no dropout) on its
   training subset (split ``train``, the first ``train_subset`` examples) and on the
   test split. The runs of one seed share initialization, data order and dropout masks
   (functions of the seed), so settings are compared by paired differences: the paired
   t-test over seeds of :mod:`jaxnorm.analysis.stats`, its 95% interval and p; the claim
   "regularization shrinks the gap" holds for a change only when that interval lies
   below zero (``jaxnorm.analysis.regularization.gap_verdict``).
2. **Effective learning rate of scale-invariant weights**: a weight layer feeding a
   BatchNorm layer (no bias) computes the same function for W and cW, so SGD moves its
   direction with the effective step η/‖W‖²; without weight decay ‖W‖ only grows, weight
   decay shrinks it. The :class:`jaxnorm.observers.weight_norms.WeightNorms` observer
   records ‖W‖_F of every kernel every ``record_every`` steps; the analysis shows ‖W‖
   and η/‖W‖² of the pre-BN layers per λ, against pure decay (1 − ηλ)^t ‖W₀‖.

    python -m experiments.regularization                   # digits: 2 norms x 4 λ x 4 p x 3 seeds, 360 examples, 2000 SGD steps: 8 programs
    python -m experiments.regularization --quick           # 40 steps, 64 examples, λ ∈ {0, 0.01}, p ∈ {0, 0.5}, one seed (smoke)
    python -m experiments.regularization --config cifar10  # MLP on 5,000 CIFAR-10 images (GPU; tfds-prepared CIFAR-10)
    python -m experiments.regularization --plot-only       # plots + summary.md from the stored files
    python -m experiments.regularization --weight-decays 0 1e-3 3e-2 --dropout-rates 0 0.5 --seeds 0 1   # (flags win over --quick)

Run time (2 CPU cores shared with other jobs): see the README (default ≈ the forked
loop's 95 s; quick ≈ 20-60 s, mostly compiling).

Results in ``<results>/regularization/<config>[-quick]/``: ``study.json`` (setup and
seeds), one run folder per (norm, λ, p, seed), ``<norm>_wd<λ>_p<p>_s<seed>/``, written by
``fit`` (``config.json``, ``metrics.jsonl`` with ``weight_norms`` lines every
``record_every`` steps from step 0, ``train`` lines, the final ``eval`` lines of the
splits ``train`` and ``test``, or a ``divergence`` line; ``status.json``; the final
checkpoint, so a rerun skips finished runs). ``plots/gap.png``, ``plots/grid.png``,
``plots/weight_norms.png`` and ``plots/summary.md`` (:mod:`jaxnorm.analysis.regularization`).
Evaluation uses ``eval_subset = train_subset``: the test split is evaluated on its first
``train_subset`` examples (all 359 of digits' test split in the default setup).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Optional, Sequence

import jaxnorm.study
from jaxnorm._registry import lookup
from jaxnorm.analysis import regularization as analysis
from jaxnorm.layers import NORMS
from jaxnorm.observers.weight_norms import WeightNorms
from jaxnorm.study import RunGroup, run_location
from jaxnorm.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class RegularizationSetup:
    """One regularization study: every (λ, p) of ``weight_decays`` × ``dropout_rates``
    for every norm and seed.

    Attributes:
      dataset, train_subset: training data (the first ``train_subset`` examples of the
        ``train`` split; None = all); evaluated on it and on the test split (both
        truncated to ``train_subset`` examples: ``TrainConfig.eval_subset``).
      model, model_kwargs: the network (``norm`` is set per run, and ``dropout_rate``
        where p > 0: the model must accept it, as ``mlp`` does).
      norms: names from :data:`jaxnorm.layers.NORMS`.
      weight_decays: the λ of ``λ/2 Σ‖W‖²`` over the weight kernels; dropout_rates: p.
      learning_rate, batch_size, steps: plain SGD (no momentum: the lecture's update).
      seeds: one run per seed (initialization, data order and dropout masks).
      record_every: the interval of the weight norms and training records; ``steps``
        must be a multiple of it.
      eval_batch_size: batch size of the final evaluation.
      strategy: ``fit_many``'s multi-run strategy (``vmap``: MLPs batch well on CPU too,
        and one vmapped step compiles in a fraction of the time of 12 unrolled ones).
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
    # 180: the 360 training and 359 test examples lay out as 2 x 180 each, so both splits
    # share one compiled evaluation.
    eval_batch_size: int = 180
    strategy: str = "vmap"

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
        _check_seeds(self.seeds)

    def quick(self) -> "RegularizationSetup":
        """A smoke run of the whole pipeline: 40 steps on 64 examples, λ ∈ {0, 1e-2},
        p ∈ {0, 0.5}, one seed, a small MLP whatever the setup's model."""
        return dataclasses.replace(
            self, name=self.name + "-quick", train_subset=64, batch_size=16, steps=40, seeds=(0,),
            weight_decays=(0.0, 1e-2), dropout_rates=(0.0, 0.5), record_every=10,
            model="mlp", model_kwargs={"depth": 3, "width": 32},
        )  # fmt: skip


def _check_values(name: str, values, ok, what: str) -> None:
    good = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and ok(v)
    if not len(values) or not all(good(v) for v in values) or len(set(values)) != len(values):
        raise ValueError(f"{name} must be a non-empty list of distinct finite numbers {what}, got {values!r}.")


def _check_seeds(seeds) -> None:
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"seeds must be distinct ints >= 0, at least one, got {seeds!r}.")


SETUPS: dict[str, RegularizationSetup] = {
    "digits": RegularizationSetup(),
    # The lecture's setting on a GPU: an MLP on a 5,000-image CIFAR-10 subset, which it
    # overfits heavily. Not yet run here (no GPU with CIFAR-10 prepared): 8 programs (2
    # norms x 4 p) of 10,000 steps, each advancing its 12 runs (4 λ x 3 seeds) at once.
    "cifar10": RegularizationSetup(
        name="cifar10", dataset="cifar10", train_subset=5000, model_kwargs={"depth": 4, "width": 512},
        learning_rate=0.05, batch_size=128, steps=10000, record_every=100, eval_batch_size=1000,
    ),  # fmt: skip
}


def run_name(norm: str, weight_decay: float, dropout: float, seed: int) -> str:
    return f"{norm}_wd{weight_decay:g}_p{dropout:g}_s{seed}"


def run_config(setup: RegularizationSetup, root: pathlib.Path, norm: str, weight_decay: float, dropout: float, seed: int) -> TrainConfig:
    """The run (norm, λ, p, seed) of ``setup``, stored in ``root/<run_name>/``.

    ``epochs = steps`` is only an upper bound (an epoch is at least one step); ``max_steps``
    ends the run. Evaluation and the one checkpoint happen after the last step only (the
    checkpoint lets a rerun skip the finished run)."""
    extra = {"dropout_rate": float(dropout)} if dropout > 0 else {}  # p = 0: any model, dropout or not
    return TrainConfig(
        dataset=setup.dataset, model=setup.model, model_kwargs={**setup.model_kwargs, **extra}, norm=norm,
        batch_size=setup.batch_size, epochs=setup.steps, max_steps=setup.steps, optimizer="sgd", momentum=0.0,
        learning_rate=float(setup.learning_rate), weight_decay=float(weight_decay),
        train_subset=setup.train_subset, eval_splits=("train", "test"), eval_subset=setup.train_subset,
        eval_every_epochs=setup.steps, checkpoint_every_epochs=setup.steps, eval_batch_size=setup.eval_batch_size,
        log_every_steps=setup.record_every, record_every_steps=setup.record_every, seed=seed,
        **run_location(root), name=run_name(norm, float(weight_decay), float(dropout), seed),
    )  # fmt: skip


class RegularizationStudy:
    name = "regularization"
    setups = SETUPS
    default = "digits"

    def add_arguments(self, parser) -> None:
        parser.add_argument("--norms", nargs="+", type=str, help="norms to compare")
        parser.add_argument("--weight-decays", dest="weight_decays", type=float, nargs="+", help="the λ values")
        parser.add_argument("--dropout-rates", dest="dropout_rates", type=float, nargs="+", help="the p values")
        parser.add_argument("--steps", type=int, help="SGD steps per run")
        parser.add_argument("--lr", dest="learning_rate", type=float, help="SGD learning rate")

    def groups(self, setup: RegularizationSetup, seeds: Sequence[int], root: pathlib.Path) -> list[RunGroup]:
        """One group (one compiled program) per (norm, p), holding every (λ, seed)."""
        _check_seeds(tuple(seeds))
        observers = lambda: [WeightNorms(setup.record_every)]  # scale-invariant layers found from the params
        return [
            RunGroup(
                tuple(run_config(setup, root, norm, wd, p, seed) for wd in setup.weight_decays for seed in seeds),
                observers=observers,
                strategy=setup.strategy,
            )
            for norm in setup.norms
            for p in setup.dropout_rates
        ]

    def analyze(self, setup: RegularizationSetup, root: pathlib.Path) -> str:
        return analysis.write_report(root)


STUDY = RegularizationStudy()


def main(argv: Optional[Sequence[str]] = None) -> int:
    return jaxnorm.study.main(STUDY, argv)


if __name__ == "__main__":
    raise SystemExit(main())
