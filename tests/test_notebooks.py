"""The Colab notebooks in ``colab/``: committed clean, and they run top to bottom.

``test_ablation_notebook_runs`` executes ``colab/01_batchnorm_ablation.ipynb`` with nbclient
in quick mode on the CPU (the digits fallback when CIFAR-10 is not prepared): 35-65 s on
2 CPU cores, nearly all of it the 20 training steps of the five variants.

Kernel setup: ``kernel_name='python3'`` is resolved through jupyter's kernelspec search path,
which may hold a ``python3`` spec for some *other* interpreter (a user-level
``~/.local/share/jupyter/kernels/python3``, a system one). To run the notebook with the
interpreter running pytest (the venv that ``make test`` installs ``.[test]`` into), the
test writes a ``python3`` kernelspec whose argv is ``sys.executable -m ipykernel_launcher``
(``ipykernel.kernelspec.write_kernel_spec``) into a temporary folder and puts that first on
``JUPYTER_PATH``, which takes precedence over every other kernelspec location. Nothing is
installed outside ``tmp_path``; no manual ``ipykernel install`` is needed.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "colab" / "01_batchnorm_ablation.ipynb"
VARIANTS = ("vanilla", "bn", "bn_gamma", "bn_beta", "bn_gamma_beta")


def test_notebook_is_committed_clean():
    """No outputs and no execution counts in the committed notebook (a valid nbformat 4 file)."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for i, cell in enumerate(code):
        assert cell.get("outputs") == [], f"code cell {i} has outputs: clear them before committing"
        assert cell.get("execution_count") is None, f"code cell {i} has an execution count"
    raw = json.loads(NOTEBOOK.read_text())
    assert "widgets" not in raw.get("metadata", {}), "notebook metadata holds widget state"


def _own_python_kernelspec(root: pathlib.Path) -> pathlib.Path:
    """Writes a 'python3' kernelspec for sys.executable under ``root/kernels``; returns root."""
    from ipykernel.kernelspec import write_kernel_spec

    write_kernel_spec(root / "kernels" / "python3")
    return root


def test_ablation_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager

    jupyter_path = _own_python_kernelspec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join([str(jupyter_path), os.environ.get("JUPYTER_PATH", "")]).rstrip(os.pathsep))
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] == sys.executable, f"python3 kernel resolves to {spec.argv} instead of {sys.executable}"

    results = tmp_path / "results"
    env = dict(os.environ)
    env.update(
        JAXNORM_NOTEBOOK_QUICK="1",
        JAXNORM_RESULTS=str(results),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p),
        MPLBACKEND="Agg",
    )
    # conftest.py's 8 simulated CPU devices are for the data-parallel tests; the notebook
    # runs on the plain single CPU device, as on a laptop or a CPU Colab runtime.
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    else:
        env.pop("XLA_FLAGS", None)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    )
    t0 = time.perf_counter()
    client.execute(env=env)  # raises CellExecutionError on the first cell that errors
    elapsed = time.perf_counter() - t0

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, f"cells errored: {[(o.ename, o.evalue) for o in errors]}"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "QUICK = True" in text, text

    summaries = list(results.glob("ablation/*/plots/summary.md"))
    assert len(summaries) == 1, f"expected one summary.md under {results}, found {summaries}"
    summary = summaries[0].read_text()
    missing = [v for v in VARIANTS if f"| {v} |" not in summary]
    assert not missing, f"summary.md has no table row for {missing}:\n{summary}"

    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert images, "no PNG was displayed"
    markdown = [o for o in outputs if o.output_type == "display_data" and "text/markdown" in o.get("data", {})]
    assert any("vanilla" in o.data["text/markdown"] for o in markdown), "summary.md was not displayed"
    print(f"notebook executed in {elapsed:.1f} s")
