"""What the studies' command lines share: a config from the registry with the flags'
overrides (then ``--quick``), and the closing line."""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Mapping


def study_config(base: Any, overrides: Mapping[str, Any], *, quick: bool) -> Any:
    """``base`` (a frozen dataclass config) with every override that is not None (a flag
    left out), then its ``quick()`` variant when ``quick``."""
    cfg = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    return cfg.quick() if quick else cfg


def report_done(t0: float, root: pathlib.Path) -> None:
    print(f"done in {time.time() - t0:.1f} s; plots and summary.md in {root / 'plots'}")


def stored_runs(results: Any, root: pathlib.Path) -> Any:
    """``--plot-only``'s records read back from ``root``; a clear error when there are none
    (nothing to plot is a mistake in the path, not an empty plot)."""
    if not results:
        raise ValueError(f"--plot-only: no stored runs under {root}.")
    return results
