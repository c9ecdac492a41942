"""One shape for every study: named setups -> groups of runs -> an analysis of the stored
files, behind one command line.

A study is an object with (the :class:`Study` protocol):

* ``name`` -- its results live in ``<results>/<name>/<setup.name>/``;
* ``setups`` -- named setups (frozen dataclasses with a ``name`` field and a
  ``quick()`` method that shrinks them for a laptop or a test), and ``default`` the name
  used when none is given;
* ``add_arguments(parser)`` -- the study's own flags; every flag whose ``dest`` is a
  field of the setup overrides that field (flags left out have default ``None``);
* ``groups(setup, seeds, root)`` -- the runs, as :class:`RunGroup` s: each group is one
  :func:`jaxnorm.train.fit_many` program (configs that differ only in seed, name or
  optimizer-state hyperparameters) with its observers, and an optional ``after`` step
  that measures the trained runs (it writes into their folders and must skip work that
  is already there, so that a rerun is cheap);
* ``analyze(setup, root)`` -- reads the stored runs only (never retrains), writes
  ``root/plots/`` (PNGs and ``summary.md``) and returns a one-line verdict. Analyses
  live in :mod:`jaxnorm.analysis` (one module per study), the study files in
  ``experiments/`` hold setups, groups and observers only.

:func:`run_study` trains every group (finished runs are skipped and interrupted ones
resumed by ``fit_many`` itself) and :func:`main` is the command line every study shares::

    python -m experiments.<study> [CONFIG | --config NAME] [--quick] [--seeds 0 1 2] [--shard i/n]
        [--results DIR] [--plot-only] [--overwrite] [--no-progress] [--quiet] [--debug]
        [--no-compile-cache] [--log tensorboard [wandb]] [study flags]
    jaxnorm <study> ...                     # the same, as the package's console command (jaxnorm.cli)

``--log`` turns on metric sinks for every run trained (``TrainConfig.loggers``:
TensorBoard event files in each run's ``tensorboard/``, one W&B run per run; they need
``pip install 'jaxnorm[log]'``). Logging is bookkeeping: it never changes which runs
exist, and adding it to a rerun resumes the stored runs. (A positional CONFIG goes before
``--log``, which takes every name that follows it.)

``--quick`` shrinks the setup first and explicit study flags apply after it, so a flag
given on the command line is never overridden by ``--quick``. Errors a user can fix (an
unknown config, a bad ``--shard``, a run folder that holds another run, a setup that
differs from the stored one) are printed as one line, ``<prog>: error: <message>``, not a
traceback, and the command exits with status 2 (``--debug`` re-raises them with the
traceback); Ctrl-C exits with 130. The INFO lines of the ``jaxnorm`` loggers (e.g. the
engine's one line per run it skips because it finished earlier) are printed as they
come, one line each, unless ``--quiet`` (which also turns off the progress bars).

What is stored is never rewritten by a changed command (:func:`check_stored_setup`):
``study.json`` records the setup the runs under a root were trained with, and a call
whose setup differs from it is refused, naming the fields, before anything is written
-- unless ``--overwrite``, which replaces the stored setup and deletes and retrains the
runs (the engine also refuses any single run whose config differs, naming the fields).
Lists of values (seeds, the setup's grids such as scales, norms or learning-rate scales)
may grow: ``study.json`` then holds the union, which is what the root holds. Finished runs
are skipped (one line each), interrupted ones resume, and a study's ``after`` step skips
measurements already stored. ``--plot-only`` analyses what ``study.json`` describes, not
the current flags.
"""

from __future__ import annotations

import argparse
import math
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

from tqdm.auto import tqdm

from jaxnorm.results import read_json, write_json
from jaxnorm.train import CheckpointError, FitResult, RunExistsError, TrainConfig, fit_many
from jaxnorm.train.metric_loggers import LOGGERS, check_available, check_logger_names


@dataclasses.dataclass(frozen=True)
class RunGroup:
    """Runs trained as one program.

    Attributes:
      configs: the runs (see :func:`jaxnorm.train.fit_many` for what may differ).
      observers: a factory of the group's observers (called once per training); None:
        the engine's default (the γ/β recorder).
      after: called with the group's :class:`~jaxnorm.train.FitResult` s after training
        (post-hoc measurements of the trained runs), or None.
      strategy: ``fit_many``'s multi-run strategy.
    """

    configs: tuple[TrainConfig, ...]
    observers: Optional[Callable[[], list]] = None
    after: Optional[Callable[[list[FitResult]], None]] = None
    strategy: str = "auto"


class Study(Protocol):
    name: str
    setups: Mapping[str, Any]
    default: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def groups(self, setup: Any, seeds: Sequence[int], root: pathlib.Path) -> list[RunGroup]: ...

    def analyze(self, setup: Any, root: pathlib.Path) -> str: ...


