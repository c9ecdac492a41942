"""The package's layering, checked from the source: which subpackage may import which.

Each unit (a subpackage or top-level module of ``jaxnorm``) may import only the units
below it in :data:`ALLOWED`; the map is a DAG, so there is no import cycle between
units, and in particular ``diagnostics`` and ``analysis`` never import ``train``.
Imports are read with ``ast`` (lazy imports inside functions count too: hiding a cycle
in a function body is still a cycle).
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import jaxnorm

ROOT = pathlib.Path(jaxnorm.__file__).parent
BASE = {"_registry", "_tree", "_precision"}
ALLOWED = {
    "_registry": set(),
    "_tree": set(),
    "_precision": set(),
    "norms": BASE,
    "inits": BASE,
    "layers": BASE | {"norms"},
    "models": BASE | {"norms", "layers", "inits"},
    "data": BASE | {"results"},  # the MNIST-1D cache is written with results.write_npz (atomic)
    "modes": BASE,
    "objective": BASE,
    "results": BASE,
    "runtime": BASE,  # which accelerator JAX runs on (the notebooks)
    "adapt": BASE | {"modes", "norms", "layers", "objective", "data"},
    "diagnostics": BASE | {"modes", "norms", "layers", "models", "data", "objective"},
    "analysis": BASE | {"results"},
    "observers": BASE | {"modes", "norms", "layers", "models", "data", "objective", "diagnostics"},
    "study": BASE | {"results", "train"},
    "cli": BASE | {"study", "analysis", "results", "train"},  # the console command: finds studies by entry point, never imports experiments
    "train": BASE | {"modes", "norms", "layers", "models", "inits", "data", "objective", "results", "diagnostics", "observers"},
}


def _unit(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("").parts
    return rel[0]


def _imports():
    """{unit: {imported unit: [file, ...]}} for every import of another unit."""
    found: dict[str, dict[str, list[str]]] = {}
    for path in ROOT.rglob("*.py"):
        unit = _unit(path)
        if unit == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "jaxnorm":
                mods = [node.module] if node.module != "jaxnorm" else [f"jaxnorm.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names if a.name.split(".")[0] == "jaxnorm"]
            else:
                continue
            for m in mods:
                parts = m.split(".")
                if len(parts) > 1 and parts[1] != unit:
                    found.setdefault(unit, {}).setdefault(parts[1], []).append(str(path.relative_to(ROOT)))
    return found


def test_every_unit_is_in_the_map():
    units = {_unit(p) for p in ROOT.rglob("*.py")} - {"__init__"}
    assert units == set(ALLOWED), f"add new units to ALLOWED: {sorted(units ^ set(ALLOWED))}"


def test_units_import_only_the_layers_below():
    bad = {
        (unit, dep, files[0])
        for unit, deps in _imports().items()
        for dep, files in deps.items()
        if dep not in ALLOWED[unit]
    }
    assert not bad, f"imports against the layering (unit, imported, file): {sorted(bad)}"


def test_the_allowed_map_has_no_cycle():
    done, active = set(), set()

    def visit(u, path):
        assert u not in active, f"import cycle: {' -> '.join(path + [u])}"
        if u in done:
            return
        active.add(u)
        for d in ALLOWED[u]:
            visit(d, path + [u])
        active.discard(u)
        done.add(u)

    for u in ALLOWED:
        visit(u, [])


def test_diagnostics_and_analysis_never_import_train():
    imports = _imports()
    assert "train" not in imports.get("diagnostics", {})
    assert "train" not in imports.get("analysis", {})


def test_import_jaxnorm_exposes_every_subpackage():
    code = (
        "import jaxnorm\n"
        "for name in ('train', 'data', 'diagnostics', 'analysis', 'adapt', 'observers', 'objective', 'results'):\n"
        "    assert name in jaxnorm.__doc__, name\n"
        "    getattr(jaxnorm, name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent)
    assert out.returncode == 0, out.stderr


def test_every_benchmark_script_imports():
    """The benchmarks run only on request (and on a GPU), so an API move that breaks one
    would go unseen: each must at least import (their torch peers are imported lazily)."""
    import importlib

    for path in sorted((ROOT.parent / "experiments" / "benchmarks").glob("*.py")):
        if not path.stem.startswith("_"):
            importlib.import_module(f"experiments.benchmarks.{path.stem}")
