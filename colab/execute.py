"""Executes the notebooks in place, so that they are committed with the outputs of a real run.

    .venv/bin/python colab/execute.py                 # every notebook in colab/
    .venv/bin/python colab/execute.py colab/01_batchnorm_ablation.ipynb

Each notebook runs top to bottom on the CPU in quick mode (``JAXNORM_NOTEBOOK_QUICK=1``,
``JAX_PLATFORMS=cpu``: the digits, a few steps; the figures of a smoke run), with this
interpreter as its kernel and its results in a temporary folder, and is written back with
its outputs. A notebook whose cell fails is left as it was (the error is printed). What
tests/test_notebooks.py checks of the committed outputs: every code cell ran, in order,
without an error, and the figures are there.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import time

import nbclient
import nbformat
from ipykernel.kernelspec import write_kernel_spec

REPO = pathlib.Path(__file__).resolve().parents[1]


def execute(notebook: pathlib.Path, workdir: pathlib.Path) -> float:
    """Runs ``notebook`` in ``workdir`` and writes it back with its outputs; returns seconds."""
    nb = nbformat.read(notebook, as_version=4)
    env = dict(os.environ, JAXNORM_NOTEBOOK_QUICK="1", JAX_PLATFORMS="cpu", MPLBACKEND="Agg", JAXNORM_RESULTS="results",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    client = nbclient.NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    t0 = time.perf_counter()
    client.execute(env=env)
    nb.metadata.pop("widgets", None)
    nbformat.validate(nb)
    nbformat.write(nb, notebook)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    notebooks = [pathlib.Path(p) for p in (sys.argv[1:] if argv is None else argv)] or sorted((REPO / "colab").glob("*.ipynb"))
    with tempfile.TemporaryDirectory() as tmp:
        kernels = pathlib.Path(tmp) / "jupyter"
        write_kernel_spec(kernels / "kernels" / "python3")  # this interpreter, first on the kernel search path
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(kernels), os.environ.get("JUPYTER_PATH", "")) if p)
        failed = 0
        for nb in notebooks:
            workdir = pathlib.Path(tmp) / nb.stem
            workdir.mkdir()
            try:
                print(f"{nb.name}: executed in {execute(nb, workdir):.0f} s", flush=True)
            except nbclient.exceptions.CellExecutionError as e:
                failed += 1
                print(f"{nb.name}: a cell failed, the notebook is left as it was:\n{e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
