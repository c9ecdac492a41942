"""The install: requirements.lock agrees with pyproject.toml, and the built wheel works alone.

* The lock (``make lock``; ``make install`` installs from it) pins every dependency and
  ``test``-extra requirement of pyproject.toml, exactly (``==``) and with a version inside
  pyproject's range, each with at least one sha256; pyproject's markers are evaluated for
  the interpreter and platform named in the lock's header. Where the running environment
  has the locked versions installed (``make install`` on CPython 3.11, Linux x86-64), the
  installed packages' own metadata also shows the lock closed: every requirement, followed
  transitively (extras included), is pinned, and nothing else is.
* The wheel: built from a copy of the checkout (offline: no build isolation, no index),
  it holds exactly the packages pyproject's ``packages.find`` names (every module of
  them, ``py.typed``, no ``tests/``), the LICENSE in its dist-info and METADATA whose
  Requires-Dist are pyproject's; installed without dependencies into a clean venv, it
  imports from that venv (not from this checkout's editable install) and computes a
  LayerNorm equal to a float64 NumPy reference. Console scripts in ``[project.scripts]``
  must appear in the venv's ``bin/``.
"""

from __future__ import annotations

import email.parser
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from fnmatch import fnmatch

import numpy as np
import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the test extra installs tomli there
    import tomli as tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)$")
_HASH = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")


def _read_lock(text: str) -> dict[str, tuple[Version, list[str]]]:
    """``{canonical name: (version, [hash options])}`` of a hash-pinned requirements file.

    Raises ValueError on a line that is not ``name==version`` followed by ``--hash=sha256:``
    options, or on a package pinned twice."""
    pins: dict[str, tuple[Version, list[str]]] = {}
    logical = re.sub(r"\\\n", " ", text)
    for line in logical.splitlines():
        line = line.split("#", 1)[0].strip() if line.lstrip().startswith("#") else line.strip()
        if not line:
            continue
        pin, *options = line.split()
        match = _PIN.match(pin)
        if match is None:
            raise ValueError(f"requirements.lock: {pin!r} is not an exact name==version pin")
        bad = [o for o in options if not _HASH.match(o)]
        if bad:
            raise ValueError(f"requirements.lock: {pin}: unexpected {bad[0]!r} (only --hash=sha256:<64 hex>)")
        name = canonicalize_name(match.group(1))
        if name in pins:
            raise ValueError(f"requirements.lock: {name} pinned twice")
        pins[name] = (Version(match.group(2)), options)
    return pins


def _lock_environment(text: str) -> dict[str, str]:
    """PEP 508 marker environment of the interpreter and platform the lock was compiled
    for, read from its header (``--python-version X.Y --python-platform <arch>-manylinux...``)."""
    version = re.search(r"--python-version (\d+)\.(\d+)\b", text)
    platform = re.search(r"--python-platform (x86_64|aarch64)-manylinux", text)
    if version is None or platform is None:
        raise ValueError("requirements.lock: its header names no --python-version / --python-platform")
    env = default_environment()
    major_minor = f"{version.group(1)}.{version.group(2)}"
    env.update(
        python_version=major_minor, python_full_version=f"{major_minor}.0", sys_platform="linux",
        platform_system="Linux", os_name="posix", platform_machine=platform.group(1),
        implementation_name="cpython", platform_python_implementation="CPython",
    )
    return env


def _applies(req: Requirement, env: dict[str, str], extra: str = "") -> bool:
    return req.marker is None or req.marker.evaluate({**env, "extra": extra})


def _project_requirements() -> list[Requirement]:
    """pyproject's dependencies and its ``test`` extra: what the lock is made of."""
    return [Requirement(r) for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["test"]]


# --- the lock ---------------------------------------------------------------------------------


def test_lock_pins_every_pyproject_requirement_inside_its_range_with_hashes():
    text = LOCK.read_text()
    pins, env = _read_lock(text), _lock_environment(text)
    assert pins, "requirements.lock pins nothing"
    for req in _project_requirements():
        if not _applies(req, env):
            continue  # e.g. tomli, only below Python 3.11
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} (pyproject.toml) is not pinned in requirements.lock: run `make lock`"
        version, _ = pins[name]
        assert req.specifier.contains(version, prereleases=True), f"requirements.lock pins {name}=={version}, outside pyproject's {req}"
    for name, (version, hashes) in pins.items():
        assert hashes, f"requirements.lock: {name}=={version} has no --hash"
    # jaxnorm itself is installed from the checkout, and bench's torch from its own source.
    assert "jaxnorm" not in pins and "torch" not in pins


