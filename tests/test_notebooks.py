"""The Colab notebooks in ``colab/``: committed with the outputs of a run, and they run top to bottom.

``test_ablation_notebook_runs`` executes ``colab/01_batchnorm_ablation.ipynb`` with nbclient
in quick mode on the CPU (the digits fallback when CIFAR-10 is not prepared) on the quick
ablation run that tests/conftest.py trains once for three tests, which the notebook reads
back. ``test_conditioning_notebook_runs`` executes for ``colab/02_gradient_conditioning.ipynb``
(the gradient-conditioning study, quick: one architecture without and with BN, 8 steps, two
metrics timed). ``test_hessian_notebook_runs`` executes ``colab/03_hessian_spectrum.ipynb``
(the Hessian tools on a small MLP on digits without and with BN, then the edge-of-stability
study ``--quick``): about 35 s on 2 idle CPU cores, a third of it the study, most of the rest
XLA compiling the Hessian programs (their run time is milliseconds).

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
CONDITIONING_NOTEBOOK = REPO / "colab" / "02_gradient_conditioning.ipynb"
HESSIAN_NOTEBOOK = REPO / "colab" / "03_hessian_spectrum.ipynb"
LECTURE_NOTEBOOK = REPO / "colab" / "04_lecture_experiments.ipynb"
LECTURE_STUDIES = ("init_scale", "norm_kinds", "regularization", "tent")
VARIANTS = ("vanilla", "bn", "bn_gamma", "bn_beta", "bn_gamma_beta")


@pytest.mark.parametrize("notebook", [NOTEBOOK, CONDITIONING_NOTEBOOK, HESSIAN_NOTEBOOK, LECTURE_NOTEBOOK], ids=lambda p: p.stem)
def test_notebook_is_committed_with_the_outputs_of_a_run(notebook):
    """The committed notebook holds the outputs of one real run (``colab/execute.py``: the
    CPU, quick mode), so a reader sees its figures without running it: every code cell
    ran, in order, once, without an error; the accelerator cell reported the CPU and quick
    mode; at least one figure is embedded. A valid nbformat 4 file without widget state."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(notebook, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), f"not one run top to bottom (execution counts {counts}): run colab/execute.py"
    outputs = [o for c in code for o in c.get("outputs", [])]
    errors = [(o.ename, o.evalue) for o in outputs if o.output_type == "error"]
    assert not errors, f"committed with errors: {errors}"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "JAX runs on CPU" in text and "QUICK = True" in text, "the outputs are not those of colab/execute.py's CPU run"
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert images, "no figure in the committed outputs"
    raw = json.loads(notebook.read_text())
    assert "widgets" not in raw.get("metadata", {}), "notebook metadata holds widget state"


def _own_python_kernelspec(root: pathlib.Path) -> pathlib.Path:
    """Writes a 'python3' kernelspec for sys.executable under ``root/kernels``; returns root."""
    from ipykernel.kernelspec import write_kernel_spec

    write_kernel_spec(root / "kernels" / "python3")
    return root


