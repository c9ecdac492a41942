"""Named setups of the BatchNorm ablation study, as code.

Each module defines ``get_config(**options) -> TrainConfig``: the base run of one problem
(its ``norm`` is replaced by each ablation variant). ``python -m experiments.ablation --config <name>``
trains it; every config's docstring holds its launch command and expected runtime.
"""

from __future__ import annotations

from typing import Callable

from experiments.configs import (
    cifar10_3c3d,
    cifar100_3c3d,
    cifar100_allcnnc,
    digits,
    digits_bn_only,
    digits_gamma_init,
    digits_last_gamma_beta,
    mnist1d,
)

CONFIGS: dict[str, Callable] = {
    "digits": digits.get_config,
    "mnist1d": mnist1d.get_config,
    "cifar10_3c3d": cifar10_3c3d.get_config,
    "cifar100_3c3d": cifar100_3c3d.get_config,
    "cifar100_allcnnc": cifar100_allcnnc.get_config,
    # Beyond the thesis (tagged variants: <norm>+<tag>).
    "digits_last_gamma_beta": digits_last_gamma_beta.get_config,
    "digits_bn_only": digits_bn_only.get_config,
    "digits_gamma_init": digits_gamma_init.get_config,
}


def get_config(name: str, **options):
    """The named config; ValueError listing the names for an unknown one."""
    from jaxnorm._registry import lookup

    return lookup(CONFIGS, name, "config")(**options)
