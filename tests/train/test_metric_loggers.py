"""TrainConfig.loggers: TensorBoard event files read back by an independent reader (our own
TFRecord framing, CRC32C and protobuf decoding), W&B calls recorded by a fake module, the
validation errors, bookkeeping on resume, and a study's --log flag."""

from __future__ import annotations

import json
import math
import struct
import sys
import types

import jax
import jax.numpy as jnp
import pytest

import jaxnorm.study as study_module
from jaxnorm.results import RunDir, read_jsonl
from jaxnorm.study import main, run_study
from jaxnorm.train import TrainConfig, fit, fit_many
from jaxnorm.train.metric_loggers import RunLoggers, scalars_of
from tests.test_study import ToySetup, ToyStudy
from tests.train.helpers import fit_killed_at, tiny_config



# ------------------------------------------------------- an independent event-file reader


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli, reflected
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF  # TFRecord's mask


def test_the_crc_reader_is_crc32c():
    assert _masked_crc32c(b"") == 0xA282EAD8  # crc32c("") = 0: only the mask's constant
    crc = 0xE3069283  # CRC-32C of b"123456789" (RFC 3720's check value), masked by hand
    assert _masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _records(path) -> list[bytes]:
    """TFRecord framing: uint64 length, its masked CRC32C, the payload, the payload's."""
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        header = data[i : i + 8]
        (n,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[i + 8 : i + 12])[0] == _masked_crc32c(header)
        payload = data[i + 12 : i + 12 + n]
        assert struct.unpack("<I", data[i + 12 + n : i + 16 + n])[0] == _masked_crc32c(payload)
        out.append(payload)
        i += 16 + n
    return out


def _varint(buf: bytes, i: int):
    shift = value = 0
    while True:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not b & 0x80:
            return value, i


