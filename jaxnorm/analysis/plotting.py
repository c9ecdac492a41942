"""Headless matplotlib for the analyses: every plot is written to a file, so the Agg
backend is chosen before pyplot is imported (no display is needed, on a cluster or in CI)."""

from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
