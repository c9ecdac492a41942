"""Regenerates the plots and ``summary.md`` of an ablation results folder from the stored files.

    python -m experiments.plot results/ablation/digits

No training happens: the runs' ``metrics.jsonl``, ``trajectories.npz`` and ``config.json``
are all it reads (``jaxnorm.analysis.ablation.analyze_ablation``). Plots land in
``<dir>/plots/``. The same as ``python -m experiments.ablation --config <config> --plot-only``,
for any folder (an old layout, a copied folder). A folder that is not an ablation run
(another study's, a single run, the parent of several) is refused with an error that says
what to pass, so another study's ``summary.md`` is never overwritten; the other studies
redraw theirs with ``python -m experiments.<study> --plot-only``.
"""

from __future__ import annotations

import argparse
import pathlib


def plot_results(root) -> str:
    """Writes the ablation report of ``root``; returns its one-line verdict. ValueError if
    ``root`` is not an ablation results folder or holds no runs."""
    from jaxnorm.analysis.ablation import analyze_ablation

    return analyze_ablation(pathlib.Path(root))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.plot", description=__doc__.splitlines()[0])
    parser.add_argument("results", help="an ablation results folder, e.g. results/ablation/digits")
    args = parser.parse_args(argv)
    root = pathlib.Path(args.results)
    try:
        verdict = plot_results(root)
    except ValueError as e:
        parser.error(str(e))
    print(verdict)
    print(f"plots and summary.md written to {root / 'plots'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