def parse_shard(shard: str) -> tuple[int, int]:
    """``'i/n'`` (1-based) -> ``(i, n)``; ValueError for anything else."""
    try:
        i, n = (int(p) for p in shard.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 2/3), got {shard!r}.") from None
    if not 1 <= i <= n:
        raise ValueError(f"--shard {shard}: need 1 <= i <= n.")
    return i, n


def shard_of(items: Sequence, shard: str) -> list:
    """The items of shard ``i/n``: every n-th, starting at the i-th."""
    i, n = parse_shard(shard)
    return list(items)[i - 1 :: n]


def setup_with(base: Any, overrides: Mapping[str, Any], *, quick: bool) -> Any:
    """``base`` shrunk by ``quick()`` when asked, then every override that is not None
    (explicit flags win over ``--quick``)."""
    cfg = base.quick() if quick else base
    fields = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None and k in fields})


def study_root(study: Study, setup: Any, results: str) -> pathlib.Path:
    return pathlib.Path(results) / study.name / setup.name


def run_location(root: pathlib.Path) -> dict:
    """The ``TrainConfig`` fields that put a run's folder directly under a study's
    ``root`` (``<results>/<study>/<setup>/``): ``results_dir`` and ``study``."""
    root = pathlib.Path(root)
    return {"results_dir": str(root.parent.parent), "study": f"{root.parent.name}/{root.name}"}


class SetupChangedError(ValueError):
    """A study root holds runs of another setup than the one asked for (the message
    names the differing fields)."""


def read_study(root) -> dict | None:
    """The ``study.json`` of a study root (None if there is none)."""
    path = pathlib.Path(root) / "study.json"
    return read_json(path) if path.is_file() else None


def _union(stored: list, given: list) -> list:
    return stored + [v for v in given if v not in stored]


def check_stored_setup(study: Study, setup: Any, seeds: Sequence[int], root, *, overwrite: bool = False) -> dict:
    """The ``study.json`` to write for training ``setup`` with ``seeds`` under ``root``.

    Without a stored one, or with ``overwrite``: the setup and seeds as given. Else
    every field of the stored setup must equal the given one (a field the stored one
    lacks, added to the setup since, is taken as given), except list-valued fields
    (grids, seeds), which may differ and are merged (stored values first, then new ones):
    the root then holds the runs of both calls and ``study.json`` says so. Anything else
    raises :class:`SetupChangedError` naming each field with its stored and given value.
    """
    given = _jsonable(dataclasses.asdict(setup))
    new = {"study": study.name, "setup": given, "seeds": [int(s) for s in seeds]}
    stored = read_study(root)
    if stored is None or overwrite:
        return new
    if stored.get("study") not in (None, study.name):
        raise SetupChangedError(f"{root} holds the {stored.get('study')!r} study, not {study.name!r}; use another --results.")
    old = dict(stored.get("setup") or {})
    merged, differ = dict(given), []
    for k in sorted(set(old) & set(given)):  # a field one side lacks: written before it existed, or since removed
        a, b = old[k], given[k]
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list):
            merged[k] = _union(a, b)
        else:
            differ.append(f"{k} (stored {a!r}, given {b!r})")
    if differ:
        raise SetupChangedError(
            f"{root} holds runs of another setup: {'; '.join(differ)}. Use another --results, the stored flags, "
            "or --overwrite to delete and retrain."
        )
    return {**new, "setup": merged, "seeds": _union([int(s) for s in stored.get("seeds") or []], new["seeds"])}


def _remove_other_runs(root: pathlib.Path, groups: Sequence[RunGroup]) -> None:
    """Deletes the run folders below ``root`` that none of ``groups`` writes (a replaced
    setup's runs: ``--overwrite`` with another setup must not leave them to the analysis)."""
    keep = {(pathlib.Path(c.results_dir) / c.study / c.name).resolve() for g in groups for c in g.configs}
    for cfg in sorted(root.rglob("config.json")):
        run = cfg.parent
        if run.resolve() not in keep and "plots" not in run.relative_to(root).parts:
            shutil.rmtree(run)


