"""Many runs in one compiled program equal the same runs trained alone."""

import numpy as np
import pytest

from jaxnorm.train import fit, fit_many, read_npz
from jaxnorm.train.multi_run import map_over_runs, resolve_strategy
from tests.train.helpers import max_abs_diff, max_rel_diff, tiny_config

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def singles(tmp_path_factory):
    root = tmp_path_factory.mktemp("singles")
    return [fit(tiny_config(root, name=f"s{s}", seed=s), progress=False) for s in SEEDS]


@pytest.mark.parametrize("strategy", ["vmap", "map", "loop"])
def test_each_run_equals_its_single_run(tmp_path, singles, strategy):
    runs = fit_many([tiny_config(tmp_path, name=f"m{s}", seed=s) for s in SEEDS], strategy=strategy, progress=False)
    for single, many in zip(singles, runs):
        # Every strategy compiles the step into another program than the single run's
        # (batched kernels for vmap, a while-loop body for map, three inlined copies for
        # loop), so XLA may tile and vectorize its sums differently (per instruction set
        # too): equal up to float32 reassociation, not bitwise. One step's sums have at
        # most 64 terms (the 8x8 inputs of dense1; batches of 32), worst case 64·u ≈ 4e-6
        # of their scale, typically √64·u ≈ 5e-7; over 16 momentum-SGD steps the
        # perturbation stays at that level (measured 3e-7 of a leaf's scale for vmap, 0
        # for map/loop, on an AVX-512 Xeon). 1e-5 of each leaf's scale is 30x that, while
        # a wrong seed, data order or run slice moves a state by far more (two seeds:
        # > 1e-3 absolute on leaves of scale ~1, asserted below).
        assert max_rel_diff(many.state, single.state) < 1e-5
        a, b = read_npz(single.run_dir / "trajectories.npz"), read_npz(many.run_dir / "trajectories.npz")
        assert a.keys() == b.keys()
        np.testing.assert_allclose(a["gamma_beta/norm1/gamma"], b["gamma_beta/norm1/gamma"], atol=1e-5)
        sl = [m["loss"] for m in single.metrics if m["kind"] == "train"]
        ml = [m["loss"] for m in many.metrics if m["kind"] == "train"]
        np.testing.assert_allclose(ml, sl, rtol=1e-5)
    assert runs[0].traces["train_step"] == 1
    assert max_abs_diff(runs[0].state, runs[1].state) > 1e-3  # different seeds, different runs


def test_runs_must_differ_only_in_seed_and_name(tmp_path):
    with pytest.raises(ValueError, match=r"also differs in \['nesterov'\]"):
        fit_many([tiny_config(tmp_path, name="a"), tiny_config(tmp_path, name="b", nesterov=True)])
    with pytest.raises(ValueError, match="unique"):
        fit_many([tiny_config(tmp_path, seed=0), tiny_config(tmp_path, seed=1)])
    with pytest.raises(ValueError, match="at least one"):
        fit_many([])


def test_one_diverging_run_does_not_stop_the_others(tmp_path):
    # A learning rate on the edge: seed-dependent divergence is hard to arrange, so make
    # the runs identical but check the bookkeeping on a run that diverges alongside.
    runs = fit_many(
        [tiny_config(tmp_path, name=f"d{s}", seed=s, learning_rate=1e4, momentum=0.0) for s in (0, 1)],
        strategy="vmap",
        progress=False,
    )
    assert all(r.status == "diverged" for r in runs)
    assert all(r.metrics[-1]["kind"] == "divergence" for r in runs)


def test_strategy_resolution():
    assert resolve_strategy("auto", 1) == "loop"
    assert resolve_strategy("vmap", 4) == "vmap"
    with pytest.raises(ValueError, match="unknown multi-run strategy"):
        resolve_strategy("pmap", 2)
    with pytest.raises(ValueError, match="unknown multi-run strategy"):
        map_over_runs(lambda x: x, "pmap", (0,), 2)


def test_the_five_ablation_variants_train_as_one_program(tmp_path):
    from jaxnorm.layers import ABLATION_VARIANTS

    base = tiny_config(tmp_path, model="convnet", model_kwargs={"depth": 4, "width": 8})
    many = fit_many([base.replace(norm=v, name=f"m_{v}") for v in ABLATION_VARIANTS], strategy="vmap", progress=False)
    for v, r in zip(ABLATION_VARIANTS, many):
        single = fit(base.replace(norm=v, name=f"s_{v}"), progress=False)
        # Same function and gradients; the superset's extra (switched-off) parameters get
        # exactly zero or rounding-level gradients, so float32 rounding is all that differs.
        ls = [m["loss"] for m in single.metrics if m["kind"] == "train"]
        lm = [m["loss"] for m in r.metrics if m["kind"] == "train"]
        np.testing.assert_allclose(lm, ls, rtol=1e-5, atol=1e-6)
        for layer, leaves in single.state.params.items():
            for name, a in leaves.items():
                np.testing.assert_allclose(np.asarray(r.state.params[layer][name]), np.asarray(a), atol=1e-5)
        # The switched-off γ/β never moved, and are not written as trajectories.
        for layer, leaves in r.state.params.items():
            if layer.startswith("norm") and v != "vanilla":
                if "gamma" not in v:
                    np.testing.assert_array_equal(np.asarray(leaves["scale"]), 1.0)
                if "beta" not in v:
                    np.testing.assert_array_equal(np.asarray(leaves["bias"]), 0.0)
        a, b = read_npz(single.run_dir / "trajectories.npz"), read_npz(r.run_dir / "trajectories.npz")
        assert sorted(a) == sorted(b)
        status = __import__("json").loads((r.run_dir / "status.json").read_text())
        assert status["program"] == {"strategy": "vmap", "runs": 5, "superset": "bn_ablation"}


def test_mixing_non_ablation_norms_is_refused(tmp_path):
    with pytest.raises(ValueError, match="only among the ablation variants"):
        fit_many([tiny_config(tmp_path, name="a", norm="bn"), tiny_config(tmp_path, name="b", norm="layer")])


def test_the_superset_with_deepobs_l2_equals_each_variants_own_run(tmp_path):
    """l2_scope='all_but_bias' decays γ; in the superset a variant without γ still holds one
    (switched off, used as 1). It must add nothing to that run's L2 term nor move: the
    losses are the variant's own network's (rounding as in the test above) and the γ of
    bn stays exactly 1."""
    base = tiny_config(tmp_path, max_steps=6, weight_decay=0.05, l2_scope="all_but_bias", checkpoint_every_epochs=0)
    many = fit_many([base.replace(norm=v, name=f"m_{v}") for v in ("bn", "bn_gamma")], strategy="vmap", progress=False)
    for v, r in zip(("bn", "bn_gamma"), many):
        single = fit(base.replace(norm=v, name=f"s_{v}"), progress=False)
        losses = lambda run: [m["loss"] for m in run.metrics if m["kind"] == "train"]
        np.testing.assert_allclose(losses(r), losses(single), rtol=1e-5, atol=1e-6)
    assert all(np.all(np.asarray(many[0].state.params[k]["scale"]) == 1.0) for k in many[0].state.params if k.startswith("norm"))
