"""Shattered gradients on a 1-D toy (Balduzzi et al., "The Shattered Gradients Problem:
If resnets are the answer, then what is the question?", ICML 2017, Fig. 1; reproduced as
Fig. 3.5 of “Gradient Conditioning in Deep Neural Networks”, BYU thesis 2022).

A network mapping one input to one output is evaluated at initialization on a grid of
inputs, and its input gradient ``f'(x)`` is read as a signal over x: in shallow nets and
resnets it resembles brown noise (neighbouring inputs have nearly the same gradient), in
deep feedforward rectifier nets white noise (the gradient of one input says nothing
about its neighbour's) -- the paper's "shattered gradients".

* :func:`input_gradient_curve` -- ``f'(x_i)`` for every grid point. BatchNorm layers use
  the statistics of the whole grid batch, held fixed per example (the ``frozen``
  semantics of :mod:`jaxnorm.diagnostics.per_example`), so ``f'(x_i)`` is the derivative
  of the function training would compute on that batch, without the cross-example terms.
* :func:`jaxnorm.analysis.toys.lag_correlation` -- the Pearson correlation of ``f'(x_i)`` and ``f'(x_{i+lag})``:
  ≈ 1 for brown noise, ≈ 0 for white noise (the quantity behind the paper's covariance
  plots).
* :func:`jaxnorm.analysis.toys.spectral_slope` -- the least-squares slope of log power against log frequency
  of the mean-removed curve: ≈ −2 for brown noise, ≈ 0 for white noise.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxnorm.diagnostics.per_example import frozen_batch_stats

__all__ = ["input_gradient_curve"]


def input_gradient_curve(module, variables, x: jax.Array) -> jax.Array:
    """``(b,)``: ``d f(x_i) / d x_i`` for a module with one input element and one output
    (``x``: ``(b, ...)`` with one element per example, e.g. ``(b, 1)`` or ``(b, 1, 1, 1)``).

    Raises:
      ValueError: more than one input element or output per example.
    """
    if int(np.prod(x.shape[1:])) != 1:
        raise ValueError(f"the toy maps one input to one output; got inputs of shape {x.shape[1:]}.")
    has_bn = bool(variables.get("batch_stats"))
    stats = frozen_batch_stats(module, variables, x) if has_bn else None

    def f(xi, st):
        v = {**variables, **({"batch_stats": st} if has_bn else {})}
        out = module.apply(v, xi[None], train=False)
        if out.size != 1:
            raise ValueError(f"the toy maps one input to one output; got {out.size} outputs.")
        return out.reshape(())

    grads = jax.vmap(jax.grad(f), in_axes=(0, 0 if has_bn else None))(x, stats)
    return grads.reshape(x.shape[0])

