"""The working precision of the diagnostics: float32, or the input's if it is wider.

Metrics computed from gradients (Gram matrices, norms, cosines) used to cast to float32,
so a float64 model (``jax_enable_x64``) got only float32-accurate results. They now keep
float64 inputs in float64 and compute everything narrower (bfloat16, float16, integers)
in float32.
"""

from __future__ import annotations

import jax.numpy as jnp


def working_dtype(x) -> jnp.dtype:
    """float32, or ``x``'s floating dtype when it is wider (float64 under x64)."""
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def as_working(x):
    """``x`` as an array of :func:`working_dtype`."""
    return jnp.asarray(x, working_dtype(x))
