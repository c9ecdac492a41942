"""``StopWhen`` / ``GroupStop`` (jaxnorm.observers.stopping): a run group that ends once every
run has met its rule, in fit_many, and the rules' state rebuilt from stored lines (resume)."""

from __future__ import annotations

import json

import pytest

from jaxnorm.observers.stopping import GroupStop, StopWhen
from jaxnorm.observers.weight_norms import WeightNorms
from jaxnorm.train import fit_many
from tests.train.helpers import tiny_config


def _moved_or_four(records):
    """Done once a kernel's norm moved (a run that learns, at its first record
    after step 0) or four records were seen (one that does not: at step 6 with records every 2)."""
    norms = [k for k, v in records[0].items() if isinstance(v, float) and k != "step"]
    return any(records[-1][k] != records[0][k] for k in norms) or len(records) >= 4


def test_the_group_ends_when_every_run_met_its_rule(tmp_path):
    """lr 0.1 meets the rule at step 2, lr 1e-30 (no float32 kernel entry of size ~0.1
    moves by 1e-30·g: its norms stay bitwise the same) at step 6 (records every 2 steps, a host sync
    every 2): the group ends at step 6 of 16, both runs finished there, with their
    stop_rule lines, an evaluation and a checkpoint at step 6; the run that met its rule
    first went on recording with the others."""
    # The smallest program that has everything (a kernel, an evaluation, a checkpoint): the compile is the cost.
    base = tiny_config(tmp_path, model_kwargs={"depth": 2, "width": 8}, norm="vanilla", train_subset=64, batch_size=8,
                       momentum=0.0, log_every_steps=2, checkpoint_every_epochs=10, eval_splits=("test",))
    configs = [base.replace(name="moving", learning_rate=0.1), base.replace(name="still", learning_rate=1e-30)]
    obs = StopWhen(WeightNorms(every=2), _moved_or_four)
    assert (obs.name, obs.every, obs.sink) == ("weight_norms", 2, "metrics") and not hasattr(obs, "init_carry")
    moving, still = fit_many(configs, observers=[obs], progress=False)
    for r in (moving, still):
        assert (r.status, r.step) == ("finished", 6)
        status = json.loads((r.run_dir / "status.json").read_text())
        assert (status["status"], status["step"], status["total_steps"]) == ("finished", 6, 16)
        assert [m["step"] for m in r.metrics if m["kind"] == "weight_norms"] == [0, 2, 4, 6]
        assert [m["step"] for m in r.metrics if m["kind"] == "eval"] == [6]
        assert sorted(int(p.name) for p in (r.run_dir / "checkpoints").iterdir() if p.name.isdigit()) == [6]
    assert [m["step"] for m in moving.metrics if m["kind"] == "stop_rule"] == [2]
    assert [m["step"] for m in still.metrics if m["kind"] == "stop_rule"] == [6]


def test_group_stop_is_rebuilt_from_stored_lines():
    """A resumed group: a run whose stored lines hold a stop_rule line is done; another's
    rule is consulted at its next lines on the whole stored history (as it would have
    been without the interruption), and writes its stop line then."""
    rule = lambda recs: len(recs) >= 3
    stop = GroupStop([StopWhen(WeightNorms(every=1), rule)], 2)
    rec = lambda s: {"kind": "weight_norms", "step": s, "a": 1.0}
    stop.start([[rec(0), rec(1), {"kind": "stop_rule", "step": 1}], [rec(0), rec(1), {"kind": "train", "step": 1}]])
    assert stop.done == [True, False] and not stop.ended([None, None])
    lines = [rec(2)]
    stop.see(1, lines)
    assert stop.done == [True, True] and lines[-1] == {"kind": "stop_rule", "step": 2, "observer": "weight_norms"}
    assert stop.ended([None, None]) and GroupStop([WeightNorms(every=1)], 1).ended([None]) is False
    assert stop.ended([{"step": 3}, None])  # diverged or done


def test_bad_wrapping_is_refused():
    class Traj:
        name, every, sink = "t", 1, "trajectories"

    with pytest.raises(ValueError, match="sink 'metrics'"):
        StopWhen(Traj(), lambda r: True)
    with pytest.raises(ValueError, match="callable"):
        StopWhen(WeightNorms(every=1), 3)
