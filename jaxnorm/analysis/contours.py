"""Contour plots of the learned γ/β over training (thesis 1, Fig. 3.2 / 4.6 style).

For one run: one panel per norm layer and parameter kind (a row for γ, a row for β,
whichever the variant learns), training step on the vertical axis, channels on the
horizontal axis sorted by their final value, a diverging colour map centred at the
neutral value (1 for γ, 0 for β). All layers of one kind share one symmetric colour
range ``neutral ± max|value - neutral|`` and one colorbar, so layers are comparable.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from jaxnorm.analysis.gammabeta import NEUTRAL, gamma_beta_arrays  # noqa: E402

CMAP = "RdBu_r"
MAX_ROWS = 800  # records drawn per panel (evenly subsampled beyond this)


def symmetric_range(arrays, neutral: float) -> tuple[float, float]:
    """``(neutral - m, neutral + m)`` with ``m`` the largest finite ``|a - neutral|`` (>0)."""
    m = 0.0
    for a in arrays:
        a = np.asarray(a, dtype=np.float64)
        fin = a[np.isfinite(a)]
        if fin.size:
            m = max(m, float(np.max(np.abs(fin - neutral))))
    m = m if m > 0 else 1e-3
    return neutral - m, neutral + m


def channel_order(a: np.ndarray) -> np.ndarray:
    """Indices sorting the channels of a ``(T, C)`` trajectory by their final value (stable)."""
    return np.argsort(np.asarray(a)[-1], kind="stable")


def plot_gamma_beta(run, path, title: str | None = None) -> dict:
    """Writes the γ/β contour figure of ``run`` (a :class:`~jaxnorm.analysis.runs.Run` or a
    trajectories dict) to ``path``. Returns ``{"path", "ranges": {kind: (vmin, vmax)},
    "orders": {kind: {layer: channel order}}}``; raises ValueError without γ/β records."""
    traj = run if isinstance(run, dict) else run.trajectories
    steps, arrays = gamma_beta_arrays(traj)
    arrays = {k: {l: a for l, a in v.items() if a.shape[0] > 0} for k, v in arrays.items()}
    arrays = {k: v for k, v in arrays.items() if v}
    if not arrays:
        raise ValueError("no gamma/beta trajectories to plot")
    if title is None and not isinstance(run, dict):
        c = run.config
        title = f"{c.get('name', run.path.name)}: {c.get('norm')} lr={c.get('learning_rate')} seed={c.get('seed')}"
    kinds = list(arrays)
    ncols = max(len(v) for v in arrays.values())
    # A fixed grid (a narrow last column for each row's colorbar) instead of matplotlib's
    # constrained layout: that layout measures every tick label of every panel again on
    # each draw, which was half of the figure's time (about 1 s of 2 for ten panels).
    width, height = 3.2 * ncols + 1.2, 3.2 * len(kinds)
    fig = plt.figure(figsize=(width, height))
    grid = fig.add_gridspec(len(kinds), ncols + 1, width_ratios=[1.0] * ncols + [0.06], left=0.55 / width,
                            right=1 - 0.8 / width, bottom=0.5 / height, top=1 - 0.6 / height, wspace=0.3, hspace=0.45)
    axes = np.array([[fig.add_subplot(grid[r, c]) for c in range(ncols)] for r in range(len(kinds))])
    ranges, orders = {}, {}
    for row, kind in enumerate(kinds):
        neutral = NEUTRAL[kind]
        vmin, vmax = symmetric_range(arrays[kind].values(), neutral)
        ranges[kind] = (vmin, vmax)
        norm = TwoSlopeNorm(vcenter=neutral, vmin=vmin, vmax=vmax)
        levels = np.linspace(vmin, vmax, 21)
        orders[kind] = {}
        mappable = None
        for col in range(ncols):
            ax = axes[row, col]
            layers = list(arrays[kind])
            if col >= len(layers):
                ax.axis("off")
                continue
            layer = layers[col]
            a = arrays[kind][layer]
            order = channel_order(a)
            orders[kind][layer] = order
            z = a[:, order]
            y = np.asarray(steps, dtype=np.float64) if steps is not None and len(steps) == a.shape[0] else np.arange(a.shape[0], dtype=np.float64)
            if z.shape[0] > MAX_ROWS:
                idx = np.unique(np.linspace(0, z.shape[0] - 1, MAX_ROWS).round().astype(int))
                z, y = z[idx], y[idx]
            x = np.arange(z.shape[1])
            zc = np.clip(np.nan_to_num(z, nan=neutral), vmin, vmax)
            if z.shape[0] >= 2 and z.shape[1] >= 2:
                mappable = ax.contourf(x, y, zc, levels=levels, cmap=CMAP, norm=norm)
            else:
                mappable = ax.pcolormesh(x, y, zc, cmap=CMAP, norm=norm, shading="nearest")
            ax.set_title(f"{layer} {'γ' if kind == 'gamma' else 'β'}", fontsize=9)
            ax.set_xlabel("channel (sorted by final value)", fontsize=8)
            if col == 0:
                ax.set_ylabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        cb = fig.colorbar(mappable, cax=fig.add_subplot(grid[row, ncols]), ticks=np.linspace(vmin, vmax, 5))
        cb.ax.tick_params(labelsize=7)
        cb.ax.yaxis.set_major_formatter("{x:.3g}")
        cb.set_label(f"{'γ' if kind == 'gamma' else 'β'} (neutral {neutral:g})", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"path": path, "ranges": ranges, "orders": orders}
