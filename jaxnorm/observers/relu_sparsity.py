"""ReLU sparsity after each norm layer: the fraction of activations the following ReLU
zeroes (“Dissecting BatchNorm: An Ablation Study on the Core Components”, Tübingen thesis 2023, §5 asks whether β changes it)."""

from __future__ import annotations

import jax

from jaxnorm.layers import Norm


class ReluSparsity:
    """The fraction of each norm layer's outputs that a following ReLU zeroes (``<= 0``).

    Measured on a fixed probe batch in training mode (the batch statistics the ReLU sees
    during training; running statistics are not touched), every ``every`` steps, into
    ``metrics.jsonl`` lines ``{"kind": "relu_sparsity", "step": s, "norm1": f1, ...}``.
    The thesis asks (“Dissecting BatchNorm: An Ablation Study on the Core Components”, Tübingen thesis 2023, §5) whether β changes this sparsity. With the
    ``bn_ablation`` superset a vanilla run's (switched-off) norm layers are the identity,
    so its entry is the sparsity of the raw weight-layer output at the same slot; a
    single vanilla run has no norm layers and records nothing.

    Args:
      module: the model as trained (for :func:`~jaxnorm.train.fit_many` over mixed
        variants: ``build_model(config, classes, norm='bn_ablation')``).
      probe: ``(batch, ...)`` normalized inputs, the same every time.
      every: the interval in steps.
      skip: norm layer names not followed by a ReLU (e.g. the output layer's, ``'norm6'``).
    """

    name = "relu_sparsity"
    sink = "metrics"

    def __init__(self, module, probe, every: int = 50, skip=()):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}.")
        self.module, self.probe, self.every, self.skip = module, probe, every, frozenset(skip)

    def __call__(self, state) -> dict[str, jax.Array]:
        _, captured = self.module.apply(
            state.variables,
            self.probe,
            train=True,
            mutable=["batch_stats", "intermediates"],
            capture_intermediates=lambda mdl, method: isinstance(mdl, Norm) and method == "__call__",
            rngs={"dropout": jax.random.PRNGKey(0)},
        )
        out = {}
        for path, value in jax.tree_util.tree_leaves_with_path(captured.get("intermediates", {})):
            layer = getattr(path[0], "key", str(path[0]))
            if layer not in self.skip:
                out[layer] = jax.numpy.mean((value <= 0).astype(jax.numpy.float32))
        return out
