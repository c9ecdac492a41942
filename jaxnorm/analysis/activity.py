"""Quantitative activity metrics of the learned γ/β trajectories (thesis 1, §5 future work).

For each norm layer and parameter kind, with ``d = value - neutral`` (neutral 1 for γ,
0 for β):

* ``mean_abs_dev``, ``median_abs_dev``, ``max_abs_dev`` -- of ``|d|`` at the final record,
  over channels;
* ``zero_crossings`` -- mean over channels of the number of sign changes of ``d`` between
  consecutive records (exact zeros are dropped first, so ``+ 0 -`` is one crossing);
* ``frac_active`` -- the fraction of channels whose final ``|d|`` exceeds ``threshold`` (0.1).

None of these depends on the order of the channels.
"""

from __future__ import annotations

import numpy as np

from jaxnorm.analysis.gammabeta import NEUTRAL, gamma_beta_arrays


def zero_crossings(d: np.ndarray) -> np.ndarray:
    """Per channel of a ``(T, C)`` array, the number of sign changes along time, exact zeros ignored."""
    d = np.asarray(d, dtype=np.float64)
    d = d.reshape(d.shape[0], -1)
    out = np.zeros(d.shape[1], dtype=np.int64)
    for c in range(d.shape[1]):
        s = np.sign(d[:, c])
        s = s[s != 0]
        out[c] = int(np.count_nonzero(s[1:] != s[:-1]))
    return out


def activity_metrics(trajectories, threshold: float = 0.1) -> list[dict]:
    """One dict per (layer, kind) of a run's trajectories (a ``trajectories.npz`` dict):
    ``layer, param, channels, records, mean_abs_dev, median_abs_dev, max_abs_dev,
    zero_crossings, frac_active``. Layers in natural order, γ before β within a layer."""
    _, arrays = gamma_beta_arrays(trajectories)
    layers = []
    for kind in arrays:
        layers += [l for l in arrays[kind] if l not in layers]
    rows = []
    for layer in layers:
        for kind, per_layer in arrays.items():
            if layer not in per_layer or per_layer[layer].shape[0] == 0:
                continue
            a = per_layer[layer]
            d = a - NEUTRAL[kind]
            final = np.abs(d[-1])
            rows.append({
                "layer": layer, "param": kind, "channels": int(a.shape[1]), "records": int(a.shape[0]),
                "mean_abs_dev": float(np.mean(final)), "median_abs_dev": float(np.median(final)),
                "max_abs_dev": float(np.max(final)),
                "zero_crossings": float(np.mean(zero_crossings(d))),
                "frac_active": float(np.mean(final > threshold)),
            })
    return rows


_COLUMNS = [
    ("layer", "layer"), ("param", "param"), ("channels", "channels"),
    ("mean_abs_dev", "mean \\|Δ\\|"), ("median_abs_dev", "median \\|Δ\\|"), ("max_abs_dev", "max \\|Δ\\|"),
    ("zero_crossings", "zero crossings / channel"), ("frac_active", "frac \\|Δ\\| > 0.1"),
]
_LEADING = [("variant", "variant"), ("learning_rate", "lr"), ("seed", "seed"), ("run", "run")]


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def activity_table_md(rows: list[dict]) -> str:
    """A markdown table of :func:`activity_metrics` rows (Δ = final value − neutral).
    Leading ``variant``/``learning_rate``/``seed``/``run`` columns appear when rows carry them."""
    cols = [c for c in _LEADING if any(c[0] in r for r in rows)] + _COLUMNS
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
