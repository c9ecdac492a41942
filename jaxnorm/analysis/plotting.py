"""Headless matplotlib for the analyses, and the one place that prepares a report's
folder.

Every plot is written to a file, so the Agg backend is chosen before pyplot is imported
(no display is needed, on a cluster or in CI). :func:`fresh_report_dir` is called by
every study's analysis before it writes anything, so that a replot never leaves a stale
figure of an earlier report (a learning rate or variant no longer in the results) next
to the new ones.
"""

from __future__ import annotations

import pathlib

#: What a report writes and :func:`fresh_report_dir` therefore removes first: every PNG,
#: and the markdown tables the analyses write. Anything else a user keeps in ``plots/``
#: (notes, PDFs, other markdown files, subfolders) is left alone.
REPORT_PATTERNS = ("*.png",)
REPORT_FILES = ("summary.md", "activity.md")


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fresh_report_dir(out, *, owned: bool = True) -> pathlib.Path:
    """Creates the report folder ``out`` and, if ``owned``, deletes the files an earlier
    report wrote there (:data:`REPORT_PATTERNS`, :data:`REPORT_FILES`; not recursively);
    returns it as a path.

    ``owned``: ``out`` is a study's own ``<root>/plots`` (every analysis's default). A
    folder the caller named instead (``out_dir=``) is not cleared: it may be any folder,
    and a PNG there may be the user's; stale files in it are the caller's to remove.
    """
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if owned:
        stale = {p for pattern in REPORT_PATTERNS for p in out.glob(pattern)} | {out / name for name in REPORT_FILES}
        for path in stale:
            if path.is_file() or path.is_symlink():
                path.unlink()
    return out
