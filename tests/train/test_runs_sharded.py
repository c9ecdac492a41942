"""Runs spread over devices (``fit_many(strategy='shard')``) equal the same runs trained
alone; padding, data parallelism inside a run, resume, errors. 8 simulated CPU devices
(tests/conftest.py sets them up)."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jaxnorm.train.loop as fit_module
from jaxnorm.models import get_model
from jaxnorm.train import fit, fit_many, parallel, read_npz
from jaxnorm.train.multi_run import STRATEGIES, auto_strategy, default_run_devices, map_over_runs, padded_runs, resolve_strategy, stack
from jaxnorm.train.optim import make_optimizer
from jaxnorm.train.state import create_state
from jaxnorm.train.step import make_train_step
from tests.train.helpers import Killed, bitwise_equal, max_abs_diff, max_rel_diff, tiny_config

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (simulated) devices")

SEEDS = (0, 1, 2)


def small(root, **changes):
    # One eval split: fewer compiled functions, the same code paths.
    return tiny_config(root, eval_splits=("test",), **changes)


@pytest.fixture(scope="module")
def singles(tmp_path_factory):
    root = tmp_path_factory.mktemp("singles")
    return [fit(small(root, name=f"s{s}", seed=s), progress=False) for s in SEEDS]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """Three runs on two run devices: one dummy run pads the second device's share."""
    root = tmp_path_factory.mktemp("sharded")
    return root, fit_many([small(root, name=f"m{s}", seed=s) for s in SEEDS], strategy="shard", run_devices=2, progress=False)


def _assert_equal_to_singles(runs, singles):
    for single, many in zip(singles, runs):
        # The same bound as test_multi_run's for 'vmap' (each device runs the vmapped
        # step on its share): float32 reassociation inside batched kernels, at most
        # 64·u ≈ 4e-6 of a leaf's scale per step, measured 7e-8 (sharded) and 6e-7
        # (sharded + 2-way data parallel, the all-reduce reorders the batch sums) on an
        # AMD EPYC at LLVM level 0; 1e-5 is 15x the larger, while a wrong seed, data order
        # or run slice moves a state by > 1e-3 (asserted below).
        assert max_rel_diff(many.state, single.state) < 1e-5
        sl = [m["loss"] for m in single.metrics if m["kind"] == "train"]
        ml = [m["loss"] for m in many.metrics if m["kind"] == "train"]
        np.testing.assert_allclose(ml, sl, rtol=1e-5)
        se = [m for m in single.metrics if m["kind"] == "eval"]
        me = [m for m in many.metrics if m["kind"] == "eval"]
        assert [m["step"] for m in se] == [m["step"] for m in me] and se
        np.testing.assert_allclose([m["loss"] for m in me], [m["loss"] for m in se], rtol=1e-5)
    assert max_abs_diff(runs[0].state, runs[1].state) > 1e-3  # different seeds, different runs


def test_sharded_runs_equal_their_single_runs_with_a_dummy_run(singles, sharded):
    root, runs = sharded
    _assert_equal_to_singles(runs, singles)
    for single, many in zip(singles, runs):
        a, b = read_npz(single.run_dir / "trajectories.npz"), read_npz(many.run_dir / "trajectories.npz")
        assert a.keys() == b.keys()
        np.testing.assert_allclose(b["gamma_beta/norm1/gamma"], a["gamma_beta/norm1/gamma"], atol=1e-5)
        status = json.loads((many.run_dir / "status.json").read_text())
        assert status["status"] == "finished"
        assert status["program"] == {"strategy": "shard", "runs": 3, "run_devices": 2, "data_devices": 1, "dummy_runs": 1}
    assert runs[0].traces["train_step"] == 1 and runs[0].traces["evaluate"] == 1
    assert sorted(p.name for p in (root / "test").iterdir()) == ["m0", "m1", "m2"]  # the dummy writes nothing


def test_sharded_runs_with_data_parallelism_inside_each_run(tmp_path, singles):
    # 2 run devices x 2 data devices: each run's batch split over its row's two devices.
    runs = fit_many([small(tmp_path, name=f"d{s}", seed=s, num_devices=2) for s in SEEDS[:2]], strategy="shard", run_devices=2, progress=False)
    _assert_equal_to_singles(runs, singles[:2])
    status = json.loads((runs[0].run_dir / "status.json").read_text())
    assert status["program"] == {"strategy": "shard", "runs": 2, "run_devices": 2, "data_devices": 2, "dummy_runs": 0}
    assert runs[0].traces["train_step"] == 1


