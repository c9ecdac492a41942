"""Test-wide setup: 8 simulated CPU devices, so the data-parallel path is tested here.

Must run before JAX initializes its backend (pytest imports conftest.py first). Tests
that do not ask for a mesh still run on the default (first) device.
"""

import os
import pathlib

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
for _flag in _FLAGS:
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
