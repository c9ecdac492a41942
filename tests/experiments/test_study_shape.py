"""Every study in experiments/ has the one shape: it trains through the engine, holds no
loop of its own, imports no other script's private helpers, is short, and takes the
shared command line (jaxnorm.study)."""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

from jaxnorm.study import build_parser

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[2] / "experiments"
STUDIES = ("ablation", "conditioning", "init_scale", "masking", "mirrored", "mnist1d_baselines", "norm_kinds", "regularization",
           "samplers", "sharpness", "smoothness", "tent")
#: Scripts that train nothing, so not on the study protocol: `toys` computes the thesis's
#: Lemma 2.2 simulations and the shattered-gradients curves of networks at initialization.
COMPUTATIONS = ("plot", "smoke", "toys")
MAX_LINES = 300
#: What a training loop of its own is made of: gradients of a training objective,
#: optimizer updates, compiled loops. The engine (jaxnorm.train) owns all of them.
FORBIDDEN = ("value_and_grad", "apply_updates", "jax.grad(", "fori_loop", "optax.sgd", "tx.update(", "jax.jit(")
SHARED_FLAGS = ("--config", "--quick", "--seeds", "--shard", "--results", "--plot-only", "--overwrite", "--no-progress",
                "--quiet", "--debug")


def source(name: str) -> str:
    return (EXPERIMENTS / f"{name}.py").read_text()


def test_every_study_script_is_listed():
    scripts = {p.stem for p in EXPERIMENTS.glob("*.py") if not p.stem.startswith("_")} - set(COMPUTATIONS)
    assert scripts == set(STUDIES)


@pytest.mark.parametrize("name", STUDIES)
def test_a_study_file_is_short_and_has_no_loop_of_its_own(name):
    src = source(name)
    assert len(src.splitlines()) <= MAX_LINES, f"experiments/{name}.py has {len(src.splitlines())} lines"
    found = [t for t in FORBIDDEN if t in src]
    assert not found, f"experiments/{name}.py contains {found}: training belongs to jaxnorm.train.fit"


@pytest.mark.parametrize("name", STUDIES)
def test_no_study_imports_another_scripts_private_helpers(name):
    for node in ast.walk(ast.parse(source(name))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("experiments"):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private and node.module.split(".")[1:2] != ["_cli"], f"{name} imports {node.module}.{private}"


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_takes_the_shared_flags(name, capsys):
    module = importlib.import_module(f"experiments.{name}")
    help_text = build_parser(module.STUDY).format_help()
    assert all(flag in help_text for flag in SHARED_FLAGS)
    with pytest.raises(SystemExit) as e:
        module.main(["--shard", "0/2"])
    assert e.value.code == 2 and "--shard" in capsys.readouterr().err


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_prints_a_user_error_as_one_line_and_debug_reraises(name, tmp_path, capsys):
    module = importlib.import_module(f"experiments.{name}")
    assert module.main(["--plot-only", "--results", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m experiments.{name}: error: ") and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises((ValueError, FileNotFoundError)):
        module.main(["--plot-only", "--results", str(tmp_path), "--quiet", "--debug"])
