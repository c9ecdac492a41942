"""Beyond the thesis: γ initialized to 0.5 instead of 1 (Davis & Frank 2021).

The ``digits`` config with every learned γ starting at 0.5 (variant
``<norm>+gamma0.5``). Variants without a learned γ (vanilla, bn, bn_beta) are unchanged:
their γ is fixed at exactly 1, so their rows are the ``digits`` runs again, a check.

Launch: ``python -m experiments.ablation --config digits_gamma_init``. Runtime: the
programs of ``make demo`` (3 seeds x 10 epochs, about 2 min on 2 quiet CPU cores); measured
13 min wall on the shared 2-core Xeon at a load of about 5-10 from other jobs. Measured
(seeds 0-2, mean ± 95% interval): final training loss 0.0357 ± 0.0051 (bn_gamma_beta) and
0.0425 ± 0.0039 (bn_gamma), against 0.0232 ± 0.0032 and 0.0257 ± 0.0030 with γ = 1; test
accuracy unchanged (0.985 ± 0.014, 0.986 ± 0.012).
"""

from experiments.configs import digits

GAMMA_INIT = 0.5


def get_config(**options):
    return digits.get_config(**options).replace(gamma_init=GAMMA_INIT, tag="gamma0.5", name="digits_gamma_init")