def _fields(buf: bytes):
    """(field number, value) pairs of a protobuf message (wire types 0, 1, 2, 5)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise AssertionError(f"wire type {wire}")
        yield key >> 3, value


def read_scalars(logdir) -> dict:
    """``{(tag, step): float32 value}`` of every event file in ``logdir``, read in name
    order as TensorBoard does; a SessionLog START at step p (tensorboard's purge) hides
    the scalars of earlier files at steps >= p. Event: step = 2, summary = 5, session_log
    = 7; Summary.value = 1; Value: tag = 1, simple_value = 2; SessionLog.status = 1."""
    out: dict = {}
    files = sorted(logdir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {logdir}"
    for path in files:
        for payload in _records(path):
            fields = list(_fields(payload))
            step = next((v for f, v in fields if f == 2), 0)
            for f, v in fields:
                if f == 7 and dict(_fields(v)).get(1) == 1:  # SessionLog.START
                    out = {k: x for k, x in out.items() if k[1] < step}
                if f == 5:
                    for g, value in _fields(v):
                        tag_fields = dict(_fields(value)) if g == 1 else {}
                        if 2 in tag_fields:  # a simple_value (text summaries carry a tensor)
                            out[(tag_fields[1].decode(), step)] = struct.unpack("<f", tag_fields[2])[0]
    return out


# --------------------------------------------------------------- what metrics.jsonl says


class ParamNorm:
    """A metrics-sink observer: the parameters' norm, with an integer annotation (a
    constant, not a metric)."""

    name, every, sink = "pnorm", 2, "metrics"
    annotations = {"layers": 3}

    def __call__(self, state):
        return {"norm": jnp.sqrt(sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in jax.tree.leaves(state.params)))}


def expected_scalars(lines) -> dict:
    """The tags the docs promise, written out from metrics.jsonl directly."""
    out = {}
    for m in lines:
        if m["kind"] == "train":
            out.update({(f"train/{k}", m["step"]): m[k] for k in ("loss", "ce", "acc")})
        elif m["kind"] == "eval":
            out.update({(f"eval/{m['split']}/{k}", m["step"]): m[k] for k in ("loss", "acc")})
        elif m["kind"] == "pnorm":
            out[("pnorm/norm", m["step"])] = m["norm"]
    return out


def assert_same_scalars(events: dict, lines) -> None:
    want = expected_scalars(lines)
    assert set(events) == set(want)  # no scalar missing, none extra (no step/epoch/n/layers)
    for key, value in want.items():
        # float64 -> float32 rounds to nearest: relative error <= 2^-24.
        assert abs(events[key] - value) <= 2.0**-24 * abs(value), (key, events[key], value)


def _cfg(tmp_path, **changes):
    return tiny_config(tmp_path, **{"max_steps": 12, "log_every_steps": 5, **changes})


# ---------------------------------------------------------------------------- TensorBoard


def test_tensorboard_events_hold_each_runs_metrics_jsonl_numbers(tmp_path):
    a = _cfg(tmp_path, name="a", loggers=("tensorboard",))
    b = a.replace(name="b", learning_rate=0.05, seed=1, loggers=())  # trained together; loggers are per run
    ra, rb = fit_many([a, b], strategy="loop", observers=[ParamNorm()], progress=False)
    lines = read_jsonl(ra.run_dir / "metrics.jsonl")
    assert {m["kind"] for m in lines} == {"train", "eval", "pnorm"} and any(m["step"] == 0 for m in lines)
    events = read_scalars(ra.run_dir / "tensorboard")
    assert_same_scalars(events, lines)
    assert {s for t, s in events if t == "train/loss"} == {5, 8, 10, 12}  # every sync, epoch ends included
    assert lines != read_jsonl(rb.run_dir / "metrics.jsonl")  # run a's own numbers, not b's
    assert sorted(p.name for p in rb.run_dir.iterdir()) == ["checkpoints", "config.json", "metrics.jsonl", "status.json"]


def test_logging_switched_on_at_resume_keeps_the_identity_and_replays_the_history(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    fit_killed_at(cfg, 10, monkeypatch, observers=[ParamNorm()])  # checkpoint at step 8 (end of epoch 0)
    r = fit(cfg.replace(loggers=("tensorboard",)), observers=[ParamNorm()], progress=False)  # accepted: bookkeeping
    assert r.status == "finished" and json.loads((r.run_dir / "config.json").read_text())["loggers"] == ["tensorboard"]
    assert_same_scalars(read_scalars(r.run_dir / "tensorboard"), read_jsonl(r.run_dir / "metrics.jsonl"))


# ------------------------------------------------------------------------------------ W&B


class _FakeRun:
    def __init__(self, kwargs):
        self.init_kwargs, self.rows, self.summary, self.exit_code = kwargs, [], {}, None

    def log(self, data, step=None):
        """As W&B: a row per step; a call at the current step adds to its row."""
        assert step is not None and (not self.rows or step >= self.rows[-1][0]), "steps never go back"
        if self.rows and step == self.rows[-1][0]:
            self.rows[-1][1].update(data)
        else:
            self.rows.append((step, dict(data)))

    def finish(self, exit_code=None):
        self.exit_code = exit_code


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.ModuleType("wandb")
    module.runs = []

    def init(**kwargs):
        module.runs.append(_FakeRun(kwargs))
        return module.runs[-1]

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    return module


def test_a_resumed_run_continues_its_sinks(tmp_path, monkeypatch, fake_wandb):
    """TensorBoard hides the interrupted attempt's events after the checkpoint; W&B
    continues the same run (same id), sending only the steps after the checkpoint."""
    cfg = _cfg(tmp_path, loggers=("tensorboard", "wandb"), log_every_steps=3)
    monkeypatch.setenv("WANDB_PROJECT", "norms")
    fit_killed_at(cfg, 9, monkeypatch, observers=[ParamNorm()])  # syncs at 3, 6, 8, 9; checkpoint at 8
    run_dir = tmp_path / "test" / "run"
    logdir = run_dir / "tensorboard"
    assert ("train/loss", 9) in read_scalars(logdir)  # written and flushed by the killed attempt
    first = fake_wandb.runs[0]
    run_id = json.loads((run_dir / "wandb_id.json").read_text())["id"]
    assert first.init_kwargs == dict(
        project="norms", id=run_id, resume="allow", dir=str(run_dir), name="test/run", group="test",
        config=cfg.to_dict(), reinit="create_new",
    )  # fmt: skip  (no mode=: WANDB_MODE is left to wandb)
    assert first.exit_code == 1  # killed: a failed run
    # Resumed from step 8 with other syncs (10, 12): the attempt's step 9 is gone from
    # metrics.jsonl, and TensorBoard is told to hide it (a purge from step 9).
    monkeypatch.delenv("WANDB_PROJECT")
    r = fit(cfg.replace(log_every_steps=5), observers=[ParamNorm()], progress=False)
    lines = read_jsonl(r.run_dir / "metrics.jsonl")
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2  # the first attempt's file kept
    assert_same_scalars(read_scalars(logdir), lines)
    second = fake_wandb.runs[1]
    assert second.init_kwargs["id"] == run_id and second.init_kwargs["project"] == "jaxnorm" and second.exit_code == 0
    want = {}
    for (tag, step), value in expected_scalars(lines).items():
        want.setdefault(step, {})[tag] = value
    assert second.rows == [(s, want[s]) for s in sorted(want) if s > 8]
    assert [s for s, _ in first.rows] == [s for s in sorted(want) if s <= 8] + [9]


def test_wandb_sink_merges_a_steps_lines_and_keeps_the_divergence_as_summary(tmp_path, fake_wandb):
    cfg = TrainConfig(loggers=("wandb",), results_dir=str(tmp_path))
    run = RunDir(tmp_path / "adhoc" / "run")
    run.root.mkdir(parents=True)
    loggers = RunLoggers(cfg, run)
    loggers.open(0)  # nothing stored yet: nothing replayed
    loggers.write([
        {"kind": "train", "step": 6, "epoch": 0, "loss": 2.0, "ce": 2.0, "acc": 0.5, "steps": 3},
        {"kind": "pnorm", "step": 4, "norm": 3.0, "layers": 3},
        {"kind": "pnorm", "step": 6, "norm": 3.5, "layers": 3},
        {"kind": "divergence", "epoch": 0, "step": 7, "reason": "non-finite loss (nan) at step 7"},
    ])  # fmt: skip
    loggers.close(failed=False)
    (wb,) = fake_wandb.runs
    assert wb.rows == [(4, {"pnorm/norm": 3.0}), (6, {"train/loss": 2.0, "train/ce": 2.0, "train/acc": 0.5, "pnorm/norm": 3.5})]
    assert wb.summary == {"divergence": "non-finite loss (nan) at step 7"} and wb.exit_code == 0


def test_an_inactive_runs_loggers_write_nothing(tmp_path, fake_wandb):
    """A process other than 0 of a multi-process run: process 0 writes the files."""
    cfg = TrainConfig(loggers=("tensorboard", "wandb"), results_dir=str(tmp_path))
    run = RunDir(tmp_path / "adhoc" / "run")
    run.root.mkdir(parents=True)
    loggers = RunLoggers(cfg, run, active=False)
    loggers.open(0)
    loggers.write([{"kind": "train", "step": 1, "loss": 1.0}])
    loggers.close()
    assert list(run.root.iterdir()) == [] and fake_wandb.runs == []


def test_divergence_reaches_the_sinks_as_text():
    assert scalars_of({"kind": "divergence", "epoch": 0, "step": 7, "reason": "non-finite loss (nan) at step 7"}) == (
        7, {}, {"divergence": "non-finite loss (nan) at step 7"},
    )  # fmt: skip
    assert scalars_of({"kind": "bn_eval", "step": 4, "split": "test", "n": 256, "acc": 0.5, "etas": [0.1]}) == (4, {"bn_eval/acc": 0.5}, {})
    assert scalars_of({"kind": "eval", "split": "test", "epoch": 0, "step": 3, "loss": math.inf, "acc": 0.25, "n": 9}) == (
        3, {"eval/test/loss": math.inf, "eval/test/acc": 0.25}, {},
    )  # fmt: skip


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "loggers, message",
    [
        (("tensorbord",), r"TrainConfig.loggers: unknown logger 'tensorbord'; known: \['tensorboard', 'wandb'\]"),
        ("tensorboard", r"TrainConfig.loggers must be a tuple of names"),
        (("wandb", "wandb"), r"TrainConfig.loggers names a logger twice"),
    ],
)
def test_bad_logger_names_are_refused(loggers, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(loggers=loggers)


def test_loggers_survive_config_json():
    cfg = TrainConfig(loggers=["wandb", "tensorboard"])
    assert cfg.loggers == ("wandb", "tensorboard")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("name, package", [("tensorboard", "tensorboardX"), ("wandb", "wandb")])
def test_a_missing_package_is_refused_before_anything_is_written(tmp_path, monkeypatch, name, package):
    monkeypatch.setitem(sys.modules, package, None)  # import raises ImportError
    with pytest.raises(ValueError, match=rf"{name!r} needs the {package} package.*pip install 'jaxnorm\[log\]'"):
        fit(_cfg(tmp_path, loggers=(name,)), progress=False)
    assert not (tmp_path / "test").exists()


# -------------------------------------------------------------------------------- studies


def test_run_study_adds_the_loggers_to_every_config(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(study_module, "fit_many", lambda configs, **kw: seen.extend(configs) or [])
    run_study(ToyStudy(), ToySetup(), seeds=[0, 1], results=str(tmp_path), progress=False, loggers=["tensorboard"])
    assert len(seen) == 4 and all(c.loggers == ("tensorboard",) for c in seen)
    seen.clear()
    run_study(ToyStudy(), ToySetup(), seeds=[0], results=str(tmp_path), progress=False)
    assert seen and all(c.loggers == () for c in seen)


def test_the_log_flag_reaches_run_study(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(study_module, "run_study", lambda *a, **kw: calls.append(kw))
    main(ToyStudy(), ["--no-compile-cache", "--results", str(tmp_path), "--no-progress", "--log", "tensorboard", "wandb"])
    assert calls[0]["loggers"] == ["tensorboard", "wandb"]
    main(ToyStudy(), ["--no-compile-cache", "--results", str(tmp_path), "--no-progress"])
    assert calls[1]["loggers"] == []


def test_the_log_flag_errors_are_one_line(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        main(ToyStudy(), ["--no-compile-cache", "--results", str(tmp_path), "--log", "tensorbord"])
    assert e.value.code == 2 and "invalid choice: 'tensorbord'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main(ToyStudy(), ["--no-compile-cache", "--results", str(tmp_path), "--no-progress", "--log", "wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'jaxnorm[log]'" in err
    assert not (tmp_path / "toy").exists()  # refused before study.json