def test_lock_is_closed_under_the_installed_packages_metadata():
    """Followed from pyproject through the installed distributions' Requires-Dist (with the
    extras each edge asks for), the requirements reach exactly the locked set, each inside
    its range. Needs the locked versions installed; skipped where they are not."""
    from importlib import metadata

    text = LOCK.read_text()
    pins, env = _read_lock(text), _lock_environment(text)
    stale = {}
    for name, (version, _) in pins.items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            stale[name] = installed
    if stale:
        pytest.skip(f"this environment is not the locked one ({len(stale)} differ, e.g. {sorted(stale.items())[:3]})")
    reached: set[str] = set()
    todo = [(req, "pyproject.toml") for req in _project_requirements() if _applies(req, env)]
    seen_edges: set[tuple[str, frozenset]] = set()
    while todo:
        req, parent = todo.pop()
        name = canonicalize_name(req.name)
        assert name in pins, f"{parent} requires {req}, which requirements.lock does not pin: run `make lock`"
        assert req.specifier.contains(pins[name][0], prereleases=True), f"{parent} requires {req}; the lock pins {pins[name][0]}"
        reached.add(name)
        key = (name, frozenset(req.extras))
        if key in seen_edges:
            continue
        seen_edges.add(key)
        for line in metadata.requires(name) or []:
            dep = Requirement(line)
            if any(_applies(dep, env, extra) for extra in ("", *req.extras)):
                todo.append((dep, f"{name}{sorted(req.extras) or ''}"))
    assert reached == set(pins), f"pinned but required by nothing: {sorted(set(pins) - reached)}"


