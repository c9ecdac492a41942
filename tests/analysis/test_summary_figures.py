"""summary.md shows its report's figures: every PNG of plots/ is linked, every link resolves."""

from __future__ import annotations

import pathlib
import re
import urllib.parse

from jaxnorm.analysis import write_report
from jaxnorm.analysis.plotting import embed_figures, linked_files, write_summary

from .synthetic import write_study

# An independent reading of markdown images: ![alt](target), alt may hold escaped brackets.
_IMAGE = re.compile(r"!\[((?:\\.|[^\]\\])*)\]\(([^)\s]+)\)")


def _images(text: str) -> list[tuple[str, str]]:
    return [(alt, urllib.parse.unquote(target)) for alt, target in _IMAGE.findall(text)]


def test_write_report_embeds_every_figure(tmp_path):
    write_study(tmp_path, lrs=(0.1,), seeds=(0,))
    write_report(tmp_path)
    plots = tmp_path / "plots"
    text = (plots / "summary.md").read_text(encoding="utf-8")
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert len(pngs) == 1 + 3  # the curves, and γ/β per variant that learns γ or β (test_report.py)
    images = _images(text)
    assert sorted(target for _, target in images) == pngs  # each once
    assert all((plots / target).is_file() for _, target in images)
    assert [target for _, target in images] == pngs  # sorted by name
    assert all(alt == pathlib.Path(target).stem for alt, target in images)
    assert text.count("## Figures") == 1 and text.index("## Figures") > text.index("| vanilla")


def test_embed_figures_links_only_what_the_text_does_not(tmp_path):
    for name in ("b.png", "a b.png", "x[1].png", "accuracy.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"\x89PNG")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.png").write_bytes(b"\x89PNG")
    text = "# T\n\n![test accuracy](accuracy.png)\n"
    out = embed_figures(text, tmp_path)
    assert out.startswith(text.rstrip("\n") + "\n\n## Figures\n")
    images = _images(out)
    assert [t for _, t in images] == ["accuracy.png", "a b.png", "b.png", "x[1].png"]
    assert images[3][0] == r"x\[1\]"  # the brackets of a stem are escaped in the caption
    assert "](a%20b.png)" in out and all((tmp_path / t).is_file() for _, t in images)
    # Nothing to add: unchanged.
    assert embed_figures(out, tmp_path) == out
    assert embed_figures("# empty\n", tmp_path / "sub" / "none") == "# empty\n"


def test_linked_files_reads_links_images_and_html():
    md = '[a](./one.png) ![b](<two.png> "t") <img src="three.png"> [web](https://x.org/four.png) ![c](five%20x.png#frag)'
    assert linked_files(md) == {"one.png", "two.png", "three.png", "five x.png"}


def test_write_summary_ends_in_a_newline(tmp_path):
    assert write_summary(tmp_path, "# x").read_text(encoding="utf-8") == "# x\n"
    (tmp_path / "f.png").write_bytes(b"\x89PNG")
    assert write_summary(tmp_path, "# x\n").read_text(encoding="utf-8") == "# x\n\n## Figures\n\n![f](f.png)\n"


def test_every_analysis_writes_its_summary_through_write_summary():
    # One choke point: a summary.md written another way would not show its figures.
    root = pathlib.Path(__file__).resolve().parents[2] / "jaxnorm" / "analysis"
    direct = re.compile(r"""["']summary\.md["']\s*\)?\s*\.write_(text|bytes)|open\([^)]*summary\.md""")
    offenders = [p.name for p in root.glob("*.py") if direct.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
