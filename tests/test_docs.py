"""`make docs`: the API reference builds from the docstrings without a warning (docs/build.py).

The full build runs once, in a subprocess (a fresh interpreter, so that warnings raised
while importing a module are seen, as `make docs` sees them); it is this file's slow test
(pdoc imports and renders every module: 25-50 s on 2 busy cores). The checker's own
failures are tested on a small module written into tmp_path.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess
import sys

import pdoc  # in the `test` extra: a missing pdoc fails here, it is not skipped
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load_build():
    spec = importlib.util.spec_from_file_location("docs_build", ROOT / "docs" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    out = tmp_path_factory.mktemp("api")
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "build.py"), str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    return out, proc


@pytest.mark.extended
def test_full_build_has_no_warnings(api):
    out, proc = api
    assert proc.returncode == 0, f"pdoc {pdoc.__version__}: " + proc.stderr[-4000:]
    # Sphinx's ~ (`:func:`~jaxnorm.x.f``) is not left in front of a link.
    assert not any("<code>~<a" in p.read_text(encoding="utf-8") for p in out.rglob("*.html"))
    assert re.fullmatch(r"API reference of \d+ modules in .*index\.html\n", proc.stdout), proc.stdout


@pytest.mark.extended
def test_every_public_module_has_a_page(api):
    # The modules on disk, read independently of docs/build.py's public_modules().
    out, _ = api
    on_disk = set()
    for path in (ROOT / "jaxnorm").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(p.startswith("_") for p in parts):
            on_disk.add(".".join(parts))
    pages = {str(p.relative_to(out).with_suffix("")).replace("/", ".") for p in out.rglob("*.html")} - {"index"}
    assert pages == on_disk  # private modules (jaxnorm._tree, ...) are left out
    assert {"jaxnorm.modes", "jaxnorm.study", "jaxnorm.analysis.init_scale"} <= pages  # not in any __all__
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "jaxnorm" in index and (out / "search.js").is_file()


@pytest.mark.extended
@pytest.mark.parametrize(
    "page, names",
    [
        ("jaxnorm/norms.html", ["batch_norm", "BatchStats", "layer_norm", "population_stats"]),
        ("jaxnorm/train.html", ["fit", "fit_many", "TrainConfig", "TrainState"]),
        ("jaxnorm/modes.html", ["BN_MODES", "check_bn_mode"]),
        ("jaxnorm/study.html", ["run_study", "check_stored_setup", "RunGroup"]),
        ("jaxnorm/results.html", ["read_status", "RunDir", "read_jsonl"]),
        ("jaxnorm/analysis/plotting.html", ["embed_figures", "fresh_report_dir"]),
    ],
)
def test_key_pages_document_their_functions(api, page, names):
    out, _ = api
    text = (out / page).read_text(encoding="utf-8")
    for name in names:
        assert f'id="{name}"' in text, (page, name)


@pytest.mark.extended
def test_roles_become_links(api):
    # ``:func:`~jaxnorm.analysis.plotting.fresh_report_dir``` in report.py's docstring: a link, no reST left.
    out, _ = api
    text = (out / "jaxnorm/analysis/report.html").read_text(encoding="utf-8")
    docstring = re.search(r'<div class="docstring">(.*?)</div>', text, re.S).group(1)
    assert ":func:" not in docstring
    assert re.search(r'<a href="plotting.html#fresh_report_dir">', docstring)
    # The Google sections are rendered as sections.
    norms = (out / "jaxnorm/norms.html").read_text(encoding="utf-8")
    assert '<h6 id="raises">Raises:</h6>' in norms and '<h6 id="returns">Returns:</h6>' in norms
    # A #: comment documents its constant (pdoc alone reads only a string after it).
    results_page = (out / "jaxnorm/results.html").read_text(encoding="utf-8")
    section = results_page[results_page.index('<section id="BOOKKEEPING_FIELDS">'):]
    assert "Config fields that say where a run is stored" in section[: section.index("</section>")]


_PROBE = '''"""A probe module. See :func:`jaxnorm.no_such_function` and :func:`jaxnorm._tree.param_paths`,
and :func:`jaxnorm.norms.batch_norm` (fine, norms is not rendered here); ``jaxnorm.plain_code``
is not a reference."""

import warnings

warnings.warn("probe: a warning at import time")


def f(x: "NoSuchType") -> int:
    """Returns 1."""
    return 1
'''


def test_warnings_and_broken_references_fail_the_build(tmp_path, monkeypatch):
    (tmp_path / "docs_probe_mod.py").write_text(_PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(build.DocsBuildError) as info:
        build.build(tmp_path / "out", modules=["docs_probe_mod"])
    message = str(info.value)
    assert "probe: a warning at import time" in message
    assert "NoSuchType" in message  # pdoc's own warning: an annotation it cannot resolve
    assert "jaxnorm.no_such_function (no such object)" in message
    assert "jaxnorm._tree.param_paths (in the private module jaxnorm._tree)" in message
    assert "batch_norm" not in message and "plain_code" not in message
    assert message.startswith("4 problem(s)")


def test_command_line_names_each_problem_without_a_traceback(tmp_path, monkeypatch, capsys):
    (tmp_path / "docs_probe_cli.py").write_text('"""Names :func:`jaxnorm.nope`."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(build, "public_modules", lambda package="jaxnorm": ["docs_probe_cli"])
    assert build.main([str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python docs/build.py: error: 1 problem(s)") and "jaxnorm.nope (no such object)" in err
    assert "Traceback" not in err


def test_a_rebuild_replaces_its_own_pages_only(tmp_path, monkeypatch):
    for name in ("docs_probe_a", "docs_probe_b"):
        (tmp_path / f"{name}.py").write_text(f'"""Probe {name}."""\n\n\ndef f() -> int:\n    """One."""\n    return 1\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    build.build(out, modules=["docs_probe_a", "docs_probe_b"])
    assert (out / "docs_probe_b.html").is_file() and (out / build.MANIFEST).is_file()
    (out / "notes.txt").write_text("mine")
    build.build(out, modules=["docs_probe_a"])  # docs_probe_b was removed from the package
    assert not (out / "docs_probe_b.html").exists() and (out / "docs_probe_a.html").is_file()
    assert (out / "notes.txt").read_text() == "mine"  # not the build's: left alone
    assert (out / build.MANIFEST).read_text().split() == ["docs_probe_a.html", "index.html", "search.js"]


def test_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    (tmp_path / "index.html").write_text("someone's page")
    with pytest.raises(ValueError, match="not empty and holds no earlier API build"):
        build.build(tmp_path, modules=["docs_probe_never_imported"])
    assert (tmp_path / "index.html").read_text() == "someone's page"
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        build.build(tmp_path / "file", modules=["docs_probe_never_imported"])
    assert build.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python docs/build.py: error: ") and len(err.strip().splitlines()) == 1


def test_comment_docstrings():
    source = '''
#: two lines
#: of text
A = 1
B = 2  #: trailing
C = "#: inside a string"
# an ordinary comment
D = 4
#: not attached (a blank line follows)

E = 5
F, G = 6, 7  #: both
'''
    assert build.comment_docstrings(source) == {"A": "two lines\nof text", "B": "trailing", "F": "both", "G": "both"}
    cls = '''class K:
    """Doc."""

    #: an attribute
    x: int = 1

    def f(self):
        #: not at the class's top level
        y = 2
'''
    assert build.comment_docstrings(cls, in_class=True) == {"x": "an attribute"}
