"""The study commands' persistent compilation cache: on by default, opt-out, the user's wins.

JAX's configuration is process-wide, and this test session configures a cache of its own
(tests/conftest.py), so each case runs in a fresh interpreter without it.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(code: str, **env) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "JAXNORM_COMPILE_CACHE"))}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**base, "JAX_PLATFORMS": "cpu", **env},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


FUNCTION = """
import json, os, sys, jax
from jaxnorm.study import enable_compilation_cache
out = {}
out["default"] = [enable_compilation_cache(sys.argv[1] if len(sys.argv) > 1 else 'r'), jax.config.jax_compilation_cache_dir,
                  jax.config.jax_persistent_cache_min_compile_time_secs]
out["already_set"] = [enable_compilation_cache('other'), jax.config.jax_compilation_cache_dir]
jax.config.update('jax_compilation_cache_dir', None)
os.environ['JAXNORM_COMPILE_CACHE'] = '0'
out["opted_out"] = [enable_compilation_cache('r'), jax.config.jax_compilation_cache_dir]
del os.environ['JAXNORM_COMPILE_CACHE']
os.environ['JAX_COMPILATION_CACHE_DIR'] = '/somewhere/of/the/users'
out["users_env"] = [enable_compilation_cache('r'), jax.config.jax_compilation_cache_dir]
print(json.dumps(out))
"""


def test_enable_compilation_cache_default_opt_out_and_the_users_setting():
    out = _run(FUNCTION)
    assert out["default"] == [True, str((REPO / "r").absolute() / ".xla_cache"), 0.3]
    assert out["already_set"] == [False, str((REPO / "r").absolute() / ".xla_cache")]  # a folder already set wins
    assert out["opted_out"] == [False, None]
    assert out["users_env"] == [False, None]


COMMAND = """
import json, sys, jax
from jaxnorm.study import main
from tests.test_study import ToyStudy
argv = ['--quick', '--results', sys.argv[1], '--no-progress', '--quiet'] + sys.argv[2:]
assert main(ToyStudy(), argv) == 0
print(json.dumps({'dir': jax.config.jax_compilation_cache_dir}))
"""


@pytest.mark.extended
def test_study_commands_turn_it_on_unless_no_compile_cache(tmp_path):
    results = repr(str(tmp_path))
    off = _run(COMMAND.replace("sys.argv[1]", results).replace("sys.argv[2:]", "['--no-compile-cache']"))
    assert off["dir"] is None
    assert (tmp_path / "toy" / "toy-quick" / "study.json").is_file()  # it trained all the same
    on = _run(COMMAND.replace("sys.argv[1]", results).replace("sys.argv[2:]", "['--plot-only']"))
    assert on["dir"] == str(tmp_path / ".xla_cache")
