"""Freezing parameters (``TrainConfig.frozen``), γ initialization (``gamma_init``) and
the run ``tag``: frozen leaves keep their initial values bit for bit."""

import jax
import numpy as np
import pytest

from jaxnorm.train import TrainConfig, fit, fit_many
from jaxnorm.train.loop import build_model
from jaxnorm.train.optim import make_optimizer, param_paths
from jaxnorm.train.state import create_state
from tests.train.helpers import tiny_config


def _flat(params) -> dict:
    return dict(zip(param_paths(params), (np.asarray(x) for x in jax.tree.leaves(params))))


def _initial(cfg: TrainConfig, norm=None) -> dict:
    module = build_model(cfg, 10, norm=norm)
    tx = make_optimizer(cfg.learning_rate, frozen=cfg.frozen)
    return _flat(create_state(jax.random.PRNGKey(cfg.seed), module, tx, np.zeros((1, 8, 8, 1), np.float32)).params)


def test_frozen_leaves_are_bit_identical_others_move(tmp_path):
    cfg = tiny_config(tmp_path, frozen=r"^(norm1/(scale|bias)|dense2/kernel)$", weight_decay=1e-3, max_steps=5, epochs=1)
    init = _initial(cfg)
    final = _flat(fit(cfg, progress=False).state.params)
    assert set(init) == set(final)
    frozen = {"norm1/scale", "norm1/bias", "dense2/kernel"}
    for path in init:
        if path in frozen:
            assert np.array_equal(final[path], init[path]), path
        else:
            assert not np.array_equal(final[path], init[path]), path


def test_bn_only_convnet_trains_only_gamma_beta(tmp_path):
    cfg = tiny_config(tmp_path, model="convnet", model_kwargs={"depth": 3, "width": 8},
                      frozen=r"^(conv|dense)\d+/(kernel|bias)$", max_steps=4, epochs=1)
    init = _initial(cfg)
    final = _flat(fit(cfg, progress=False).state.params)
    for path in init:
        moved = not np.array_equal(final[path], init[path])
        assert moved == path.startswith("norm"), path


def test_regex_matching_nothing_lists_paths(tmp_path):
    cfg = tiny_config(tmp_path, frozen="nosuchlayer", max_steps=2)
    with pytest.raises(ValueError, match="matches no parameter") as e:
        fit(cfg, progress=False)
    assert "norm1/scale" in str(e.value) and "dense1/kernel" in str(e.value)


def test_invalid_regex_raises():
    with pytest.raises(ValueError, match="regular expression"):
        TrainConfig(frozen="norm[1-")
    with pytest.raises(ValueError, match="regular expression"):
        make_optimizer(0.1, frozen="(")


def test_gamma_init_sets_every_learned_gamma(tmp_path):
    cfg = tiny_config(tmp_path, gamma_init=0.5)
    init = _initial(cfg)
    scales = [p for p in init if p.endswith("/scale")]
    assert scales
    for p in scales:
        np.testing.assert_array_equal(init[p], 0.5)
    for p in init:
        if p.endswith("/bias") and p.startswith("norm"):
            np.testing.assert_array_equal(init[p], 0.0)
    # Without a learned γ there is no scale parameter: gamma_init changes nothing.
    assert not any(p.endswith("/scale") for p in _initial(cfg.replace(norm="bn_beta")))


def test_gamma_init_in_superset_keeps_switched_off_gamma_at_one(tmp_path):
    """In the bn_ablation superset every run holds a γ parameter (it starts at
    gamma_init), but runs whose variant has no learned γ use exactly 1: they train
    bit-identically to the same runs with gamma_init=1."""
    variants = ("bn", "bn_beta", "bn_gamma", "bn_gamma_beta")
    out = {}
    for g in (1.0, 0.5):
        base = tiny_config(tmp_path / str(g), gamma_init=g, max_steps=3, epochs=1, record_every_steps=1)
        configs = [base.replace(norm=v, name=v) for v in variants]
        out[g] = {c.norm: r for c, r in zip(configs, fit_many(configs, strategy="loop", progress=False))}
    for v in variants:
        a, b = out[1.0][v], out[0.5][v]
        losses = lambda r: [m["loss"] for m in r.metrics if m["kind"] == "train"]
        pa, pb = _flat(a.state.params), _flat(b.state.params)
        traj = np.load(b.run_dir / "trajectories.npz")
        g0 = [traj[k][0] for k in traj.files if k.endswith("/gamma")]
        if v in ("bn", "bn_beta"):
            assert losses(a) == losses(b), v
            for p in pa:
                if not p.endswith("/scale"):
                    assert np.array_equal(pa[p], pb[p]), (v, p)
            assert not g0  # γ is not recorded for variants that do not learn it
        else:
            assert losses(a) != losses(b), v
            assert g0 and all(np.array_equal(x, np.full_like(x, 0.5)) for x in g0), v


def test_config_round_trip_with_new_fields(tmp_path):
    cfg = tiny_config(tmp_path, frozen=r"^norm[1-4]/(scale|bias)$", gamma_init=0.5, tag="last_only")
    d = cfg.to_dict()
    assert d["frozen"] == r"^norm[1-4]/(scale|bias)$" and d["gamma_init"] == 0.5 and d["tag"] == "last_only"
    assert TrainConfig.from_dict(d) == cfg
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
