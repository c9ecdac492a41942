"""The ``jaxnorm`` console command: every study, the runs on disk, their reports.

::

    jaxnorm <study> [CONFIG] [flags]        # python -m experiments.<study> ... (jaxnorm.study.main)
    jaxnorm runs [DIR] [--status S,...] [--json]
    jaxnorm report DIR [--debug]
    jaxnorm [--help]                        # the studies installed and the two subcommands

Studies are found through the ``jaxnorm.studies`` entry-point group
(``importlib.metadata``; this package's ``pyproject.toml`` registers every study of
``experiments/``, and any other installed package may register its own): each entry
names a :class:`jaxnorm.study.Study` object (``"experiments.ablation:STUDY"``). Only the
study asked for is imported; the listing of ``jaxnorm --help`` reads each study module's
docstring from its source without importing it. A checkout run without being installed
has no entry points: the study commands then say to ``pip install -e .`` (``runs`` and
``report`` of a plain folder work without).

* ``jaxnorm <study> [args]`` is :func:`jaxnorm.study.main` of that study with the usage
  and errors under ``jaxnorm <study>``; its exit status.
* ``jaxnorm runs [DIR]`` (default ``results``) lists every run folder below ``DIR``
  (:mod:`jaxnorm.analysis.run_table`): state, step of total, the last train loss and
  accuracy, the last eval loss/accuracy of each split and the config fields in which the
  listed runs differ. ``--status finished,diverged`` keeps the runs in those states;
  ``--json`` prints the rows as one JSON list instead of the table. No run: ``no runs
  under DIR`` (exit 0).
* ``jaxnorm report DIR`` redraws plots and ``summary.md`` from the stored files, never
  training: a study root (a folder with ``study.json``) through its study's ``analyze``
  with the setup ``study.json`` records (what ``--plot-only`` does), printing the
  verdict; a folder holding study roots below it, each of them (the runs outside them
  are named, not reported); any other folder with runs,
  :func:`jaxnorm.analysis.report.write_report` (into ``DIR/plots``). A folder with
  neither is refused, and nothing in it is touched.

Errors a user can fix (an unknown study, a missing folder, a folder without runs, an
unknown ``--status``, a study that is not installed) print one line, ``jaxnorm: error:
...`` (``jaxnorm runs: error: ...``), and exit with status 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import pathlib
import sys
import textwrap
from typing import Callable, Optional, Sequence

#: The entry-point group the studies register in.
GROUP = "jaxnorm.studies"
#: The subcommands; they take precedence over a study of the same name.
COMMANDS = {"runs": "list the runs below a folder: state, step, last metrics, config differences",
            "report": "redraw plots and summary.md from the stored files (a study root, a folder of them, or any runs)"}
_NOT_INSTALLED = "no studies are installed (the jaxnorm.studies entry points); run `pip install -e .` in the checkout"


class CliError(ValueError):
    """An error a user can fix; printed as one line."""


@dataclasses.dataclass(frozen=True)
class StudyEntry:
    """One registered study: its command name and where its object lives (``"module:attr"``)."""

    name: str
    value: str

    @property
    def module(self) -> str:
        return self.value.partition(":")[0].strip()

    def load(self):
        """Imports the module and returns the study object. CliError if it cannot be
        imported or is not a study (no ``name``, ``setups``, ``default``, ``analyze``)."""
        module, _, attr = self.value.partition(":")
        try:
            obj = importlib.import_module(module.strip())
            for part in attr.strip().split(".") if attr.strip() else ():
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise CliError(f"study {self.name!r} ({self.value}) cannot be loaded: {type(e).__name__}: {e}") from e
        missing = [a for a in ("name", "setups", "default", "groups", "analyze", "add_arguments") if not hasattr(obj, a)]
        if missing:
            raise CliError(f"{self.value} (study {self.name!r}) is not a study: it has no {', '.join(missing)}.")
        return obj

    def description(self) -> str:
        """The first paragraph of the module's docstring on one line, read from the source
        without importing it ('' if it cannot be found)."""
        try:
            spec = importlib.util.find_spec(self.module)
            source = pathlib.Path(spec.origin).read_text() if spec and spec.origin else ""
            doc = ast.get_docstring(ast.parse(source)) or ""
        except (ImportError, ValueError, OSError, SyntaxError):
            return ""
        return " ".join(doc.strip().split("\n\n")[0].split())


def discover_studies() -> dict[str, StudyEntry]:
    """``{name: StudyEntry}`` of the installed ``jaxnorm.studies`` entry points, by name.
    (The one place the command looks for studies; tests replace it.)"""
    return {ep.name: StudyEntry(ep.name, ep.value) for ep in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda e: e.name)}


def _studies() -> dict[str, StudyEntry]:
    # Through the module attribute, so that a replaced discover_studies is the one used.
    return sys.modules[__name__].discover_studies()


def _overview(studies: dict[str, StudyEntry]) -> str:
    width = max([len(n) for n in (*studies, *COMMANDS)] + [4]) + 2
    lines = ["usage: jaxnorm <study> [CONFIG] [flags]   (jaxnorm <study> --help: the study's flags)",
             "       jaxnorm runs [DIR] [--status S,...] [--json]",
             "       jaxnorm report DIR", "", "studies:"]
    if studies:
        for name, entry in studies.items():
            desc = textwrap.shorten(entry.description(), width=max(20, 100 - width), placeholder=" ...")
            lines.append(f"  {name.ljust(width)}{desc}".rstrip())
    else:
        lines.append(f"  (none: {_NOT_INSTALLED})")
    lines += ["", "commands:"] + [f"  {name.ljust(width)}{desc}" for name, desc in COMMANDS.items()]
    return "\n".join(lines) + "\n"


def _print_error(prog: str, error: BaseException) -> int:
    if isinstance(error, KeyboardInterrupt):
        print(f"{prog}: interrupted.", file=sys.stderr)
        return 130
    print(f"{prog}: error: {' '.join(str(error).split()) or type(error).__name__}", file=sys.stderr)
    return 2


def _state_list(text: str) -> list[str]:
    states = [s.strip() for s in text.split(",") if s.strip()]
    if not states:
        raise argparse.ArgumentTypeError("give one or more states, separated by commas")
    return states


def runs_main(argv: Sequence[str]) -> int:
    """``jaxnorm runs [DIR] [--status S,...] [--json]`` (module docstring)."""
    from jaxnorm.analysis.run_table import ROW_STATES, format_table, rows_json, run_rows

    parser = argparse.ArgumentParser(prog="jaxnorm runs", description=COMMANDS["runs"])
    parser.add_argument("dir", nargs="?", default="results", metavar="DIR", help="the folder to look in (default: results)")
    parser.add_argument("--status", type=_state_list, metavar="S,...", help=f"only runs in these states, of: {', '.join(ROW_STATES)}")
    parser.add_argument("--json", action="store_true", help="the rows as one JSON list instead of the table")
    args = parser.parse_args(argv)
    try:
        rows = run_rows(args.dir, states=args.status)
    except (ValueError, OSError, KeyboardInterrupt) as e:
        return _print_error(parser.prog, e)
    if args.json:
        print(json.dumps(rows_json(rows), indent=2, allow_nan=False))
    elif not rows:
        print(f"no runs under {args.dir}" + (f" with status {','.join(args.status)}" if args.status else ""))
    else:
        sys.stdout.write(format_table(rows))
    return 0


def _study_roots(folder: pathlib.Path) -> list[pathlib.Path]:
    """``folder`` if it is a study root (holds ``study.json``), else the study roots below
    it, outermost only (a study root's own subfolders are its runs), sorted."""
    if (folder / "study.json").is_file():
        return [folder]
    roots: list[pathlib.Path] = []
    for path in sorted(folder.rglob("study.json"), key=lambda p: (len(p.parts), p)):  # outer roots first
        if not any(r in path.parents for r in roots):
            roots.append(path.parent)
    return sorted(roots)


def _stored_setup(study, stored: dict, root: pathlib.Path):
    """The setup that ``stored`` (a ``study.json``) records, rebuilt on one of the study's
    named setups (the one of the same name or config first); CliError if none takes it."""
    from jaxnorm.study import restore_setup

    given = stored.get("setup") or {}
    first = [study.setups[k] for k in (given.get("name"), given.get("config"), root.name) if isinstance(k, str) and k in study.setups]
    for base in [*first, *study.setups.values()]:
        try:
            setup = restore_setup(base, given)
        except (TypeError, ValueError, KeyError):
            continue
        now = json.loads(json.dumps(dataclasses.asdict(setup), default=str))  # as study.json stores it
        if all(now.get(k) == v for k, v in given.items() if k in now):
            return setup
    raise CliError(f"{root / 'study.json'} records a setup that no setup of the {study.name!r} study takes; "
                   f"redraw it with the version of the study that trained it.")


def _report_root(root: pathlib.Path, studies: dict[str, StudyEntry]) -> str:
    from jaxnorm.study import read_study

    stored = read_study(root)
    name = stored.get("study") if isinstance(stored, dict) else None
    if not isinstance(name, str):
        raise CliError(f"{root / 'study.json'} names no study.")
    if name not in studies:
        known = f"installed: {', '.join(studies)}" if studies else _NOT_INSTALLED
        raise CliError(f"{root / 'study.json'} is the {name!r} study, which is not installed ({known}).")
    study = studies[name].load()
    return study.analyze(_stored_setup(study, stored, root), root) or ""


def report_main(argv: Sequence[str]) -> int:
    """``jaxnorm report DIR`` (module docstring). Each study root is reported even when
    another fails (its error is printed and the status is 2)."""
    parser = argparse.ArgumentParser(prog="jaxnorm report", description=COMMANDS["report"])
    parser.add_argument("dir", metavar="DIR", help="a study root (with study.json), a folder of them, or any folder of runs")
    parser.add_argument("--debug", action="store_true", help="re-raise errors with their traceback")
    args = parser.parse_args(argv)
    from jaxnorm.study import USER_ERRORS, cli_logging

    folder = pathlib.Path(args.dir)
    status = 0
    try:
        with cli_logging():
            if not folder.is_dir():
                raise CliError(f"{folder} is not a folder.")
            roots = _study_roots(folder)
            if not roots:
                return _report_plain(folder)
            studies = _studies()
            for root in roots:
                try:
                    verdict = _report_root(root, studies)
                except (*USER_ERRORS, KeyboardInterrupt) as e:
                    if args.debug or isinstance(e, KeyboardInterrupt):
                        raise
                    status = _print_error(f"{parser.prog} {root}", e)
                    continue
                print(f"{root}: {verdict}" if verdict else f"{root}:")
                print(f"  plots and summary.md in {root / 'plots'}")
            outside = _runs_outside(folder, roots)
            if outside:
                print(f"not reported: {len(outside)} run{'s' if len(outside) != 1 else ''} outside the study roots, in {', '.join(outside)} "
                      "(`jaxnorm report` on such a folder writes the generic report)")
    except (*USER_ERRORS, KeyboardInterrupt) as e:
        if args.debug:
            raise
        return _print_error(parser.prog, e)
    return status


def _runs_outside(folder: pathlib.Path, roots: Sequence[pathlib.Path]) -> list[str]:
    """The folders (relative to ``folder``, one entry per run) of the run folders below
    ``folder`` that lie in none of ``roots``."""
    runs = [p.parent for p in sorted(folder.rglob("config.json"))]
    return [(r.relative_to(folder).as_posix() or ".") for r in runs if not any(root == r or root in r.parents for root in roots)]


def _report_plain(folder: pathlib.Path) -> int:
    from jaxnorm.analysis.report import write_report
    from jaxnorm.analysis.runs import find_runs

    runs = find_runs(folder, include_empty=True)
    if not runs:
        raise CliError(f"no runs and no study.json under {folder}; nothing to report.")
    write_report(folder)
    print(f"{len(runs)} runs; plots and summary.md in {folder / 'plots'}")
    return 0


def study_main(name: str, argv: Sequence[str]) -> int:
    """``jaxnorm <name> [args]``: the study's shared command line under ``jaxnorm <name>``."""
    studies = _studies()
    if not studies:
        raise CliError(f"no study {name!r}: {_NOT_INSTALLED}.")
    if name not in studies:
        raise CliError(f"unknown study or command {name!r} (studies: {', '.join(studies)}; commands: {', '.join(COMMANDS)}).")
    from jaxnorm.study import main as shared_main

    return shared_main(studies[name].load(), list(argv), prog=f"jaxnorm {name}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``jaxnorm`` command (module docstring); ``argv`` defaults to ``sys.argv[1:]``.
    Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        try:
            sys.stdout.write(_overview(_studies()))
        except (ValueError, OSError) as e:
            return _print_error("jaxnorm", e)
        return 0
    command, rest = argv[0], argv[1:]
    handlers: dict[str, Callable[[Sequence[str]], int]] = {"runs": runs_main, "report": report_main}
    if command in handlers:
        return handlers[command](rest)
    if command.startswith("-"):
        return _print_error("jaxnorm", CliError(f"unknown option {command!r}; `jaxnorm --help` lists the studies and commands."))
    try:
        return study_main(command, rest)
    except CliError as e:  # raised before the study's own command line runs (which reports its own errors)
        return _print_error("jaxnorm", e)


if __name__ == "__main__":
    raise SystemExit(main())