def test_read_lock_rejects_a_range_a_missing_hash_and_a_duplicate():
    good = "a==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n    # via b\n"
    assert _read_lock("# header\n" + good) == {"a": (Version("1.0"), ["--hash=sha256:" + "0" * 64])}
    with pytest.raises(ValueError, match="not an exact"):
        _read_lock("a>=1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(ValueError, match="unexpected '--hash=md5"):
        _read_lock("a==1.0 \\\n    --hash=md5:" + "0" * 32 + "\n")
    with pytest.raises(ValueError, match="pinned twice"):
        _read_lock(good + good.replace("a==", "A=="))
    with pytest.raises(ValueError, match="names no --python-version"):
        _lock_environment(good)


# --- the wheel ----------------------------------------------------------------------------


def _copy_checkout(dest: pathlib.Path) -> pathlib.Path:
    """The checkout's source files, without its venv, caches, build outputs and results
    (a stale ``build/lib`` would leak removed modules into the wheel)."""
    skip = shutil.ignore_patterns(".*", "__pycache__", "*.pyc", "build", "dist", "*.egg-info", "results")
    shutil.copytree(REPO, dest, ignore=skip)
    return dest


def _expected_packages(src: pathlib.Path) -> set[str]:
    """Top-level packages of the checkout that pyproject's ``packages.find`` includes."""
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    found = {p.parent.name for p in src.glob("*/__init__.py")}
    return {name for name in found if any(fnmatch(name, pat) for pat in patterns)}


def _module_files(src: pathlib.Path, package: str) -> set[str]:
    """Every ``.py`` file of a package tree (and the package data pyproject names), as
    wheel paths."""
    data = PYPROJECT["tool"]["setuptools"].get("package-data", {}).get(package, [])
    files = {p for p in (src / package).rglob("*.py")} | {p for pat in data for p in (src / package).glob(pat)}
    return {p.relative_to(src).as_posix() for p in files if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Path of the wheel built from a copy of this checkout (offline)."""
    import setuptools

    if Version(setuptools.__version__) < Version("77"):
        pytest.fail(f"setuptools {setuptools.__version__} cannot build pyproject's PEP 639 license fields: the test extra asks for >= 77")
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_checkout(tmp / "src")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(src), "-w", str(tmp / "dist")],
        capture_output=True, text=True, cwd=tmp,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("*.whl")
    return src, whl


def test_wheel_contents_and_metadata(wheel):
    src, whl = wheel
    name, version = PROJECT["name"], PROJECT["version"]
    assert whl.name == f"{name}-{version}-py3-none-any.whl"
    dist_info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(whl) as zf:
        names = set(zf.namelist())
        meta = email.parser.Parser().parsestr(zf.read(f"{dist_info}/METADATA").decode())
        license_text = zf.read(f"{dist_info}/licenses/LICENSE")
    packages = _expected_packages(src)
    assert "jaxnorm" in packages and "tests" not in packages
    assert {n.split("/")[0] for n in names} == packages | {dist_info}  # no tests/, no experiments/ unless pyproject says so
    for package in packages:
        assert {n for n in names if n.startswith(package + "/")} == _module_files(src, package)
    assert "jaxnorm/py.typed" in names
    assert license_text == (REPO / "LICENSE").read_bytes()
    assert meta["Name"] == name and meta["Version"] == version
    assert meta["License-Expression"] == PROJECT["license"]
    assert meta["Requires-Python"] == PROJECT["requires-python"]
    by_extra: dict[str, set[tuple]] = {}
    for line in meta.get_all("Requires-Dist"):
        extra, key = _split_extra(Requirement(line))
        by_extra.setdefault(extra, set()).add(key)
    assert set(meta.get_all("Provides-Extra")) == set(PROJECT["optional-dependencies"])
    expected = {"": PROJECT["dependencies"], **PROJECT["optional-dependencies"]}
    assert by_extra == {extra: {_split_extra(Requirement(r))[1] for r in reqs} for extra, reqs in expected.items()}


def _split_extra(req: Requirement) -> tuple[str, tuple]:
    """``(extra or "", comparable requirement)`` of a Requires-Dist line: METADATA writes an
    extra's requirement as ``<its own marker> and extra == "<name>"``."""
    marker = str(req.marker) if req.marker is not None else ""
    match = re.fullmatch(r'(?:\((.*)\) and |(.*) and )?extra == "([^"]+)"', marker)
    extra, own = (match.group(3), match.group(1) or match.group(2) or "") if match else ("", marker)
    own = str(Requirement(f"x; {own}").marker) if own else ""
    return extra, (canonicalize_name(req.name), tuple(sorted(req.extras)), str(req.specifier), own)


_CHILD = r"""
import importlib.metadata, importlib.resources, json, sys
import numpy as np
import jaxnorm
from jaxnorm.norms import layer_norm
x = np.linspace(-3.0, 5.0, 24, dtype=np.float32).reshape(4, 6) ** 2
y = layer_norm(x, scale=np.full(6, 2.0, np.float32), bias=np.full(6, 0.5, np.float32))
print(json.dumps({
    "file": jaxnorm.__file__, "prefix": sys.prefix, "path": sys.path,
    "version": importlib.metadata.version("jaxnorm"),
    "typed": importlib.resources.files("jaxnorm").joinpath("py.typed").is_file(),
    "y": np.asarray(y, dtype=np.float64).tolist(),
}))
"""


def test_wheel_installs_and_runs_in_a_clean_venv(wheel, tmp_path):
    _, whl = wheel
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    # pip of this environment installs into the venv (--python); the wheel alone, offline.
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(whl)],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    (site,) = (venv / "lib").glob("python*/site-packages")
    # The dependencies come from this environment, not reinstalled: a plain path line in a
    # .pth is appended to sys.path after the venv's own site-packages, and the .pth files in
    # that folder (this checkout's editable install among them) are not processed.
    deps = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    (site / "_jaxnorm_test_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "JAX_", "XLA_"))}
    env["JAX_PLATFORMS"] = "cpu"
    run = subprocess.run([str(py), "-I", "-c", _CHILD], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert pathlib.Path(out["prefix"]).resolve() == venv.resolve()
    assert pathlib.Path(out["file"]).resolve().is_relative_to(site.resolve()), out["file"]
    assert out["version"] == PROJECT["version"] and out["typed"]
    path = [str(pathlib.Path(p).resolve()) for p in out["path"]]
    assert path.index(str(site.resolve())) < path.index(str(pathlib.Path(deps[0]).resolve()))
    for script in PROJECT.get("scripts", {}):
        assert os.access(venv / "bin" / script, os.X_OK), f"console script {script} missing from the venv"
    # LayerNorm against float64 NumPy: per row, (x - mean) / sqrt(var + eps) * 2 + 0.5.
    x = (np.linspace(-3.0, 5.0, 24, dtype=np.float32).reshape(4, 6) ** 2).astype(np.float64)  # the child's input
    ref = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5) * 2.0 + 0.5
    # float32 arithmetic: the mean, the centred values and the variance each carry a few ulps
    # relative to max|x| / std (<= 3.6 in these rows), so z = (x - mean) / std is off by
    # O(10) ulps, and the output 2 z + 0.5 (|2 z| <= 2 sqrt(5) for 6 values) by O(100) ulps of 1
    # at worst; bound: 64 ulps x 2 sqrt(6). Measured: 6.7 ulps of 1 (8e-7); a wrong epsilon or
    # an unbiased variance would be off by > 1e-2.
    np.testing.assert_allclose(out["y"], ref, rtol=0, atol=64 * np.finfo(np.float32).eps * 2 * np.sqrt(6))
