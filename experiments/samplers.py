"""Targeted vs random vs interpolated perturbations (“Gradient Conditioning in Deep Neural
Networks”, BYU thesis 2022, Figs. 2.4, 3.2 and 4.3).

The thesis trains an 11-layer ConvNet with normalization and without skip connections,
draws 64 perturbation directions with each sampling method during training and
bootstraps the expected maximum over 16: in weight space (κ_W, Def. 2.5; samplers
targeted Def. 2.6, batch-averaged targeted Def. 2.7, random §2.3), in input space (κ_X,
eq. 3.16; targeted Def. 3.5, uniform random, interpolation toward another example, §3.3)
and for the minimum weight-gradient cosine (Def. 4.1). Here the same net in miniature
trains on digits through :func:`jaxnorm.train.fit_many` (all seeds as one program) with
:class:`~jaxnorm.diagnostics.sampler_comparison.SamplerComparison` recording every
draw's term once per epoch; :mod:`jaxnorm.analysis.samplers` bootstraps and compares the
samplers paired by seed. ``random_isotropic`` (not in the thesis) is the random baseline
with every coordinate moving (the thesis's random sampler leaves zero biases and β still).

    python -m experiments.samplers                  # digits: 3 seeds x 6 epochs, 7 observations of 64 draws per sampler
    python -m experiments.samplers --quick          # 4 steps, a 3-layer MLP, 8 draws: a smoke run of the code path
    python -m experiments.samplers --config cifar10 # the thesis's scale (GPU; tfds-prepared CIFAR-10)
    python -m experiments.samplers --plot-only

Results: ``<results>/samplers/<setup>/s<seed>/`` (fit's files; ``trajectories.npz`` holds
``samplers/*``), ``study.json``, ``plots/samplers.png`` and ``plots/summary.md``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Mapping

import jaxnorm.study
from experiments.configs import condfig_digits
from jaxnorm.analysis import samplers as analysis
from jaxnorm.data import load
from jaxnorm.diagnostics.input_conditioning import INPUT_PERTURBATIONS
from jaxnorm.diagnostics.sampler_comparison import SamplerComparison
from jaxnorm.study import RunGroup, run_location
from jaxnorm.train import TrainConfig, build_model

WEIGHT_SAMPLERS = ("targeted", "limited_targeted", "random", "random_isotropic")


@dataclasses.dataclass(frozen=True)
class SamplerSetup:
    """One sampler comparison.

    Attributes:
      name: results under ``<results>/samplers/<name>/``.
      base: the training run (dataset, optimizer, epochs; model and seed set here).
      model, model_kwargs, norm: the network (the thesis: an 11-layer ConvNet with BN).
      every: observation interval in steps; pool_size: batches are drawn from the first
        this many training examples.
      batch_size, n, m, k, eta: the observer's batch (b), draws per sampler, κ_X's
        examples, the bootstrap's subset size and η (the thesis: 64, 64, -, 16, 0.001).
      input_chunk: κ_X draws per loop iteration (see the observer).
      seeds: default seeds.
    """

    name: str
    base: TrainConfig
    model: str = "convnet"
    model_kwargs: Mapping = dataclasses.field(default_factory=lambda: dict(condfig_digits.CONVNET11))
    norm: str = "bn_gamma_beta"
    every: int = 22
    pool_size: int = 1024
    batch_size: int = 64
    n: int = 64
    m: int = 16
    k: int = 16
    eta: float = 1e-3
    input_chunk: int = 8
    seeds: tuple = (0, 1, 2)

    def __post_init__(self):
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if self.k < 1 or self.every < 1 or self.pool_size < self.batch_size:
            raise ValueError(f"need k >= 1, every >= 1 and pool_size >= batch_size; got {self.k}, {self.every}, {self.pool_size}.")

    def quick(self) -> "SamplerSetup":
        """4 steps of a 3-layer MLP on 256 examples, 8 draws of 4 examples: the code path only."""
        return dataclasses.replace(
            self, name=self.name + "-quick", base=condfig_digits.quick_base(self.base),
            model="mlp", model_kwargs={"depth": 3, "width": 16}, every=2, pool_size=256, batch_size=16, n=8, m=4, k=4,
            input_chunk=4,
        )  # fmt: skip

    def config(self, seed: int, root: pathlib.Path) -> TrainConfig:
        return condfig_digits.seed_config(self.base, self.model, self.model_kwargs, self.norm, seed, run_location(root))


SETUPS = {
    "digits": SamplerSetup(name="digits", base=condfig_digits.BASE),
    # Observed twice per epoch of 782 steps.
    "cifar10": SamplerSetup(name="cifar10", base=condfig_digits.CIFAR10, model_kwargs=condfig_digits.CONVNET11_CIFAR10,
                            every=391, pool_size=4096),  # fmt: skip
}


class SamplerStudy:
    name = "samplers"
    setups = SETUPS
    default = "digits"

    def add_arguments(self, parser) -> None:
        parser.add_argument("--every", type=int, help="observation interval in steps")
        parser.add_argument("--n", type=int, help="draws per sampler (default 64)")
        parser.add_argument("--k", type=int, help="bootstrap subset size (default 16)")
        parser.add_argument("--eta", type=float, help="perturbation scale (default 0.001)")

    def groups(self, setup: SamplerSetup, seeds, root: pathlib.Path) -> list[RunGroup]:
        configs = tuple(setup.config(s, root) for s in seeds)
        return [RunGroup(configs, observers=lambda: [self.observer(setup, configs[0])])]

    def observer(self, setup: SamplerSetup, config: TrainConfig) -> SamplerComparison:
        train = load(config.dataset, config.train_split)
        pool = min(setup.pool_size, config.train_subset or len(train.labels))
        return SamplerComparison(
            build_model(config, train.num_classes), train.images[:pool], train.labels[:pool], mean=train.mean, std=train.std,
            every=setup.every, batch_size=setup.batch_size, n=setup.n, m=setup.m, weight_samplers=WEIGHT_SAMPLERS,
            input_samplers=tuple(INPUT_PERTURBATIONS), eta=setup.eta, input_chunk=setup.input_chunk,
        )  # fmt: skip

    def analyze(self, setup: SamplerSetup, root: pathlib.Path) -> str:
        return analysis.write_report(root, k=setup.k)


STUDY = SamplerStudy()


def main(argv=None) -> int:
    return jaxnorm.study.main(STUDY, argv)


if __name__ == "__main__":
    raise SystemExit(main())
