"""Headless matplotlib for the analyses, and the one place that prepares a report's
folder and writes its ``summary.md``.

Every plot is written to a file, so the Agg backend is chosen before pyplot is imported
(no display is needed, on a cluster or in CI). :func:`fresh_report_dir` is called by
every study's analysis before it writes anything, so that a replot never leaves a stale
figure of an earlier report (a learning rate or variant no longer in the results) next
to the new ones. :func:`write_summary` is called by every analysis as its last write:
the ``summary.md`` it writes shows the report's figures (:func:`embed_figures`), so any
markdown viewer opening the folder shows the plots with the tables.
"""

from __future__ import annotations

import pathlib
import re
import urllib.parse

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


# The target of a markdown link or image, ``](target)`` / ``](<target>)``, or of an HTML ``src=``.
_LINK_TARGET = re.compile(r"""\]\(\s*<?([^)>\s]+)>?[^)]*\)|src=["']([^"']+)["']""")


def linked_files(markdown: str) -> set[str]:
    """The relative targets that ``markdown`` links or shows (markdown links and images,
    HTML ``src=``), URL-decoded and without a leading ``./``; absolute URLs are left out."""
    out = set()
    for groups in _LINK_TARGET.findall(markdown):
        target = urllib.parse.unquote(next(g for g in groups if g)).split("#", 1)[0]
        if "://" not in target:
            out.add(target.removeprefix("./"))
    return out


def embed_figures(markdown: str, plots_dir) -> str:
    """``markdown`` with a ``## Figures`` section appended that shows every PNG directly
    in ``plots_dir`` the text does not link yet: one ``![<stem>](<file>)`` per figure,
    sorted by file name, the file stem as its caption; the links are relative (to the
    folder the markdown is written into, ``plots_dir``) and URL-quoted, so they resolve
    in any markdown viewer and when the folder is copied. ``markdown`` unchanged when
    every PNG is linked already or there is none.

    Every PNG in the folder is shown: in a study's own ``plots/`` that is exactly the
    report's (:func:`fresh_report_dir` removed an earlier report's first); in a folder a
    caller named instead (``out_dir=``), PNGs that were there before are shown too.
    """
    linked = linked_files(markdown)
    figures = sorted(p.name for p in pathlib.Path(plots_dir).glob("*.png") if p.is_file() and p.name not in linked)
    if not figures:
        return markdown
    lines = [markdown.rstrip("\n"), "", "## Figures", ""]
    for name in figures:
        caption = re.sub(r"([\[\]\\])", r"\\\1", pathlib.Path(name).stem)  # brackets would end the alt text
        lines += [f"![{caption}]({urllib.parse.quote(name)})", ""]
    return "\n".join(lines)


def write_summary(plots_dir, markdown: str) -> pathlib.Path:
    """Writes ``plots_dir/summary.md``: ``markdown`` with the folder's figures embedded
    (:func:`embed_figures`), UTF-8, ending in a newline; returns its path. Call it after
    the report's last figure is written."""
    text = embed_figures(markdown, plots_dir)
    path = pathlib.Path(plots_dir) / "summary.md"
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return path