def test_an_interrupted_sharded_program_resumes_bit_identically(tmp_path, monkeypatch, sharded):
    _, whole = sharded
    configs = [small(tmp_path, name=f"k{s}", seed=s) for s in SEEDS]
    real_sync = fit_module._Loop.sync

    def dying_sync(self, step, epoch):
        synced = real_sync(self, step, epoch)
        if step >= 12:  # mid epoch 2; the checkpoint of step 8 is kept
            raise Killed(f"killed at step {step}")
        return synced

    with monkeypatch.context() as m:
        m.setattr(fit_module._Loop, "sync", dying_sync)
        with pytest.raises(Killed):
            fit_many(configs, strategy="shard", run_devices=2, progress=False)
    for c in configs:
        assert json.loads((tmp_path / "test" / c.name / "status.json").read_text())["status"] == "failed"
    resumed = fit_many(configs, strategy="shard", run_devices=2, progress=False)
    for r, w in zip(resumed, whole):
        # The same compiled program on the same machine: bit for bit.
        assert r.step == w.step == 16
        assert bitwise_equal(r.state, w.state)
        strip = lambda ms: [{k: v for k, v in m.items()} for m in ms]
        assert strip(r.metrics) == strip(w.metrics)


def _replica_groups(hlo: str, num_devices: int) -> list[list[int]]:
    """The device groups of every collective in compiled HLO text (explicit
    ``{{0,1},{2,3}}``, iota ``[2,2]<=[4]``, or ``{}``: all devices in one group)."""
    groups = []
    pattern = r"\b(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(?:-start)?\([^\n]*?replica_groups=(\{(?:\{[\d,]*\},?)*\}|\S+)"
    for op, spec in re.findall(pattern, hlo):
        if spec == "{}":
            groups.append(list(range(num_devices)))
        elif spec.startswith("{"):
            groups += [[int(i) for i in g.split(",") if i] for g in re.findall(r"\{([\d,]*)\}", spec[1:-1])]
        else:
            iota = re.fullmatch(r"\[(\d+),(\d+)\]<=\[(\d+)\],?", spec)
            assert iota, f"unrecognized replica_groups {spec!r} of {op}"  # a form this parser does not know: fail, not pass
            groups += np.arange(int(iota[3])).reshape(int(iota[1]), int(iota[2])).tolist()
    return groups


@pytest.mark.parametrize("data_devices", [1, 2])
def test_no_communication_between_run_devices(data_devices):
    """The compiled train step of 2 runs on a (2, d) mesh: no collective at all with
    d = 1; with d = 2 only all-reduces within a row (the run's data devices)."""
    module = get_model("mlp", norm="bn_gamma_beta", num_classes=10, depth=2, width=16)
    tx = make_optimizer(0.1, momentum=0.9)
    mesh = parallel.make_run_mesh(2, data_devices)
    runs_sh = parallel.runs_sharding(mesh)
    states = jax.device_put(stack([create_state(jax.random.PRNGKey(i), module, tx, jnp.zeros((1, 8, 8, 1))) for i in range(2)]), runs_sh)
    step = make_train_step(module, tx, batch_size=16, mean=np.zeros(1), std=np.ones(1), batch_sharding=P("data") if data_devices > 1 else None)
    fn = jax.jit(map_over_runs(step, "shard", (0, None, 0, 0, None, None), 2, mesh=mesh))
    data = parallel.put_replicated((jnp.zeros((64, 8, 8, 1)), jnp.zeros((64,), jnp.int32)), mesh)
    perm = jax.device_put(jnp.tile(jnp.arange(64, dtype=jnp.int32), (2, 1)), runs_sh)
    seeds = jax.device_put(jnp.arange(2, dtype=jnp.int32), runs_sh)
    hlo = fn.lower(states, data, perm, seeds, jnp.int32(0), jnp.int32(0)).compile().as_text()
    groups = _replica_groups(hlo, len(jax.devices()))
    rows = [sorted(d.id for d in row) for row in mesh.devices]
    if data_devices == 1:
        assert groups == []
    else:
        assert groups and all(sorted(g) in rows for g in groups), (groups, rows)
    out, metrics = fn(states, data, perm, seeds, jnp.int32(0), jnp.int32(0))
    assert out.params["dense1"]["kernel"].sharding.spec == P(parallel.RUNS_AXIS) and metrics["loss"].shape == (2,)


def test_auto_rule():
    assert auto_strategy("cpu", 8, 4) == "loop"  # simulated CPU devices share the cores
    assert auto_strategy("gpu", 1, 4) == "vmap"
    assert auto_strategy("gpu", 8, 4) == "shard"
    assert auto_strategy("tpu", 4, 2, data_devices=2) == "shard"  # two rows of two data devices
    assert auto_strategy("tpu", 3, 2, data_devices=2) == "vmap"  # one row
    assert auto_strategy("tpu", 2, 2, data_devices=2, run_devices=2) == "shard"  # asked for (then refused by the mesh)
    assert auto_strategy("gpu", 8, 1) == "loop"  # one run
    assert auto_strategy("cpu", 8, 3, run_devices=2) == "shard"  # asked for
    assert auto_strategy("cpu", 8, 3, run_devices=1) == "loop"
    assert auto_strategy("gpu", 8, 4, processes=2) == "vmap"  # 'shard' is single-process
    assert resolve_strategy("auto", 3, run_devices=2) == "shard"
    assert resolve_strategy("auto", 3, run_devices=1) == "loop"  # one row: no preference
    assert "shard" in STRATEGIES


