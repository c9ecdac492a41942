"""Readers and reports on damaged or incomplete run folders (issue 13): malformed
metric lines, a ``running`` status whose writer is gone, runs that did not finish or
recorded nothing, stale plots, and a target that chance-level runs would "reach"."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings

import pytest

from jaxnorm.analysis import find_runs, summarize, summary_markdown, write_report
from jaxnorm.analysis.plotting import fresh_report_dir
from jaxnorm.analysis.summary import NUM_CLASSES, base_dataset
from jaxnorm.results import RunDir, read_jsonl, read_status, write_json

from .synthetic import write_run


def _lines(path, *lines):
    path.write_text("".join(lines))
    return path


# --- A: read_jsonl -------------------------------------------------------------------


def test_a_malformed_middle_line_is_skipped_with_a_warning_and_reading_goes_on(tmp_path):
    path = _lines(tmp_path / "metrics.jsonl", '{"step": 1}\n', '{"step": 2, "lo\n', '{"step": 3}\n')
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: line 2 is not valid JSON"):
        assert read_jsonl(path) == [{"step": 1}, {"step": 3}]


def test_a_a_cut_short_last_line_is_ignored_silently(tmp_path):
    path = _lines(tmp_path / "metrics.jsonl", '{"step": 1}\n', "\n", '{"step": 2}\n', '{"step": 3, "lo')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_a_a_complete_but_malformed_last_line_is_damage_too(tmp_path):
    path = _lines(tmp_path / "metrics.jsonl", '{"step": 1}\n', "[1, 2]\n", "not json\n")
    with pytest.warns(UserWarning) as record:
        assert read_jsonl(path) == [{"step": 1}]
    assert ["line 2" in str(w.message) for w in record] == [True, False] and "line 3" in str(record[1].message)


def test_a_the_summary_keeps_the_records_after_a_damaged_line(tmp_path):
    run = write_run(tmp_path / "bn", "bn", 0, test=[0.5, 0.9, 0.99])
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:2] + ['{"kind": "eval", "spl\n'] + lines[2:]))
    with pytest.warns(UserWarning, match="line 3"):
        (row,) = summarize(find_runs(tmp_path))
    assert row["final_test_acc"] == pytest.approx(0.99)


# --- B: read_status ------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process (reuse within the test is not a concern)
    return proc.pid


def test_b_a_running_run_whose_process_is_gone_reads_as_interrupted(tmp_path):
    write_json(tmp_path / "status.json", {"status": "running", "step": 120, "total_steps": 600, "pid": _dead_pid(),
                                          "host": socket.gethostname(), "heartbeat": time.time()})
    status = read_status(tmp_path)
    assert status["status"] == "interrupted" and status["stored_status"] == "running" and status["step"] == 120
    assert "gone" in status["writer_gone"] and read_status(RunDir(tmp_path)) == status
    assert read_status(tmp_path / "status.json") == status


def test_b_a_live_writer_on_this_host_stays_running_and_other_statuses_are_as_stored(tmp_path):
    write_json(tmp_path / "status.json", {"status": "running", "step": 3, "pid": os.getpid(), "host": socket.gethostname(),
                                          "heartbeat": 0.0})  # an old heartbeat does not matter when the pid can be checked
    assert read_status(tmp_path)["status"] == "running"
    write_json(tmp_path / "status.json", {"status": "finished", "step": 3, "pid": _dead_pid(), "host": socket.gethostname()})
    assert read_status(tmp_path) == {"status": "finished", "step": 3, "pid": json.loads((tmp_path / "status.json").read_text())["pid"],
                                     "host": socket.gethostname()}
    assert read_status(tmp_path / "nothing") == {}


def test_b_another_host_is_judged_by_its_heartbeat(tmp_path):
    now = 1_000_000.0
    write_json(tmp_path / "status.json", {"status": "running", "step": 5, "pid": 1, "host": "elsewhere.invalid", "heartbeat": now - 10})
    assert read_status(tmp_path, now=now, stale_after=60)["status"] == "running"
    status = read_status(tmp_path, now=now + 100, stale_after=60)
    assert status["status"] == "interrupted" and "elsewhere.invalid" in status["writer_gone"]


def test_b_an_old_file_without_pid_is_judged_by_the_age_of_its_files(tmp_path):
    write_json(tmp_path / "status.json", {"status": "running", "step": 0})
    _lines(tmp_path / "metrics.jsonl", '{"kind": "train", "step": 50}\n')
    assert read_status(tmp_path, stale_after=3600)["status"] == "running"  # just written
    old = time.time() - 7200
    for p in ("status.json", "metrics.jsonl"):
        os.utime(tmp_path / p, (old, old))
    assert read_status(tmp_path, stale_after=3600)["status"] == "interrupted"


# --- C: reports mark incomplete runs -------------------------------------------------


def _killed(folder, variant="bn", epochs_done=1, total=None):
    """A run killed after ``epochs_done`` of 3 epochs: status still 'running', writer gone."""
    write_run(folder, variant, 0)
    kept = [m for m in read_jsonl(folder / "metrics.jsonl") if m["epoch"] < epochs_done]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in kept))
    status = {"status": "running", "step": 10 * epochs_done, "pid": _dead_pid(), "host": socket.gethostname()}
    write_json(folder / "status.json", {**status, **({"total_steps": total} if total else {})})
    return folder


def test_c_a_killed_run_is_reported_as_interrupted_not_final(tmp_path):
    write_run(tmp_path / "vanilla", "vanilla", 0)
    _killed(tmp_path / "bn", total=30)
    runs = {r.variant: r for r in find_runs(tmp_path)}
    assert runs["bn"].state == "interrupted" and runs["bn"].state_note == "interrupted at step 10 of 30"
    assert runs["vanilla"].state_note == "finished"
    rows = {r["variant"]: r for r in summarize(list(runs.values()))}
    assert rows["bn"]["all_finished"] is False and rows["bn"]["states"] == ["interrupted at step 10 of 30"]
    md = summary_markdown(list(runs.values()))
    bn = next(line for line in md.splitlines() if line.startswith("| bn |"))
    assert "interrupted at step 10 of 30" in bn and "0.4000 †" in bn and "† not final" in md
    assert "†" not in next(line for line in md.splitlines() if line.startswith("| vanilla |"))


def test_c_without_total_steps_the_note_counts_epochs(tmp_path):
    (run,) = find_runs(_killed(tmp_path / "bn", epochs_done=2))
    assert run.state_note == "interrupted at step 20, after epoch 2 of 3"


def test_c_an_empty_run_appears_with_no_records(tmp_path):
    write_run(tmp_path / "vanilla", "vanilla", 0)
    empty = write_run(tmp_path / "bn", "bn", 0)
    (empty / "metrics.jsonl").write_text("")
    write_json(empty / "status.json", {"status": "failed", "step": 0})
    assert [r.variant for r in find_runs(tmp_path)] == ["vanilla"]  # the default still skips it
    write_report(tmp_path)
    summary = (tmp_path / "plots" / "summary.md").read_text()
    bn = next(line for line in summary.splitlines() if line.startswith("| bn |"))
    assert "no records" in bn and "2 runs, 1 not finished" in summary


def test_c_the_ablation_verdict_says_not_final(tmp_path):
    from jaxnorm.analysis.ablation import analyze_ablation

    root = tmp_path / "ablation" / "digits"
    write_json(root / "study.json", {"study": "ablation", "setup": {}, "seeds": [0]})
    write_run(root / "lr1" / "vanilla_s0", "vanilla", 0)
    _killed(root / "lr1" / "bn_s0")
    verdict = analyze_ablation(root)
    assert "bn 0.4000 (not final)" in verdict and "vanilla 0.5000," in verdict


# --- D: stale plots ------------------------------------------------------------------


def test_d_a_replot_removes_the_stale_files_of_an_earlier_report_only(tmp_path):
    write_run(tmp_path / "a", "bn", 0, lr=0.1)
    write_run(tmp_path / "b", "bn", 0, lr=1.0)
    write_report(tmp_path)
    assert (tmp_path / "plots" / "curves_lr1.png").is_file()
    (tmp_path / "plots" / "notes.txt").write_text("mine")
    (tmp_path / "plots" / "keep").mkdir()
    (tmp_path / "plots" / "keep" / "x.png").write_text("mine")
    import shutil

    shutil.rmtree(tmp_path / "b")  # the lr 1 run is gone: its curve must not survive a replot
    write_report(tmp_path)
    names = {p.name for p in (tmp_path / "plots").iterdir()}
    assert "curves_lr1.png" not in names and "curves_lr0.1.png" in names and "summary.md" in names
    assert (tmp_path / "plots" / "notes.txt").read_text() == "mine" and (tmp_path / "plots" / "keep" / "x.png").is_file()


def test_d_every_study_analysis_prepares_its_folder_with_the_shared_helper():
    import pathlib

    analysis = pathlib.Path(fresh_report_dir.__code__.co_filename).parent
    writers = [p for p in analysis.glob("*.py") if 'summary.md"' in p.read_text() or '"plots"' in p.read_text()]
    assert len(writers) >= 8
    for p in writers:
        src = p.read_text()
        assert "fresh_report_dir(" in src or p.name == "ablation.py", p.name  # ablation goes through report.write_report


# --- I: epochs to target of runs at chance --------------------------------------------


def test_i_runs_at_chance_never_reach_a_target(tmp_path):
    # what --lr-scale 1e9 wrote: two diverged runs, three "finished" at chance, one with a NaN loss
    write_run(tmp_path / "vanilla", "vanilla", 0, test=[0.1], diverge_after=0)
    write_run(tmp_path / "bn", "bn", 0, test=[0.1003], loss=[4.9e10])
    nan = write_run(tmp_path / "bn_gamma", "bn_gamma", 0, test=[0.1003], loss=[float("nan")])
    write_run(tmp_path / "bn_beta", "bn_beta", 0, test=[0.1003], loss=[6.4e7])
    rows = {r["variant"]: r for r in summarize(find_runs(tmp_path))}
    assert all(r["target"] is None and r["epochs_to_target"] is None and r["reached"] == 0 for r in rows.values())
    assert rows["bn_gamma"]["diverged"] == 1 and find_runs(nan)[0].state == "diverged"  # NaN loss, status "finished"
    md = summary_markdown(find_runs(tmp_path))
    cells = {line.split(" | ")[0][2:]: line.split(" | ")[8] for line in md.splitlines() if line.startswith("| ") and "---" not in line}
    assert cells["vanilla"] == "diverged" and cells["bn_gamma"] == "diverged" and cells["bn"] == "not reached"
    assert "no target" in md


def test_i_a_diverged_run_does_not_count_as_reaching_and_does_not_set_the_target(tmp_path):
    write_run(tmp_path / "a", "bn", 0, test=[0.5, 0.6, 0.7])
    write_run(tmp_path / "b", "bn", 1, test=[0.95], diverge_after=1)
    (row,) = summarize(find_runs(tmp_path))
    assert row["target"] == pytest.approx(0.63) and row["reached"] == 1 and row["epochs_to_target"] == 3


def test_i_the_class_counts_match_the_data_registry():
    from jaxnorm.data import DATASETS, load

    assert set(NUM_CLASSES) == {base_dataset(name) for name in DATASETS}
    assert NUM_CLASSES["digits"] == load("digits", "train").num_classes


def test_d_a_folder_the_caller_names_is_not_cleared(tmp_path):
    (tmp_path / "mine.png").write_text("mine")
    assert fresh_report_dir(tmp_path, owned=False) == tmp_path and (tmp_path / "mine.png").is_file()
    assert fresh_report_dir(tmp_path) == tmp_path and not (tmp_path / "mine.png").exists()


def test_b_read_status_takes_a_loaded_run_too(tmp_path):
    write_run(tmp_path / "a", "bn", 0)
    (run,) = find_runs(tmp_path)
    assert read_status(run) == run.status == {"status": "finished", "step": 30}
