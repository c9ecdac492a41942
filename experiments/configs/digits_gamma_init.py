"""Beyond the thesis: γ initialized to 0.5 instead of 1 (Davis & Frank 2021).

The ``digits`` config with every learned γ starting at 0.5 (variant
``<norm>+gamma0.5``). Variants without a learned γ (vanilla, bn, bn_beta) are unchanged:
their γ is fixed at exactly 1, so their rows are the ``digits`` runs again, a check.

Launch: ``python -m experiments.ablation --config digits_gamma_init``. Runtime: 46 s on a
2-core CPU (measured, plots included; five variants in one program).
"""

from experiments.configs import digits

GAMMA_INIT = 0.5


def get_config(**options):
    return digits.get_config(**options).replace(gamma_init=GAMMA_INIT, tag="gamma0.5", name="digits_gamma_init")