def test_default_run_devices_and_padding():
    assert [default_run_devices(n, 4) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 3, 4, 3, 4, 3]
    assert [padded_runs(n, 3) for n in (1, 3, 4, 7)] == [3, 3, 6, 9]
    for n in range(1, 20):  # the fewest runs per row, on the fewest rows that give it
        r = default_run_devices(n, 4)
        assert 1 <= r <= 4 and -(-n // r) == -(-n // 4) and (r == 1 or -(-n // (r - 1)) > -(-n // 4))
    with pytest.raises(ValueError, match="rows >= 1"):
        default_run_devices(3, 0)


def test_bad_run_devices_are_clear_errors(tmp_path):
    configs = [small(tmp_path, name=f"e{s}", seed=s) for s in SEEDS]
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="run_devices must be an integer >= 1"):
            fit_many(configs, strategy="shard", run_devices=bad, progress=False)
    with pytest.raises(ValueError, match="run_devices must be an integer >= 1"):
        fit_many(configs, run_devices=-1, progress=False)  # 'auto' too
    with pytest.raises(ValueError, match=r"needs 10 devices, but 8 exist; use run_devices <= 4"):
        fit_many([c.replace(num_devices=2) for c in configs], strategy="shard", run_devices=5, progress=False)
    with pytest.raises(ValueError, match="needs strategy='shard'"):
        fit_many(configs, strategy="vmap", run_devices=2, progress=False)
    assert not (tmp_path / "test").exists()  # refused before any folder was written
    with pytest.raises(ValueError, match="single process; with 2 processes"):
        resolve_strategy("shard", 3, processes=2)
    assert resolve_strategy("auto", 3, processes=2) == "loop"  # on this CPU; never 'shard'
    with pytest.raises(ValueError, match="needs a run mesh"):
        map_over_runs(lambda x: x, "shard", (0,), 2)
    with pytest.raises(ValueError, match="cannot be split over 2 run devices; pad them to 4"):
        map_over_runs(lambda x: x, "shard", (0,), 3, mesh=parallel.make_run_mesh(2))
    with pytest.raises(ValueError, match="data devices"):
        parallel.make_run_mesh(2, 0)


def test_the_ablation_study_offers_every_strategy():
    import dataclasses

    from experiments import ablation

    assert ablation.STRATEGIES == ("auto",) + STRATEGIES
    setup = dataclasses.replace(ablation.STUDY.setups["digits"], strategy="shard")
    assert ablation.seeds_in_one_program(setup, 3)  # vmap on each device: a batched program
    assert not ablation.seeds_in_one_program(dataclasses.replace(setup, strategy="loop"), 3)
    with pytest.raises(ValueError, match="unknown strategy"):
        dataclasses.replace(setup, strategy="pmap")


def test_a_stateful_training_batch_observer_runs_sharded(tmp_path):
    """TrainBatchInstruments (measured inside the step, a carry per run) under 'shard'
    with a dummy run records what the same runs record under 'vmap'."""
    from jaxnorm.observers import TrainBatchInstruments

    changes = dict(norm="vanilla", model_kwargs={"depth": 3, "width": 12}, epochs=1, checkpoint_every_epochs=0, eval_splits=())
    records = {}
    for strategy, kw in (("vmap", {}), ("shard", {"run_devices": 2})):
        configs = [tiny_config(tmp_path, name=f"{strategy}{s}", seed=s, **changes) for s in SEEDS]
        runs = fit_many(configs, strategy=strategy, observers=[TrainBatchInstruments(every=3)], progress=False, **kw)
        assert runs[0].traces["train_step+instruments"] == 1
        records[strategy] = [[m for m in r.metrics if m.get("kind") == "instruments"] for r in runs]
    for a, b in zip(records["vmap"], records["shard"]):
        assert [m["step"] for m in a] == [m["step"] for m in b] == [0, 3, 6]
        for ma, mb in zip(a, b):
            # Each device vmaps its share: the kernels of 'vmap' over fewer runs. Measured
            # equal bit for bit on an AMD EPYC; 1e-4 (test_train_batch_instruments' bound for a
            # reassociated step) leaves room for another CPU's vectorization of the ratios.
            assert ma.keys() == mb.keys()
            np.testing.assert_allclose([mb[k] for k in ma if k not in ("kind", "step")], [ma[k] for k in ma if k not in ("kind", "step")], rtol=1e-4, atol=1e-7)
