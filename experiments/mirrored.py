"""Mirrored weights in a 40-layer looks-linear CReLU net persist during training
(“Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022, Def. 3.9, Fig. 3.11).

The thesis trains a 40-layer fully-connected net, CReLU everywhere but the last layer,
looks-linear initialized, with BatchNorm (without it, it "diverged or failed to
converge"), and plots the pairwise distance |w_j + w_{n+j}| of mirrored weights during
training. Here the same net, narrow, trains on digits through
:func:`jaxnorm.train.fit_many` (all seeds as one program) with the
:class:`~jaxnorm.diagnostics.mirrored.MirroredPairs` observer; the control is the same
net with orthogonal (unmirrored) init, whose pair statistics are the chance level.

    python -m experiments.mirrored               # digits: 2 inits x 3 seeds, 40 layers of width 32, 6 epochs
    python -m experiments.mirrored --quick       # 4 steps, 6 layers of width 8: a smoke run
    python -m experiments.mirrored --plot-only

Results: ``<results>/mirrored/<setup>/<init>_s<seed>/`` (``trajectories.npz`` holds
``mirrored/*``), ``plots/mirrored.png`` and ``plots/summary.md``
(:mod:`jaxnorm.analysis.mirrored`).
"""

from __future__ import annotations

import dataclasses
import pathlib

import jaxnorm.study
from experiments.configs import condfig_digits
from jaxnorm.analysis import mirrored as analysis
from jaxnorm.diagnostics.mirrored import MirroredPairs
from jaxnorm.study import RunGroup, run_location
from jaxnorm.train import TrainConfig

INITS = ("looks_linear", "orthogonal")


@dataclasses.dataclass(frozen=True)
class MirroredSetup:
    """Attributes: name; base (the training run); depth, width; every (observation
    interval in steps); tolerances (relative pair distances counted as mirrored); inits
    (``looks_linear`` and the ``orthogonal`` control); seeds."""

    name: str
    base: TrainConfig
    depth: int = 40
    width: int = 32
    every: int = 11
    tolerances: tuple = (0.01, 0.1)
    inits: tuple = INITS
    seeds: tuple = (0, 1, 2)

    def __post_init__(self):
        for f in ("tolerances", "inits", "seeds"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        unknown = sorted(set(self.inits) - set(INITS))
        if unknown or self.depth < 3:
            raise ValueError(f"inits must be among {list(INITS)} (got {unknown}) and depth >= 3 (got {self.depth}).")

    def quick(self) -> "MirroredSetup":
        return dataclasses.replace(self, name=self.name + "-quick", base=condfig_digits.quick_base(self.base),
                                   depth=6, width=8, every=2)  # fmt: skip

    def config(self, init: str, seed: int, root: pathlib.Path) -> TrainConfig:
        kwargs = {"depth": self.depth, "width": self.width, "activation": "crelu", "kernel_init": init}
        return self.base.replace(model="deep_fc", model_kwargs=kwargs, seed=seed, tag=init, name=f"{init}_s{seed}", **run_location(root))


SETUPS = {"digits": MirroredSetup(name="digits", base=condfig_digits.BASE)}


class MirroredStudy:
    name = "mirrored"
    setups = SETUPS
    default = "digits"

    def add_arguments(self, parser) -> None:
        parser.add_argument("--depth", type=int, help="weight layers (default 40)")
        parser.add_argument("--width", type=int, help="hidden units (default 32)")
        parser.add_argument("--every", type=int, help="observation interval in steps")

    def groups(self, setup: MirroredSetup, seeds, root: pathlib.Path) -> list[RunGroup]:
        out = []
        for init in setup.inits:  # different initializers: one program each
            configs = tuple(setup.config(init, s, root) for s in seeds)
            out.append(RunGroup(configs, observers=lambda: [MirroredPairs(setup.every, setup.tolerances)]))
        return out

    def analyze(self, setup: MirroredSetup, root: pathlib.Path) -> str:
        return analysis.write_report(root)


STUDY = MirroredStudy()


def main(argv=None) -> int:
    return jaxnorm.study.main(STUDY, argv)


if __name__ == "__main__":
    raise SystemExit(main())
