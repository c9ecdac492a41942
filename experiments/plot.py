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
import sys


def plot_results(root) -> str:
    """Writes the ablation report of ``root``; returns its one-line verdict. ValueError if
    ``root`` is not an ablation results folder or holds no runs."""
    from jaxnorm.analysis.ablation import analyze_ablation

    return analyze_ablation(pathlib.Path(root))


def main(argv=None) -> int:
    """Exit status 0; 2 with ``python -m experiments.plot: error: <message>`` for a folder
    it refuses or cannot read (``--debug``: the traceback instead); 130 on Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m experiments.plot", description=__doc__.splitlines()[0])
    parser.add_argument("results", help="an ablation results folder, e.g. results/ablation/digits")
    parser.add_argument("--debug", action="store_true", help="re-raise errors with their traceback")
    args = parser.parse_args(argv)
    root = pathlib.Path(args.results)
    try:
        verdict = plot_results(root)
    except (ValueError, OSError, KeyboardInterrupt) as e:
        if args.debug:
            raise
        if isinstance(e, KeyboardInterrupt):
            print(f"{parser.prog}: interrupted.", file=sys.stderr)
            return 130
        parser.error(" ".join(str(e).split()))  # usage, then "prog: error: message"; exits 2
    print(verdict)
    print(f"plots and summary.md written to {root / 'plots'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
