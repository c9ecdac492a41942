"""``StepConditioning``: reads the in-training κ_W estimate that
:func:`jaxnorm.diagnostics.track_step_conditioning` keeps in the optimizer state."""

from __future__ import annotations

import jax

from jaxnorm.diagnostics.step_tracker import find_step_conditioning


class StepConditioning:
    """Observer: the in-training κ_W estimate every ``every`` steps, into ``metrics.jsonl``
    lines ``{"kind": "step_conditioning", "step", "kappa_sgd", "cosine_sgd", "grad_norm"}``.

    Costs a few scalar reads (the tracker does the work inside the train step)."""

    name = "step_conditioning"
    sink = "metrics"

    def __init__(self, every: int = 1):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}.")
        self.every = every

    def __call__(self, state) -> dict[str, jax.Array]:
        s = find_step_conditioning(state.opt_state)
        return {"kappa_sgd": s.kappa, "cosine_sgd": s.cosine, "grad_norm": s.grad_norm}
