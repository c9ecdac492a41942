"""The notebooks' Colab install cell, run for real: its Colab branch, in a fresh virtualenv.

Every notebook in ``colab/`` opens with the same install cell (checked here). Its Colab
branch clones ``REPO_URL`` into ``REPO_DIR``, pins the preinstalled jax/jaxlib as pip
constraints and ``pip install -e``'s the clone around them. The test runs that cell's own
source, unchanged but for the two settings at its top, in a new virtualenv:

* Colab is simulated by a ``google.colab`` entry in ``sys.modules`` while the cell runs
  (the cell asks ``"google.colab" in sys.modules``), removed before jax is imported;
* ``REPO_URL`` is a ``file://`` git repository holding this checkout's files, so the
  ``git clone --depth 1`` really runs;
* the runtime's preinstalled packages (jax and the rest, as on Colab) are this test
  interpreter's, made importable in the new venv through a folder of links to each of
  them, jaxnorm's own install left out, so pip sees jax/jaxlib installed and the cell's
  constraints pin them, and jaxnorm is not installed until the cell installs it.

It checks that the cell installed jaxnorm from the clone (``import jaxnorm`` resolves
there), that ``experiments`` is importable, and that jax/jaxlib kept their versions.
pip builds the editable install in an isolated build environment, so the test needs the
package index (as ``make test``'s install does): about 20-40 s.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "colab").glob("*.ipynb"))


def _install_cell(notebook: pathlib.Path) -> str:
    nbformat = pytest.importorskip("nbformat")
    cell = nbformat.read(notebook, as_version=4).cells[1]
    assert cell.cell_type == "code" and cell.source.startswith("# 1. Install jaxnorm (Colab only)."), notebook
    return cell.source


def test_every_notebook_has_the_same_install_cell():
    assert len(NOTEBOOKS) >= 4
    assert len({_install_cell(nb) for nb in NOTEBOOKS}) == 1


def _set(source: str, name: str, value: str) -> str:
    """The cell with its top-level ``NAME = ...`` setting replaced (exactly one)."""
    new, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, count=1, flags=re.M)
    assert n == 1, f"the install cell has no '{name} = ...' line"
    return new


def _runtime_packages(into: pathlib.Path) -> pathlib.Path:
    """A folder of links to every package of this interpreter's site-packages except
    jaxnorm's own install (its dist-info and editable finder)."""
    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    into.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if name.startswith(("jaxnorm", "__editable__")) or name.endswith(".pth") or name == "__pycache__":
            continue
        (into / entry.name).symlink_to(entry)
    return into


@pytest.mark.extended
def test_colab_branch_installs_jaxnorm_in_a_fresh_venv(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    # The repository the cell clones: this checkout's files (committed or not), as one commit.
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    for f in files:
        if (REPO / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run(git + ["init", "-q"], cwd=src, check=True)
    subprocess.run(git + ["add", "-A"], cwd=src, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "snapshot"], cwd=src, check=True)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = pathlib.Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                            check=True, capture_output=True, text=True).stdout.strip())
    (venv_site / "colab_runtime.pth").write_text(str(_runtime_packages(tmp_path / "runtime")) + "\n")

    clone = tmp_path / "content" / "jaxnorm"
    cell = _set(_set(_install_cell(NOTEBOOKS[0]), "REPO_URL", src.as_uri()), "REPO_DIR", str(clone))
    script = tmp_path / "run_cell.py"
    script.write_text(
        "import sys, types\n"
        "from importlib.metadata import version\n"
        "before = {p: version(p) for p in ('jax', 'jaxlib')}\n"
        "sys.modules['google.colab'] = types.ModuleType('google.colab')  # what the cell tests for Colab\n"
        + cell + "\n"
        "del sys.modules['google.colab']  # jax, imported next, would look for Colab's real modules\n"
        "import json, jaxnorm, experiments, jax, jaxlib\n"
        "print('RESULT', json.dumps({'jaxnorm': jaxnorm.__file__, 'experiments': experiments.__file__, "
        "'before': before, 'after': {'jax': jax.__version__, 'jaxlib': jaxlib.__version__}}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", JAX_PLATFORMS="cpu")
    proc = subprocess.run([str(python), str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"the install cell failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "jaxnorm installed from" in proc.stdout, proc.stdout
    result = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT ")).split(" ", 1)[1])
    assert pathlib.Path(result["jaxnorm"]).resolve().is_relative_to(clone.resolve()), result
    assert pathlib.Path(result["experiments"]).resolve().is_relative_to(clone.resolve()), result
    assert result["after"] == result["before"], "the cell changed the preinstalled jax/jaxlib"
    # pip installed jaxnorm into the new venv (not into this interpreter's environment).
    installed = list(venv_site.glob("jaxnorm-*.dist-info"))
    assert len(installed) == 1, sorted(p.name for p in venv_site.iterdir())
