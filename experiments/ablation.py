"""The BatchNorm ablation study of "Dissecting BatchNorm: An Ablation Study on the Core
Components" (master thesis, University of Tübingen, 2023): five variants of one problem.

Trains ``vanilla``, ``bn``, ``bn_gamma``, ``bn_beta`` and ``bn_gamma_beta`` of a named
config (``experiments/configs/``) with the same seed as one compiled program
(``fit_many``), for each learning-rate scale, BN placement and seed asked for (three
seeds by default, two with ``--quick``) -- one group per (scale, placement, seed), so
``--shard`` splits there. On a GPU/TPU (``fit_many``'s batched ``'vmap'``) the digits
configs train all seeds of a (scale, placement) in that one program instead
(:func:`seeds_in_one_program`), and ``--shard`` splits by (scale, placement). γ/β are recorded
every 5 steps and the ReLU sparsity after each BN layer a ReLU follows (All-CNN-C's ninth
too) on a probe batch; placements are :func:`positions_preset`'s; then the plots and
``summary.md`` with 95% intervals over seeds and paired tests against vanilla
(``jaxnorm.analysis.ablation``; again from the stored files with ``--plot-only`` or
``python -m experiments.plot <results dir>``). After training, each finished run's final
logits on its training-loss set go to ``final_logits.npz``
(:func:`jaxnorm.train.predict.save_final_logits`; a rerun that reads finished runs back
writes only the missing ones), for the summary's split of the variants' loss gaps into
logit scale and the rest (:mod:`jaxnorm.analysis.logit_scale`).

    python -m experiments.ablation                                  # digits default (make demo): ~2 min on 2 CPU cores
    python -m experiments.ablation --config cifar10_3c3d --lr-scale 0.1 1 10
    python -m experiments.ablation --config cifar10_3c3d --positions default first penultimate first3 last3 with_last
    python -m experiments.ablation --config cifar100_allcnnc --positions last_conv   # one BN, after conv9 (Fig. A.13 C)
    python -m experiments.ablation --config cifar100_allcnnc --shard 2/3   # one SLURM array task of three
    python -m experiments.ablation --config cifar10_3c3d --published-code  # what the thesis's code did (own folder)
    python -m experiments.ablation --quick                          # two seeds, 20 steps on 512 examples

(The config may also be given as the first argument, ``python -m experiments.ablation
cifar10_3c3d``, as before the shared command line.)

Results: ``<results>/ablation/<config>[-published][-quick]/lr<scale>/<variant>[_<placement>]_s<seed>/``
(see the README for what each file holds; a placement other than ``default`` is also the
runs' ``tag``); plots in ``<results>/ablation/<config>[...]/plots/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import math
import pathlib
from typing import Sequence

import jaxnorm.study
from experiments.configs import CONFIGS, get_config
from jaxnorm.analysis.ablation import analyze_ablation
from jaxnorm.layers import ABLATION_VARIANTS
from jaxnorm.observers import GammaBetaRecorder, ReluSparsity
from jaxnorm.study import RunGroup, positive_float, positive_int
from jaxnorm.train import TrainConfig, multi_run
from jaxnorm.train.predict import group_module, save_final_logits

STRATEGIES = ("auto",) + multi_run.STRATEGIES  # the --strategy choices: fit_many's own
#: Seeds a ``--quick`` setup keeps (the first of the setup's).
QUICK_SEEDS = 2
PLACEMENTS = ("default", "with_last", "first", "penultimate", "first3", "last3", "first4", "last4", "last4_incl", "last_conv")


def positions_preset(name: str, num_layers: int, num_convs: int | None = None) -> tuple[int, ...] | None:
    """``bn_positions`` of the thesis's placement studies, for a net of ``num_layers``
    weight layers (the last is the output layer) whose first ``num_convs`` are convs.

    default: after every layer but the last; with_last: after every layer; first: after
    the first only; penultimate: after the last hidden layer only; first3/last3 and
    first4/last4: the first/last three or four hidden layers; last4_incl: the last four
    layers, the output layer included (All-CNN-C, thesis Fig. A.16 C); last_conv: after
    the last conv only (thesis Fig. A.13 C: All-CNN-C's conv9, 3C3D's conv3).

    Raises:
      ValueError: an unknown name; ``last_conv`` without ``num_convs`` in [1, num_layers].
    """
    L, hidden = num_layers, list(range(num_layers - 1))
    on = {
        "default": None, "with_last": list(range(L)), "first": [0], "penultimate": [L - 2], "first3": hidden[:3],
        "last3": hidden[-3:], "first4": hidden[:4], "last4": hidden[-4:], "last4_incl": list(range(L))[-4:],
        "last_conv": [(num_convs or 0) - 1],
    }  # fmt: skip
    if name not in on:
        raise ValueError(f"unknown BN placement {name!r}; known: {sorted(on)}")
    if name == "last_conv" and not (num_convs is not None and 1 <= num_convs <= L):
        raise ValueError(f"BN placement 'last_conv' needs the number of convs in [1, {L}], got {num_convs}.")
    return None if on[name] is None else tuple(int(i in on[name]) for i in range(L))


def weight_layers(config: TrainConfig) -> tuple[str, ...]:
    """The names of the config's model's weight layers (``conv*``/``dense*``; one
    ``bn_positions`` flag each). Every model here puts its convs before its dense layers."""
    import jax
    import jax.numpy as jnp

    from jaxnorm.data import load
    from jaxnorm.models import get_model

    shape = load(config.dataset, config.train_split).images.shape[1:]
    model = get_model(config.model, norm="bn", **{**dict(config.model_kwargs), "bn_positions": None})
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, *shape)), train=False))
    return tuple(k for k in variables["params"] if k.startswith(("conv", "dense")))


def num_weight_layers(config: TrainConfig) -> int:
    """How many weight layers (``bn_positions`` flags) the config's model has."""
    return len(weight_layers(config))


