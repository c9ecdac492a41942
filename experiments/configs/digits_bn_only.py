"""Beyond the thesis: "BN-only" training (Frankle et al. 2020, "Training BatchNorm and
only BatchNorm").

The ``digits`` config with every conv/dense kernel and bias frozen at its random
initialization: only the γ/β of the BN layers train (variant ``<norm>+bn_only``). The
vanilla and ``bn`` variants therefore train nothing at all (they stay at chance: the
reference of a random network), ``bn_gamma``/``bn_beta`` train only γ or only β.
The learning rate stays at digits' 0.1: measured over digits' 10 epochs (seeds 0-2, mean
± 95% interval), γ/β alone reach 0.42 ± 0.05 test accuracy (bn_gamma_beta), 0.28 ± 0.08
(bn_gamma), 0.23 ± 0.05 (bn_beta), against 0.11 ± 0.06 for the frozen random network
(vanilla) -- visible progress, so no higher lr is needed.

Launch: ``python -m experiments.ablation --config digits_bn_only``. Runtime: the programs of
``make demo`` (about 2 min on 2 quiet CPU cores); measured 8 min wall on the shared 2-core
Xeon at a load of about 5-10 from other jobs.
"""

from experiments.configs import digits

#: Every weight-layer parameter (conv1..conv5 kernel/bias, dense6 kernel/bias).
FROZEN = r"^(conv|dense)\d+/(kernel|bias)$"
LEARNING_RATE = 0.1


def get_config(**options):
    return digits.get_config(**options).replace(
        frozen=FROZEN, tag="bn_only", learning_rate=LEARNING_RATE, name="digits_bn_only"
    )
