"""Persistence of mirrored weights in looks-linear layers (“Gradient Conditioning in Deep
Neural Networks”, BYU thesis 2022, Def. 3.9 and Fig. 3.11).

A looks-linear dense layer fed by CReLU has the kernel ``[[W], [−W]]`` at initialization
(:func:`jaxnorm.inits.looks_linear`): input unit j (``relu(x_j)``) and its mirror n + j
(``relu(−x_j)``) connect to every output with weights of opposite sign, so the pair's
sum is 0 and the layer is linear. Training moves the two weights independently. The
thesis measures "the pairwise distance ... by taking the absolute value of the sum of
two weights" and reports that mirrored pairs persist during training.

:func:`mirror_distances` gives, per dense layer whose kernel has an even fan-in, the
pair sums ``|K[j] + K[n + j]|`` relative to the layer's root-mean-square weight; the
observer :class:`MirroredPairs` records, every ``every`` steps, per layer, the median of
that relative distance and the fraction of pairs within ``tolerances`` of it (e.g. 1%
and 10% of the RMS weight). A net not initialized with mirrored blocks gives the
chance level of the same statistics (for independent weights of equal scale the
relative pair sum is about |N(0, 2)|: about 0.56% of pairs within 1%).
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
import jax.numpy as jnp

__all__ = ["mirror_distances", "MirroredPairs"]

_DENSE = re.compile(r"dense(\d+)$")


def mirror_distances(params, first: int = 2) -> dict[str, jax.Array]:
    """``{layer: (n, m) |K[:n] + K[n:]| / rms(K)}`` for every ``dense<i>`` kernel with
    ``i >= first`` (the first layer of jaxnorm's ``deep_fc`` is not mirrored), in layer order.

    Raises:
      ValueError: no such layer, or one with an odd fan-in.
    """
    layers = sorted((int(m.group(1)), name) for name in params if (m := _DENSE.match(name)) and int(m.group(1)) >= first)
    if not layers:
        raise ValueError(f"no dense<i> layer with i >= {first} in the params ({sorted(params)}).")
    out = {}
    for _, name in layers:
        k = params[name]["kernel"]
        if k.ndim != 2 or k.shape[0] % 2:
            raise ValueError(f"{name}: a mirrored kernel is (2n, m); got shape {tuple(k.shape)}.")
        n = k.shape[0] // 2
        out[name] = jnp.abs(k[:n] + k[n:]) / jnp.sqrt(jnp.mean(jnp.square(k)))
    return out


class MirroredPairs:
    """Observer: per mirrored layer, ``median`` relative pair distance and ``within_<tol>``
    fractions, as ``(layers,)`` arrays in ``trajectories.npz`` (``mirrored/<key>``)."""

    name = "mirrored"
    sink = "trajectories"

    def __init__(self, every: int, tolerances: Sequence[float] = (0.01, 0.1), first: int = 2):
        if every < 1 or not tolerances or any(not t > 0 for t in tolerances):
            raise ValueError(f"need every >= 1 and tolerances > 0; got {every}, {tolerances}.")
        self.every, self.tolerances, self.first = every, tuple(tolerances), first

    def __call__(self, state) -> dict[str, jax.Array]:
        d = list(mirror_distances(state.params, self.first).values())
        out = {"median": jnp.stack([jnp.median(a) for a in d])}
        for t in self.tolerances:
            out[f"within_{t:g}"] = jnp.stack([jnp.mean(a < t) for a in d])
        return out