def run_study(
    study: Study,
    setup: Any,
    *,
    seeds: Sequence[int],
    results: str = "results",
    shard: str = "1/1",
    overwrite: bool = False,
    progress: bool = True,
    loggers: Sequence[str] = (),
) -> list[FitResult]:
    """Trains the setup's groups of this shard (skipping finished runs, resuming
    interrupted ones) and runs each group's ``after`` step.

    ``loggers`` (names from :data:`jaxnorm.train.metric_loggers.LOGGERS`) are added to
    every config's own ``loggers`` before training (``()``: the configs as they are).
    Unknown names and missing packages are a ValueError before anything is written.

    First, before anything is written, the setup is checked against the root's stored
    ``study.json`` (:func:`check_stored_setup`: SetupChangedError for another setup);
    then ``study.json`` (the setup and seeds, what the analysis describes) is written.
    With ``overwrite`` and a setup that differs from the stored one, the run folders of
    the old setup that the new one does not have are deleted too (every shard's runs
    are the new setup's, so a sharded ``--overwrite`` keeps the other shards' runs)."""
    loggers = check_logger_names(tuple(loggers))
    check_available(loggers)
    root = study_root(study, setup, results)
    every = study.groups(setup, list(seeds), root)
    groups = [_with_loggers(g, loggers) for g in shard_of(every, shard)]
    info, previous = check_stored_setup(study, setup, seeds, root, overwrite=overwrite), read_study(root)
    if overwrite and previous is not None and previous.get("setup") != info["setup"]:
        _remove_other_runs(root, every)
    write_json(root / "study.json", info)
    out: list[FitResult] = []
    bar = tqdm(groups, desc=f"{study.name}/{setup.name}", unit="group", disable=not progress)
    for group in bar:
        observers = group.observers() if group.observers is not None else None
        results_ = fit_many(group.configs, strategy=group.strategy, observers=observers, overwrite=overwrite, progress=progress)
        if group.after is not None:
            group.after(results_)
        out.extend(results_)
    bar.close()
    return out


def _with_loggers(group: RunGroup, loggers: tuple[str, ...]) -> RunGroup:
    """The group with ``loggers`` added to each config's own (their order kept)."""
    if not loggers:
        return group
    configs = tuple(c.replace(loggers=c.loggers + tuple(n for n in loggers if n not in c.loggers)) for c in group.configs)
    return dataclasses.replace(group, configs=configs)


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def positive_int(text: str) -> int:
    """An argparse ``type``: an int >= 1 (else argparse's one-line "invalid positive int value")."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite float > 0."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {text}")
    return value


positive_int.__name__, positive_float.__name__ = "positive int", "positive float"  # argparse: "invalid positive int value"


def build_parser(study: Study, prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The shared command line's parser; ``prog`` (default ``python -m experiments.<name>``)
    is the name its usage and errors print (the ``jaxnorm`` command passes ``jaxnorm <name>``)."""
    parser = argparse.ArgumentParser(prog=prog or f"python -m experiments.{study.name}", description=_first_line(study))
    parser.add_argument("setup", nargs="?", choices=sorted(study.setups), metavar="CONFIG",
                        help="the setup, as --config (one of: %(choices)s)")
    parser.add_argument("--config", choices=sorted(study.setups), help=f"the setup (default: {study.default})")
    parser.add_argument("--quick", action="store_true", help="a few steps on a small subset (laptops, tests)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the setup's)")
    parser.add_argument("--shard", default="1/1", help="i/n: train every n-th group of runs starting at the i-th")
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    parser.add_argument("--plot-only", action="store_true", help="only plots and summary.md, from the stored files")
    parser.add_argument("--overwrite", action="store_true", help="delete and retrain runs that already exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no info lines (errors only)")
    parser.add_argument("--debug", action="store_true", help="re-raise errors with their traceback")
    parser.add_argument("--no-compile-cache", action="store_true",
                        help=f"do not turn on the persistent XLA compilation cache in <results>/.xla_cache (or set {COMPILE_CACHE_ENV}=0)")
    parser.add_argument(
        "--log", nargs="+", default=[], choices=sorted(LOGGERS), metavar="SINK",
        help=f"also log every run's metrics to these sinks ({', '.join(sorted(LOGGERS))}; pip install 'jaxnorm[log]')",
    )
    study.add_arguments(parser)
    return parser


