"""Regenerates every plot and ``summary.md`` of a results folder from the stored files.

    python -m experiments.plot results/ablation/digits

No training happens: the runs' ``metrics.jsonl``, ``trajectories.npz`` and ``config.json``
are all it reads (``jaxnorm.analysis.write_report``). Plots land in ``<dir>/plots/``.
"""

from __future__ import annotations

import argparse
import pathlib


def plot_results(root) -> dict:
    """Writes the report of every run under ``root``; returns the written paths."""
    from jaxnorm.analysis import write_report

    paths = write_report(pathlib.Path(root))
    out = pathlib.Path(root) / "plots"
    print(f"plots and summary.md written to {out} ({len(paths)} files)")
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a results folder (searched recursively for runs)")
    args = parser.parse_args(argv)
    root = pathlib.Path(args.results)
    if not root.exists():
        parser.error(f"{root} does not exist")
    plot_results(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
