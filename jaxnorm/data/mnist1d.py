"""MNIST-1D, generated offline by the ``mnist1d`` package and cached on disk.

MNIST-1D (Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML 2024) is a
procedurally generated stand-in for MNIST: ten 1-D templates resembling the digits 0-9,
padded, translated, scaled, sheared and corrupted with correlated and i.i.d. noise, then
resampled to sequences of length 40. It separates models with and without spatial
inductive bias (logistic regression 32%, MLP 68%, CNN 94%, GRU 91% test accuracy in the
paper) where MNIST gives every model ~99%.

jaxnorm generates it with the package's own ``mnist1d.data.make_dataset`` from
``get_dataset_args()`` (its defaults: 5,000 sequences, ``train_split=0.8``, ``seed=42``),
changing only the arguments a variant names (:data:`VARIANTS`):

=========================  ===========================================================
name                       package arguments
=========================  ===========================================================
``mnist1d``                the defaults: 4,000 training and 1,000 test sequences
``mnist1d_shuffle``        ``shuffle_seq=True``: the 40 positions of every sequence
                           permuted by one fixed permutation (the paper's "shuffle"
                           control: it destroys spatial structure and nothing else)
``mnist1d_20k``            ``num_samples=20_000``: 16,000 training, 4,000 test
``mnist1d_shuffle_20k``    both
=========================  ===========================================================

The package draws from NumPy's and Python's global random generators after seeding them
(``set_seed(args.seed)``); :func:`generate` restores both generators' states afterwards,
so loading a dataset never changes a user's random stream. The arrays are a deterministic
function of the package version and the arguments; they are cached as one ``.npz`` file
per variant under :func:`cache_dir` (written to a temporary file and renamed, so a killed
build never leaves a half-written cache; a damaged cache file is rebuilt, with a warning).

Representation (the :class:`~jaxnorm.data.Dataset` conventions): the package's sequences
are standardized reals (the whole set centred and scaled to standard deviation 1). jaxnorm
stores them as float32 ``(n, 40, 1)`` (batch, length, channels) mapped affinely into
``[0, 1]`` by ``(x − lo) / (hi − lo)``, ``lo``/``hi`` the minimum and maximum over the whole
generated set; ``Dataset.mean``/``std`` are the mean and population standard deviation of
the *training* sequences in that scale, so ``normalize(x, mean, std)`` gives the sequences
standardized by training-set statistics (an affine map is undone exactly, up to float32
rounding). Labels are int32 in 0..9.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import warnings
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np

from jaxnorm.results import write_npz

SEQUENCE_LENGTH = 40
NUM_CLASSES = 10

VARIANTS: Mapping[str, Mapping] = MappingProxyType(
    {
        "mnist1d": MappingProxyType({}),
        "mnist1d_shuffle": MappingProxyType({"shuffle_seq": True}),
        "mnist1d_20k": MappingProxyType({"num_samples": 20_000}),
        "mnist1d_shuffle_20k": MappingProxyType({"shuffle_seq": True, "num_samples": 20_000}),
    }
)
"""Variant name -> the ``get_dataset_args()`` entries it overrides."""

_CACHE_ENV = "JAXNORM_DATA_DIR"
_FORMAT = 1  # bump when the cached layout changes


def cache_dir() -> Path:
    """Where generated datasets are cached: ``$JAXNORM_DATA_DIR/mnist1d`` if that variable
    is set, else ``~/.cache/jaxnorm/mnist1d`` (``$XDG_CACHE_HOME`` respected)."""
    root = os.environ.get(_CACHE_ENV)
    if root:
        return Path(root) / "mnist1d"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "jaxnorm" / "mnist1d"


def _package():
    try:
        import mnist1d.data as m1d
    except ImportError as e:  # a dependency; only a broken install gets here
        raise ImportError("MNIST-1D needs the `mnist1d` package (a jaxnorm dependency): pip install mnist1d") from e
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("mnist1d")
    except PackageNotFoundError:
        v = "unknown"
    return m1d, v


def dataset_args(overrides: Mapping | None = None) -> dict:
    """The package's ``get_dataset_args()`` as a dict, with ``overrides`` applied (the
    download URL dropped: nothing is downloaded).

    Raises:
      ValueError: an override names an argument the package does not have.
    """
    m1d, _ = _package()
    args = dict(m1d.get_dataset_args(as_dict=True))
    args.pop("url", None)
    unknown = sorted(set(overrides or {}) - set(args))
    if unknown:
        raise ValueError(f"unknown MNIST-1D argument(s) {unknown}; the package's arguments: {sorted(args)}.")
    args.update(overrides or {})
    return args


def generate(overrides: Mapping | None = None) -> dict[str, np.ndarray]:
    """Builds the dataset with the package's ``make_dataset`` (no cache), leaving NumPy's and
    Python's global random states as they were.

    Returns:
      ``{'x' (n_train, L) float64, 'y' (n_train,) int, 'x_test', 'y_test'}`` exactly as the
      package returns them.
    """
    m1d, _ = _package()
    from mnist1d.utils import ObjectView

    args = dataset_args(overrides)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = m1d.make_dataset(ObjectView(args))  # the package's own attribute view of its arguments
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


def _cache_path(name: str, args: Mapping, package_version: str) -> Path:
    key = json.dumps({"args": args, "version": package_version, "format": _FORMAT}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / f"{name}-{digest}.npz"


def _to_unit(data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    x, x_test = data["x"], data["x_test"]
    both = np.concatenate([x.ravel(), x_test.ravel()])
    lo, hi = float(both.min()), float(both.max())
    scale = hi - lo if hi > lo else 1.0
    unit = lambda a: np.clip((a - lo) / scale, 0.0, 1.0).astype(np.float32)[..., None]
    return {
        "train_x": unit(x), "train_y": np.asarray(data["y"], np.int32),
        "test_x": unit(x_test), "test_y": np.asarray(data["y_test"], np.int32),
    }  # fmt: skip


def _read(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            out = {k: np.array(f[k]) for k in ("train_x", "train_y", "test_x", "test_y")}
    except (FileNotFoundError, NotADirectoryError):  # not built yet (or no cache folder at all)
        return None
    except Exception as e:  # a damaged or foreign file: rebuild rather than fail
        warnings.warn(f"MNIST-1D cache {str(path)!r} could not be read ({type(e).__name__}: {e}); rebuilding it.", stacklevel=3)
        return None
    ok = (
        out["train_x"].dtype == np.float32 and out["train_x"].ndim == 3 and out["test_x"].ndim == 3
        and len(out["train_x"]) == len(out["train_y"]) and len(out["test_x"]) == len(out["test_y"])
    )  # fmt: skip
    if not ok:
        warnings.warn(f"MNIST-1D cache {str(path)!r} has unexpected contents; rebuilding it.", stacklevel=3)
        return None
    return out


def _write(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    try:
        write_npz(path, arrays)  # atomic: a killed build never leaves a half-written cache
    except OSError as e:  # a read-only home, a full disk: the data is still returned
        warnings.warn(f"MNIST-1D: could not write the cache {str(path)!r} ({e}); it will be generated again next time.", stacklevel=3)


def load_mnist1d(name: str = "mnist1d") -> dict[str, np.ndarray]:
    """The arrays of variant ``name`` (:data:`VARIANTS`), from the cache or generated (then
    cached): ``{'train_x' (n, 40, 1) float32 in [0, 1], 'train_y' int32, 'test_x', 'test_y'}``
    (the package's train and test parts; the module docstring gives the scaling).

    Raises:
      ValueError: unknown variant.
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown MNIST-1D variant {name!r}; known: {list(VARIANTS)}.")
    _, package_version = _package()
    args = dataset_args(VARIANTS[name])
    path = _cache_path(name, args, package_version)
    arrays = _read(path)
    if arrays is None:
        arrays = _to_unit(generate(VARIANTS[name]))
        _write(path, arrays)
    for a in arrays.values():
        a.flags.writeable = False
    return arrays
