"""Beyond the thesis: γ/β trainable only in the last BN layer (the follow-up of §5).

The ``digits`` config (6-layer ConvNet, BN slots ``norm1``..``norm5``) with the γ and β
of ``norm1``..``norm4`` frozen at their initial values (1 and 0): only ``norm5``, the
BN before the output layer, learns γ/β. Everything else trains as in ``digits``. The
variants without γ/β (vanilla, bn) are unaffected; their rows are tagged too so the
group stays together in reports (variant ``<norm>+last_only``). Meant for the default
BN placement: with ``--positions`` the norm layers keep the index of the layer they
follow, so the regex then freezes whichever of norm1..norm4 exist.

Launch: ``python -m experiments.ablation --config digits_last_gamma_beta``. Runtime: the
same programs as ``make demo`` (3 seeds x 10 epochs, about 2 min on 2 quiet CPU cores);
measured 36 min wall on the shared 2-core Xeon at a load of 15-20 from other jobs.
Measured (mean ± 95% interval over seeds 0-2): final training loss 0.0234 ± 0.0021 for
bn_gamma_beta+last_only against 0.0232 ± 0.0032 with γ/β in every layer (the demo), and
0.0456 ± 0.0052 for bn: the last layer's γ/β carry the whole training-loss gain.
"""

from experiments.configs import digits

#: γ/β of every norm layer but the last (norm5) of the 6-layer ConvNet.
FROZEN = r"^norm[1-4]/(scale|bias)$"


def get_config(**options):
    return digits.get_config(**options).replace(frozen=FROZEN, tag="last_only", name="digits_last_gamma_beta")
