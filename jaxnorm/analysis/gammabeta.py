"""Reading the γ/β recorder's arrays out of a run's ``trajectories.npz``.

The recorder writes ``gamma_beta/steps`` ``(T,)`` and ``gamma_beta/<layer>/gamma`` /
``gamma_beta/<layer>/beta`` ``(T, C)`` for the parameters a variant learns.
"""

from __future__ import annotations

import re

import numpy as np

PREFIX = "gamma_beta"
#: The value at which a parameter leaves the normalized activations unchanged.
NEUTRAL = {"gamma": 1.0, "beta": 0.0}
KINDS = ("gamma", "beta")


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def gamma_beta_arrays(trajectories) -> tuple[np.ndarray | None, dict[str, dict[str, np.ndarray]]]:
    """``(steps, {kind: {layer: (T, C) array}})`` with kinds in ('gamma', 'beta') order
    and layers in natural order (norm2 before norm10); kinds without arrays are left out."""
    steps = trajectories.get(f"{PREFIX}/steps")
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in trajectories.items():
        parts = key.split("/")
        if len(parts) >= 3 and parts[0] == PREFIX and parts[-1] in NEUTRAL:
            a = np.asarray(arr, dtype=np.float64)
            a = a.reshape(a.shape[0], -1) if a.ndim != 2 else a
            out.setdefault(parts[-1], {})["/".join(parts[1:-1])] = a
    ordered = {k: {l: out[k][l] for l in sorted(out[k], key=_natural)} for k in KINDS if k in out}
    return (None if steps is None else np.asarray(steps)), ordered