def _first_line(study) -> str:
    module = sys.modules.get(type(study).__module__)
    doc = (getattr(module, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else study.name


#: Set to ``0`` to keep the study commands from turning the compilation cache on (what
#: ``--no-compile-cache`` does for one command).
COMPILE_CACHE_ENV = "JAXNORM_COMPILE_CACHE"


def enable_compilation_cache(results: str) -> bool:
    """Turns on JAX's persistent compilation cache in ``<results>/.xla_cache`` unless one
    is configured already (``JAX_COMPILATION_CACHE_DIR`` or ``jax_compilation_cache_dir``:
    the user's folder wins) or :data:`COMPILE_CACHE_ENV` is ``0``. Returns whether this
    call turned it on. Every study command calls it (opt out: ``--no-compile-cache``).

    Why: a study trains many small programs, and programs that differ only in what the
    engine keeps outside the compiled step (an initializer's scale, a learning rate in a
    separate group) have the same HLO; the in-memory cache cannot reuse them across
    ``fit_many`` calls (each builds new closures), the persistent one can -- and it
    outlives the process, so a resumed study, its ``--plot-only`` report and every shard
    of a job array that shares the results folder compile each program once (the
    first-call times with and without it are in BENCHMARKS.md). Only compilation is
    cached: results are byte-identical with and without it. Compilations shorter than
    0.3 s are not stored (not worth a file read).
    """
    import jax

    if os.environ.get(COMPILE_CACHE_ENV, "1").strip() == "0":
        return False
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return False
    jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(results).absolute() / ".xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
    return True


#: The errors a user can fix, printed as one line by the command lines (``--debug``
#: re-raises them): bad values, stored runs or setups that differ, broken checkpoints,
#: missing files. RunExistsError's subclasses are caught with it.
USER_ERRORS = (ValueError, RunExistsError, CheckpointError, FileNotFoundError)


@contextlib.contextmanager
def cli_logging(quiet: bool = False):
    """Prints the INFO lines of the ``jaxnorm`` loggers on stderr, bare (no level, no
    time), for the duration of a command; nothing with ``quiet``. Local to the command
    line: the handler is removed and the level restored on exit, and importing jaxnorm
    configures no logging at all."""
    logger = logging.getLogger("jaxnorm")
    if quiet:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # Not passed on to the root logger too: a library imported on the way (absl, via
    # orbax) may have given the root a handler, which would print every line twice.
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def report_error(prog: str, error: BaseException, debug: bool = False) -> int:
    """The exit status of a command line that ``error`` ended: 130 for Ctrl-C, else 2 with
    ``<prog>: error: <message>`` on stderr (one line); ``debug`` re-raises instead."""
    if debug:
        raise error
    if isinstance(error, KeyboardInterrupt):
        print(f"{prog}: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def restore_setup(setup: Any, stored: Mapping) -> Any:
    """``setup`` with the fields of a stored ``study.json`` setup (JSON lists back to
    tuples, nested configs through their ``from_dict``); ``setup`` itself if the stored
    values do not make a valid setup of this kind."""
    fields = {f.name: getattr(setup, f.name) for f in dataclasses.fields(setup)}
    changes = {}
    for k, v in stored.items():
        if k not in fields or _jsonable(fields[k]) == v:
            continue
        cur = fields[k]
        if isinstance(v, list) and isinstance(cur, (tuple, list)):
            v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        elif isinstance(v, dict) and hasattr(type(cur), "from_dict"):
            v = type(cur).from_dict(v)
        changes[k] = v
    try:
        return dataclasses.replace(setup, **changes) if changes else setup
    except (TypeError, ValueError):
        return setup


def main(study: Study, argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """The shared command line (module docstring), its usage and errors under ``prog``
    (:func:`build_parser`). The setup may be named as the first argument or with
    ``--config`` (both, naming different setups: a usage error). Returns the exit status."""
    parser = build_parser(study, prog)
    args = parser.parse_args(argv)
    if args.setup is not None and args.config not in (None, args.setup):
        parser.error(f"the setup is named twice: {args.setup!r} and --config {args.config!r}")
    args.config = args.setup or args.config or study.default
    if not args.no_compile_cache:
        enable_compilation_cache(args.results)
    try:
        parse_shard(args.shard)
    except ValueError as e:
        parser.error(str(e))
    progress = not (args.no_progress or args.quiet)
    try:
        with cli_logging(args.quiet):
            overrides = {k: v for k, v in vars(args).items() if k not in _SHARED}
            setup = setup_with(study.setups[args.config], overrides, quick=args.quick)
            seeds = args.seeds if args.seeds is not None else list(getattr(setup, "seeds", (0,)))
            root = study_root(study, setup, args.results)
            t0 = time.time()
            if not args.plot_only:
                run_study(
                    study, setup, seeds=seeds, results=args.results, shard=args.shard, overwrite=args.overwrite,
                    progress=progress, loggers=args.log,
                )  # fmt: skip
                if args.shard != "1/1":
                    print(f"shard {args.shard} trained in {time.time() - t0:.1f} s; analyze all shards with --plot-only")
                    return 0
            stored = read_study(root)
            if stored is not None:  # the analysis describes what was trained, not the current flags
                setup = restore_setup(setup, stored.get("setup") or {})
            verdict = study.analyze(setup, root)
    except (*USER_ERRORS, KeyboardInterrupt) as e:
        return report_error(parser.prog, e, args.debug)
    if verdict:
        print(verdict)
    print(f"done in {time.time() - t0:.1f} s; plots and summary.md in {root / 'plots'}")
    return 0


_SHARED = {"setup", "config", "quick", "seeds", "shard", "results", "plot_only", "overwrite", "no_progress", "quiet", "debug", "no_compile_cache", "log"}