def unrectified_norms(config: TrainConfig, module) -> frozenset[str]:
    """The norm slots no ReLU follows (what :class:`ReluSparsity` must skip): the output
    layer's ``norm<L>``, which feeds the logits -- unless the model rectifies its output
    layer too (``rectifies_output``: All-CNN-C has a ReLU after conv9, before the spatial
    mean, so its ``norm9`` under ``with_last`` is the thesis's key case and is probed)."""
    return frozenset() if getattr(module, "rectifies_output", False) else frozenset({f"norm{num_weight_layers(config)}"})


@dataclasses.dataclass(frozen=True)
class AblationSetup:
    """One ablation study: a named config (``experiments/configs/<config>.py``) and the grid.

    Attributes:
      config: the config's name; results under ``<results>/ablation/<name>/`` with
        ``name`` = config + ``-published`` (``published_code``) + ``-quick``.
      lr_scale: learning-rate multipliers (each a ``lr<scale>/`` folder).
      positions: BN placements (:func:`positions_preset`).
      variants: the ablation variants trained together.
      published_code: what the thesis's published code did instead of its text (DeepOBS configs).
      strategy: ``fit_many``'s multi-run strategy.
      seeds: default seeds.
      seeds_together: train the seeds of one (scale, placement) as one program with the
        variants when that program is batched (``strategy`` resolving to ``'vmap'`` or
        ``'shard'``: GPU/TPU; :func:`seeds_in_one_program`); ``--shard`` then splits by scale and
        placement. Else, and always for the CIFAR configs (15 full-size runs in one
        program would hold 15 models' state at once, and a SLURM array splits the
        seeds), one program per seed.
      is_quick, quick_steps, quick_subset: ``--quick`` trains ``quick_steps`` steps on
        ``quick_subset`` examples.
      probe_size: examples in the ReLU-sparsity probe batch.
    """

    config: str = "digits"
    lr_scale: tuple = (1.0,)
    positions: tuple = ("default",)
    variants: tuple = ABLATION_VARIANTS
    published_code: bool = False
    strategy: str = "auto"
    seeds: tuple = (0,)
    seeds_together: bool = False
    is_quick: bool = False
    quick_steps: int = 20
    quick_subset: int = 512
    probe_size: int = 256

    def __post_init__(self):
        for f in ("lr_scale", "positions", "variants", "seeds"):
            object.__setattr__(self, f, tuple(dict.fromkeys(getattr(self, f))))  # argparse hands lists; no duplicates
        get_config_fn = CONFIGS.get(self.config)
        if get_config_fn is None:
            raise ValueError(f"unknown config {self.config!r}; known: {sorted(CONFIGS)}.")
        if self.published_code and "as_published_code" not in inspect.signature(get_config_fn).parameters:
            raise ValueError(f"--published-code: config {self.config!r} has no published-code variant (the DeepOBS configs have).")
        for what, given, known in (("variant", self.variants, ABLATION_VARIANTS), ("BN placement", self.positions, PLACEMENTS),
                                   ("strategy", (self.strategy,), STRATEGIES)):  # fmt: skip
            bad = sorted(set(given) - set(known))
            if bad or not given:
                raise ValueError(f"unknown {what}(s) {bad or list(given)}; known: {list(known)}.")
        if not self.lr_scale or not all(math.isfinite(s) and s > 0 for s in self.lr_scale):
            raise ValueError(f"learning-rate scales must be finite and > 0, got {list(self.lr_scale)}.")

    @property
    def name(self) -> str:
        return self.config + ("-published" if self.published_code else "") + ("-quick" if self.is_quick else "")

    def quick(self) -> "AblationSetup":
        # Two seeds: the fewest that give an interval and a paired test, so a quick run
        # (and the tests) goes through the same statistics as the full one.
        return dataclasses.replace(self, is_quick=True, seeds=self.seeds[:QUICK_SEEDS])

    def base_config(self) -> TrainConfig:
        return get_config(self.config, **({"as_published_code": True} if self.published_code else {}))

    def run_configs(self, base: TrainConfig, layers: Sequence[str], scale: float, placement: str, seed: int, results) -> list[TrainConfig]:
        """The variants' configs of one (scale, placement, seed) group; ``layers`` are the
        model's weight layers (:func:`weight_layers`)."""
        model_kwargs, tag = dict(base.model_kwargs), base.tag
        bn_positions = positions_preset(placement, len(layers), sum(n.startswith("conv") for n in layers))
        if bn_positions is not None:
            model_kwargs["bn_positions"] = bn_positions
            tag = "+".join(t for t in (base.tag, placement) if t)
        cfg = base.replace(
            learning_rate=base.learning_rate * scale, seed=seed, model_kwargs=model_kwargs, tag=tag,
            results_dir=str(results), study=f"ablation/{self.name}/lr{scale:g}",
        )  # fmt: skip
        if self.is_quick:
            cfg = cfg.quick(steps=self.quick_steps, subset=self.quick_subset)
        suffix = "" if placement == "default" else f"_{placement}"
        return [cfg.replace(norm=v, name=f"{v}{suffix}_s{seed}") for v in self.variants]


