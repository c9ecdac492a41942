"""The γ/β recorder: every norm layer's learned scale and shift over training
(“Dissecting BatchNorm: An Ablation Study on the Core Components”, Tübingen thesis 2023 records them every 5 steps)."""

from __future__ import annotations

import jax

def norm_layers(params) -> dict[str, dict[str, jax.Array]]:
    """The learned γ/β of every norm layer: ``{'norm3': {'gamma': ..., 'beta': ...}}``.

    Norm layers are the params entries named ``norm{k}`` (see :mod:`jaxnorm.models`);
    a variant without γ or β has no such key (nothing to record)."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = [getattr(p, "key", str(p)) for p in path]
        if len(keys) >= 2 and keys[-2].startswith("norm") and keys[-1] in ("scale", "bias"):
            layer = "/".join(keys[:-1])
            out.setdefault(layer, {})["gamma" if keys[-1] == "scale" else "beta"] = leaf
    return out


class GammaBetaRecorder:
    """Records every norm layer's γ and β every ``every`` steps (“Dissecting BatchNorm: An Ablation Study on the Core Components”, Tübingen thesis 2023:
    every 5 steps) into ``trajectories.npz`` as ``gamma_beta/<layer>/gamma`` and
    ``gamma_beta/<layer>/beta``, each ``(records, channels)``, with ``gamma_beta/steps``."""

    name = "gamma_beta"
    sink = "trajectories"

    def __init__(self, every: int = 5):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}.")
        self.every = every

    def __call__(self, state) -> dict[str, jax.Array]:
        return {f"{layer}/{k}": v for layer, d in norm_layers(state.params).items() for k, v in d.items()}