def _execute_quick(notebook: pathlib.Path, tmp_path, monkeypatch, results=None):
    """Executes ``notebook`` in quick mode on the CPU with results under ``results``
    (default ``tmp_path/results``); returns (executed notebook, results folder, seconds)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager

    jupyter_path = _own_python_kernelspec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join([str(jupyter_path), os.environ.get("JUPYTER_PATH", "")]).rstrip(os.pathsep))
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] == sys.executable, f"python3 kernel resolves to {spec.argv} instead of {sys.executable}"

    results = tmp_path / "results" if results is None else results
    env = dict(os.environ)
    env.update(
        JAXNORM_NOTEBOOK_QUICK="1",
        JAXNORM_RESULTS=str(results),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p),
        MPLBACKEND="Agg",
    )
    # The kernel inherits conftest.py's XLA_FLAGS, the 8 simulated CPU devices included:
    # the studies the notebooks call train on one device either way (num_devices=None),
    # and with the same flags their programs are the ones the study tests compile, so
    # they hit the persistent compilation cache (measured: the ablation notebook 50 s
    # cold, 20 s warm). The notebooks print the device count; nothing in them depends on it.

    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    )
    t0 = time.perf_counter()
    client.execute(env=env)  # raises CellExecutionError on the first cell that errors
    elapsed = time.perf_counter() - t0
    return nb, results, elapsed


def _run_checked(notebook, tmp_path, monkeypatch, results=None):
    """Executes ``notebook`` quick; checks no cell errored and quick mode was on. Returns
    (every code cell's outputs, their stream text, the results folder, seconds)."""
    nb, results, elapsed = _execute_quick(notebook, tmp_path, monkeypatch, results)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, f"cells errored: {[(o.ename, o.evalue) for o in errors]}"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "QUICK = True" in text, text
    return outputs, text, results, elapsed


@pytest.mark.extended
def test_ablation_notebook_runs(tmp_path, monkeypatch, ablation_quick):
    """The notebook on the shared quick run of tests/conftest.py: its training cell calls
    ``ablation.main`` with the same arguments, finds the ten runs finished and reads them
    back (the training is tested on that run in tests/experiments/test_ablation.py); every
    cell runs, and the plots and summary it writes are displayed."""
    results, _ = ablation_quick
    outputs, text, results, elapsed = _run_checked(NOTEBOOK, tmp_path, monkeypatch, results)
    assert "python -m experiments.ablation " + " ".join(_notebook_args(results)) in text, text

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


def _notebook_args(results) -> list[str]:
    """The notebook's printed command line for the shared run (conftest's arguments in the
    notebook's order: config, results, progress, then the quick flags)."""
    from tests.conftest import ABLATION_QUICK_ARGS

    return [*ABLATION_QUICK_ARGS[:2], "--results", str(results), *ABLATION_QUICK_ARGS[2:]]


@pytest.mark.extended
def test_conditioning_notebook_runs(tmp_path, monkeypatch):
    outputs, text, results, elapsed = _run_checked(CONDITIONING_NOTEBOOK, tmp_path, monkeypatch)

    root = results / "conditioning" / "digits-quick"
    runs = sorted(p.parent.name for p in root.glob("*/config.json"))
    assert runs == ["resnet-bn_gamma_beta-d4", "resnet-vanilla-d4"], runs
    summary = (root / "plots" / "summary.md").read_text()
    missing = [r for r in runs if f"| {r} |" not in summary]
    assert not missing, f"summary.md has no table row for {missing}:\n{summary}"

    names = [o.data["text/markdown"] for o in outputs if o.output_type == "display_data" and "text/markdown" in o.get("data", {})]
    for png in ("curves_kappa_w.png", "scatter_kappa_w.png", "curves_kappa_sgd.png", "costs.png"):
        assert any(png in n for n in names), f"{png} was not displayed: {names}"
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 4, f"only {len(images)} PNGs displayed"
    assert any("resnet-vanilla-d4" in n for n in names), "summary.md was not displayed"
    print(f"notebook executed in {elapsed:.1f} s")


@pytest.mark.extended
def test_hessian_notebook_runs(tmp_path, monkeypatch):
    outputs, text, results, elapsed = _run_checked(HESSIAN_NOTEBOOK, tmp_path, monkeypatch)
    # Part 1: the notebook asserts the agreement per network, then prints this line.
    assert "power iteration and Lanczos agree on λ1" in text, text
    for label in ("vanilla", "bn_gamma_beta", "bn_gamma_beta (eval)"):
        assert f"{label}: λ1 = " in text, f"no outlier ratio printed for {label}:\n{text}"
    assert (results / "hessian_walkthrough" / "density_init.png").is_file()

    # Part 2: the edge-of-stability study in quick mode.
    summary = results / "sharpness" / "digits-quick" / "plots" / "summary.md"
    assert summary.is_file(), f"no summary.md under {results}"
    names = [o.data["text/markdown"] for o in outputs if o.output_type == "display_data" and "text/markdown" in o.get("data", {})]
    for png in ("density_init.png", "sharpness.png", "density.png"):
        assert any(png in n for n in names), f"{png} was not displayed: {names}"
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 3, f"only {len(images)} PNGs displayed"
    assert any("| vanilla | 0.1 |" in n for n in names), "summary.md was not displayed"
    print(f"notebook executed in {elapsed:.1f} s")


@pytest.mark.extended
def test_lecture_notebook_runs(tmp_path, monkeypatch):
    """The four lecture experiments in quick mode: each writes its plots and summary.md under
    results/<study>/, and the notebook displays them."""
    outputs, text, results, elapsed = _run_checked(LECTURE_NOTEBOOK, tmp_path, monkeypatch)
    names = [o.data["text/markdown"] for o in outputs if o.output_type == "display_data" and "text/markdown" in o.get("data", {})]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    for study in LECTURE_STUDIES:
        summaries = list((results / study).glob("*/plots/summary.md"))
        assert len(summaries) == 1, f"{study}: expected one summary.md, found {summaries}"
        pngs = list(summaries[0].parent.glob("*.png"))
        assert pngs, f"{study} wrote no plot"
        assert sum(n.startswith(f"**{study}: ") for n in names) == len(pngs), f"{study}: not every plot was displayed"
        assert summaries[0].read_text().split("\n## Figures\n")[0] in names, f"{study}: summary.md was not displayed"
    assert len(images) >= len(LECTURE_STUDIES)
    print(f"notebook executed in {elapsed:.1f} s")