def seeds_in_one_program(setup: AblationSetup, num_seeds: int) -> bool:
    """Whether the seeds of one (scale, placement) train as one program with the variants:
    ``setup.seeds_together`` and the program batched (``fit_many``'s strategy resolving to
    ``'vmap'``, or ``'shard'``: vmap on each device).

    Why not on CPU: there ``'auto'`` is ``'loop'``, the step unrolled once per run, so a
    program of 15 runs compiles about three times as long as one of 5, while the programs
    of the other seeds (the same HLO: the seed is data) come from the persistent
    compilation cache. Measured, the digits demo (3 seeds × 5 variants, 10 epochs) on the
    shared 2-core machine: 356 s wall, 229 s CPU as one program; 237 s wall, 154 s CPU as
    three; bit-identical results."""
    runs = num_seeds * len(setup.variants)
    return setup.seeds_together and num_seeds > 1 and multi_run.resolve_strategy(setup.strategy, runs) in ("vmap", "shard")


def observers_for(configs: Sequence[TrainConfig], probe_size: int = 256) -> list:
    """The γ/β recorder and the ReLU-sparsity probe (the first ``probe_size`` training
    examples) for one group's runs."""
    from jaxnorm.data import load, normalize

    cfg = configs[0]
    train = load(cfg.dataset, cfg.train_split)
    n = min(probe_size, cfg.train_subset or probe_size, len(train))
    probe = normalize(train.images[:n], train.mean, train.std)
    module = group_module(configs)
    every = max(1, min(10 * cfg.record_every_steps, (cfg.max_steps or 10**9) // 4))
    return [GammaBetaRecorder(cfg.record_every_steps), ReluSparsity(module, probe, every=every, skip=unrectified_norms(cfg, module))]


class AblationStudy:
    name = "ablation"
    # Three seeds by default, so that every number of the summary carries a 95% interval
    # and every comparison with vanilla a paired test (issue 14); the digits configs
    # train them in one program, the CIFAR ones one program per seed.
    setups = {name: AblationSetup(config=name, seeds=(0, 1, 2), seeds_together=name.startswith("digits")) for name in CONFIGS}
    default = "digits"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--lr-scale", type=positive_float, nargs="+", help="learning-rate multipliers (default 1)")
        parser.add_argument("--positions", nargs="+", choices=PLACEMENTS, help="BN placements (default: default)")
        parser.add_argument("--variants", nargs="+", choices=ABLATION_VARIANTS, help="default: all five")
        parser.add_argument("--published-code", action="store_true", default=None, help="what the thesis's code did instead of its text")
        parser.add_argument("--strategy", choices=STRATEGIES, help="fit_many's multi-run strategy (default auto)")
        parser.add_argument("--quick-steps", type=positive_int, help="steps of a --quick run (default 20)")
        parser.add_argument("--quick-subset", type=positive_int, help="training examples of a --quick run (default 512)")

    def groups(self, setup: AblationSetup, seeds: Sequence[int], root: pathlib.Path) -> list[RunGroup]:
        base = setup.base_config()
        layers = weight_layers(base)
        out = []
        for scale in setup.lr_scale:
            for placement in setup.positions:
                per_seed = [setup.run_configs(base, layers, scale, placement, seed, root.parent.parent) for seed in seeds]
                programs = [sum(per_seed, [])] if seeds_in_one_program(setup, len(seeds)) else per_seed
                for runs in programs:
                    configs = tuple(runs)
                    out.append(RunGroup(configs, observers=functools.partial(observers_for, configs, setup.probe_size),
                                        after=functools.partial(save_final_logits, configs), strategy=setup.strategy))
        return out

    def analyze(self, setup: AblationSetup, root: pathlib.Path) -> str:
        return analyze_ablation(root)


STUDY = AblationStudy()


def main(argv=None) -> int:
    return jaxnorm.study.main(STUDY, argv)  # the config may come first: the shared command line takes it


if __name__ == "__main__":
    raise SystemExit(main())
