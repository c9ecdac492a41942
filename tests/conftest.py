"""Test-wide setup: 8 simulated CPU devices, so the data-parallel path is tested here.

Must run before JAX initializes its backend (pytest imports conftest.py first). Tests
that do not ask for a mesh still run on the default (first) device.
"""

import os
import pathlib

import pytest

# A persistent XLA compilation cache shared by the pytest-xdist workers and the notebook
# kernels they start (which inherit the environment): many tests compile the same small
# programs (the same tiny model and step in another test's closure), and a hit skips the
# XLA compile. Measured on the 2-core machine, cold cache: tests/train + tests/experiments
# 242 s -> 208 s. Only compilation is cached: tracing, and so every trace count a test
# asserts, is unchanged. A folder named by the user's JAX_COMPILATION_CACHE_DIR wins. The size cap
# needs the `filelock` package (in the test extra).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"))
# Only compilations of 0.3 s or more are cached. Caching every one (0 s) sped up a
# subprocess-heavy subset by 17% but slowed the whole suite down (thousands of entries
# against the size cap below, each write checking it).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(512 * 2**20))

# XLA's CPU backend at LLVM optimization level 0. Why: the suite is compile-bound (tiny
# models, a few steps each; in a cold-cache run XLA compilation is ~80% of a training
# test's time), and level 0 compiles the same HLO in about two thirds of the time.
# What it changes: the machine code (no LLVM vectorization or loop opts), so results
# differ from level 3 by floating-point reassociation only -- the same kind of difference
# as between CPUs' instruction sets, which every tolerance here is derived to cover.
# Bit-identity tests compare two runs of one build, so they are unaffected. A level the
# user sets in XLA_FLAGS wins (e.g. to run the suite at XLA's default, level 3).
_FLAGS = ["--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0"]

# XLA:CPU's legacy elemental emitters instead of its newer MLIR fusion emitters: the same
# fusions, lowered to LLVM by the older path, which compiles faster (measured on the
# 2-core Xeon, cold cache: the five-variant fit_many test 36 -> 23 s of CPU). Same kind
# of change as the level above: machine code, hence float reassociation only. The flag
# is younger than the oldest jax the project allows, and XLA aborts the process on a
# flag it does not know, so it is only set after a child interpreter accepted it (once,
# in the process that starts pytest: its workers and the notebook kernels inherit the
# environment).
_OPTIONAL_FLAGS = ["--xla_cpu_use_fusion_emitters=false"]


def _xla_accepts(flag: str) -> bool:
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flag).strip(), JAX_PLATFORMS="cpu")
    probe = "import jax; jax.devices('cpu')"
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode == 0


def _add_xla_flag(flag: str, optional: bool = False) -> None:
    name = flag.split("=")[0]
    flags = os.environ.get("XLA_FLAGS", "")
    if name in flags or (optional and not _xla_accepts(flag)):
        return  # the user's (or the parent process's) setting wins
    os.environ["XLA_FLAGS"] = (flags + " " + flag).strip()


for _flag in _FLAGS:
    _add_xla_flag(_flag)
if not os.environ.get("JAXNORM_TESTS_XLA_PROBED"):  # probed once; the answer is inherited
    for _flag in _OPTIONAL_FLAGS:
        _add_xla_flag(_flag, optional=True)
    os.environ["JAXNORM_TESTS_XLA_PROBED"] = "1"


# --- One quick ablation run shared by the tests that only need it to exist -------------
#
# The ablation notebook, the quick study's end-to-end test and the rerun test each used to
# train the same five variants x two seeds (about 40 s of a cold 2-core run each, the
# suite's largest repeat). They now share one run, trained once per `make test`: the
# first test to need it trains it under a file lock in the folder the xdist workers share,
# and each test holds that lock while it runs (they re-plot it), so a test on the other
# worker waits. The notebook's cell calls `ablation.main` with
# ABLATION_QUICK_ARGS, so in the notebook test it finds the runs finished and reads them
# back, the rerun rule the rerun test checks; the training itself is checked on this run
# by tests/experiments/test_ablation.py. (pytest-xdist's `xdist_group` would keep the
# three on one worker, but it does not group under pytest 9 with xdist 3.8: measured.)

#: The notebook's quick arguments (colab/01_batchnorm_ablation.ipynb, cell 3, on a CPU
#: without CIFAR-10), minus ``--results``.
ABLATION_QUICK_ARGS = ("--config", "digits", "--no-progress", "--quick", "--quick-steps", "20", "--quick-subset", "512")


@pytest.fixture(scope="session")
def _ablation_quick_shared(tmp_path_factory, worker_id):
    """``(results folder, stdout)`` of the one shared run (see above)."""
    import contextlib
    import io

    from filelock import FileLock

    # Under xdist every worker's basetemp is a child of one folder of this session.
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    results, log, done = shared / "ablation_quick", shared / "ablation_quick.out", shared / "ablation_quick.done"
    with FileLock(str(shared / "ablation_quick.lock")):
        if not done.is_file():
            from experiments import ablation

            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert ablation.main([*ABLATION_QUICK_ARGS, "--results", str(results)]) == 0
            log.write_text(out.getvalue())
            done.touch()
    return results, log.read_text()


@pytest.fixture
def ablation_quick(_ablation_quick_shared):
    """``(results folder, stdout of the run)`` of ``python -m experiments.ablation`` with
    :data:`ABLATION_QUICK_ARGS`. The test holds the run's lock while it runs: the tests
    re-plot it (the same files again), so one on the other worker waits instead of
    reading a report while it is rewritten."""
    from filelock import FileLock

    results, out = _ablation_quick_shared
    with FileLock(str(results.parent / "ablation_quick.lock")):
        yield results, out
