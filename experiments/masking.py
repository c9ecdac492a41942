"""Mask effectiveness: error and time of every gradient metric against the fraction of
coordinates a random mask keeps (“Gradient Conditioning in Deep Neural Networks”, BYU
thesis 2022, §1.6; Figs. 2.3, 3.1, 3.6, 3.14, 3.15, 3.18, 4.1, 4.2).

Trains the thesis's 11-layer ConvNet with BatchNorm (in miniature, on digits) through
:func:`jaxnorm.train.fit_many`, all seeds as one program. The ``after`` step measures each
trained state: for one fixed set of batches and perturbations
(:func:`~jaxnorm.diagnostics.mask_effectiveness.mask_parts`), every metric with
``repeats`` random masks per fraction, as the error relative to the unmasked value
(:func:`~jaxnorm.diagnostics.mask_effectiveness.relative_errors`); and, in the runs of
``time_seeds``, the wall time of each metric as the study computes it
(:func:`jaxnorm.observers.costs.conditioning_costs` on a
:class:`~jaxnorm.observers.GradientConditioning` with ``mask_fraction`` p, or unmasked).
Written to ``<run>/masking.json``; :mod:`jaxnorm.analysis.masking` plots the median error
with its interquartile band and the times.

    python -m experiments.masking                  # digits: 3 seeds x 6 epochs, 8 fractions x 10 masks, timing (10% mask vs none) on seed 0
    python -m experiments.masking --quick          # 4 steps, a 3-layer MLP, 3 fractions x 2 masks, no timing: a smoke run
    python -m experiments.masking --config cifar10 # the thesis's scale (GPU; tfds-prepared CIFAR-10)
    python -m experiments.masking --plot-only
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Mapping, Optional

import jax
import numpy as np

import jaxnorm.study
from experiments.configs import condfig_digits
from jaxnorm.analysis import masking as analysis
from jaxnorm.data import load
from jaxnorm.data.augmentation import normalize
from jaxnorm.diagnostics.mask_effectiveness import mask_parts, relative_errors
from jaxnorm.diagnostics.masking import random_mask
from jaxnorm.observers import GradientConditioning
from jaxnorm.observers.costs import conditioning_costs
from jaxnorm.results import read_json, write_json
from jaxnorm.study import RunGroup, run_location
from jaxnorm.train import TrainConfig, build_model

#: The timed metrics: the two whose timing the thesis comments on (κ_X, Fig. 3.1; diversity,
#: Fig. 3.15) and κ_W (the Def. 4.1 forms come from its perturbed gradients, so they cost
#: what it costs). Each timed metric and fraction is a compilation of its own, minutes on
#: a shared 2-core CPU: the set is kept small.
TIMED = ("kappa_w", "kappa_x", "diversity")


@dataclasses.dataclass(frozen=True)
class MaskingSetup:
    """One mask-effectiveness study.

    Attributes:
      name: results under ``<results>/masking/<name>/``.
      base: the training run; model, model_kwargs, norm: the network.
      fractions, repeats: mask fractions and masks per fraction for the errors.
      time_fractions, time_repeats, time_seeds: the timed fractions (the unmasked call
        is always timed too), timed calls after a compile, the seeds timed.
      batch_size, num_batches, n_x, m: the measurement's batches and κ_X's draws and examples.
      seeds: default seeds.
    """

    name: str
    base: TrainConfig
    model: str = "convnet"
    model_kwargs: Mapping = dataclasses.field(default_factory=lambda: dict(condfig_digits.CONVNET11))
    norm: str = "bn_gamma_beta"
    fractions: tuple = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    repeats: int = 10
    time_fractions: tuple = (0.1,)
    time_repeats: int = 3
    time_seeds: tuple = (0,)
    batch_size: int = 64
    num_batches: int = 4
    n_x: int = 8
    m: int = 16
    seeds: tuple = (0, 1, 2)

    def __post_init__(self):
        for f in ("fractions", "time_fractions", "time_seeds", "seeds"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        if not self.fractions or any(not 0 < p <= 1 for p in self.fractions + self.time_fractions):
            raise ValueError(f"mask fractions must lie in (0, 1], got {self.fractions}, {self.time_fractions}.")
        if self.repeats < 1 or self.time_repeats < 0:
            raise ValueError(f"need repeats >= 1 and time_repeats >= 0, got {self.repeats}, {self.time_repeats}.")

    def quick(self) -> "MaskingSetup":
        return dataclasses.replace(
            self, name=self.name + "-quick", base=condfig_digits.quick_base(self.base),
            model="mlp", model_kwargs={"depth": 3, "width": 16}, fractions=(0.1, 0.5, 1.0), repeats=2, time_seeds=(),
            batch_size=16, num_batches=2, n_x=2, m=4,
        )  # fmt: skip

    def config(self, seed: int, root: pathlib.Path) -> TrainConfig:
        return condfig_digits.seed_config(self.base, self.model, self.model_kwargs, self.norm, seed, run_location(root))


SETUPS = {
    "digits": MaskingSetup(name="digits", base=condfig_digits.BASE),
    "cifar10": MaskingSetup(name="cifar10", base=condfig_digits.CIFAR10, model_kwargs=condfig_digits.CONVNET11_CIFAR10),
}


def measure(setup: MaskingSetup, results) -> None:
    """The ``after`` step: ``masking.json`` per run (skipped where it exists)."""
    for r in results:
        path = pathlib.Path(r.run_dir) / "masking.json"
        if path.is_file() or r.status != "finished":
            continue
        cfg = TrainConfig.from_dict(read_json(r.run_dir / "config.json"))
        train = load(cfg.dataset, cfg.train_split)
        module = build_model(cfg, train.num_classes)
        need = setup.num_batches * setup.batch_size
        x = normalize(train.images[:need], train.mean, train.std).reshape((setup.num_batches, setup.batch_size) + train.images.shape[1:])
        y = np.asarray(train.labels[:need]).reshape(setup.num_batches, setup.batch_size)
        key = jax.random.PRNGKey(cfg.seed)
        parts = mask_parts(module, r.state.variables, x, y, key=key, n_x=setup.n_x, m=setup.m)  # compiled
        params = r.state.params
        masks = [random_mask(jax.random.PRNGKey(1000 * i + j), params, p) for i, p in enumerate(setup.fractions) for j in range(setup.repeats)]
        errs, absolute = relative_errors(parts, masks)
        shape = (len(setup.fractions), setup.repeats)
        out = {"fractions": list(setup.fractions), "repeats": setup.repeats, "params": int(parts.w.shape[0]),
               "errors": {k: v.reshape(shape).tolist() for k, v in errs.items()}, "absolute_errors": absolute, "timing": {}}  # fmt: skip
        if cfg.seed in setup.time_seeds and setup.time_repeats:
            for p in (None,) + setup.time_fractions:
                obs = GradientConditioning(module, train.images[:need], train.labels[:need], mean=train.mean, std=train.std,
                                           metrics=TIMED, batch_size=setup.batch_size, num_batches=setup.num_batches,
                                           num_input_perturbations=setup.n_x, input_examples=setup.m, mask_fraction=p)  # fmt: skip
                costs = conditioning_costs(obs, r.state, repeats=setup.time_repeats, metrics=TIMED)
                out["timing"]["unmasked" if p is None else str(p)] = costs["seconds"]
        write_json(path, out)


class MaskingStudy:
    name = "masking"
    setups = SETUPS
    default = "digits"

    def add_arguments(self, parser) -> None:
        parser.add_argument("--fractions", type=float, nargs="+", help="mask fractions in (0, 1]")
        parser.add_argument("--repeats", type=int, help="masks per fraction")
        parser.add_argument("--time-repeats", type=int, help="timed calls per metric and fraction (0: no timing)")

    def groups(self, setup: MaskingSetup, seeds, root: pathlib.Path) -> list[RunGroup]:
        configs = tuple(setup.config(s, root) for s in seeds)
        return [RunGroup(configs, observers=lambda: [], after=lambda results: measure(setup, results))]

    def analyze(self, setup: MaskingSetup, root: pathlib.Path) -> str:
        return analysis.write_report(root)


STUDY = MaskingStudy()


def main(argv: Optional[list] = None) -> int:
    return jaxnorm.study.main(STUDY, argv)


if __name__ == "__main__":
    raise SystemExit(main())
