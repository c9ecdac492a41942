"""``TrainState``: everything a training run carries from one step to the next.

A pytree of arrays only (no functions, no hidden module state), so it can be jitted,
donated, sharded, vmapped over runs and checkpointed as it is.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """The explicit state of a run.

    Attributes:
      step: int32 scalar, the number of optimizer steps taken.
      params: the model's ``params`` collection (γ/β included where learned).
      batch_stats: the model's ``batch_stats`` collection (``{}`` without BatchNorm).
      opt_state: the optax state.
      rng: PRNG key of the run. Per-step keys are *derived* from (seed, epoch, step),
        never split from this one in place, so a resumed run draws the same numbers;
        ``rng`` is kept for observers and user code that want a run-specific key.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array

    @property
    def variables(self) -> dict:
        """The flax variables dict for ``module.apply``."""
        return {"params": self.params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}


def create_state(key: jax.Array, module, tx: optax.GradientTransformation, sample_input: jax.Array) -> TrainState:
    """Initializes a model and its optimizer. Running statistics start at mean 0 / var 1
    (``init`` runs in eval mode, so it never moves them)."""
    init_key, run_key = jax.random.split(key)
    variables = module.init(init_key, sample_input, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=run_key,
    )
