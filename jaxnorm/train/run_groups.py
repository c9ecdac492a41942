"""Which runs can train as one program (:func:`jaxnorm.train.fit_many`), and the
ablation superset that lets the five BatchNorm variants share one.

Runs share a program when they have the same structure: they may differ in bookkeeping
(seed, name, tag, loggers) and in the hyperparameters held as data in the optimizer state
(learning rate, weight decay, momentum). Runs that mix the ablation variants train as
the ``bn_ablation`` superset (:class:`jaxnorm.layers.Norm` with ``maskable``): every run
has γ and β, switched off per run, so only the ones its variant learns are recorded.
"""

from __future__ import annotations

from typing import Sequence

from jaxnorm.layers import ABLATION_VARIANTS, ablation_masks
from jaxnorm.train.config import TrainConfig
from jaxnorm.train.optim import momentum_structure


#: Fields in which runs trained as one program may differ: bookkeeping, and the
#: hyperparameters that live in the optimizer state (data, not structure).
_PER_RUN_FIELDS = ("seed", "name", "tag", "loggers", "learning_rate", "weight_decay", "momentum")


def check_compatible(configs: Sequence[TrainConfig]) -> bool:
    """Validates that the runs can share one program; True if they mix ablation variants
    (then they train as the ``bn_ablation`` superset with per-run switches)."""
    if not configs:
        raise ValueError("fit_many needs at least one config.")
    mixed = len({c.norm for c in configs}) > 1
    if mixed and not all(c.norm in ABLATION_VARIANTS for c in configs):
        raise ValueError(
            f"runs trained together may mix norms only among the ablation variants {ABLATION_VARIANTS}, "
            f"got {sorted({c.norm for c in configs})}."
        )
    per_run = _PER_RUN_FIELDS + (("norm",) if mixed else ())
    strip = lambda c: {k: v for k, v in c.to_dict().items() if k not in per_run}
    base = strip(configs[0])
    for c in configs[1:]:
        diff = sorted(k for k, v in strip(c).items() if base[k] != v)
        if diff:
            raise ValueError(
                f"runs trained together may differ only in {per_run} (norm: among the ablation "
                f"variants); {c.name!r} also differs in {diff}."
            )
    if len({momentum_structure(c.momentum) for c in configs}) > 1:
        raise ValueError("runs trained together must all use momentum (> 0) or all none: the momentum buffer is structure.")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be unique, got {names}.")
    return mixed


def learned_filter(variant: str):
    """Keeps the γ/β recorder keys (``.../gamma``, ``.../beta``) a variant learns."""
    masks = ablation_masks(variant)
    drop = {"gamma"} if not masks["use_scale"] else set()
    drop |= {"beta"} if not masks["use_bias"] else set()
    return lambda key: key.rsplit("/", 1)[-1] not in drop
