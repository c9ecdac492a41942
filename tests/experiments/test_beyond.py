"""The "beyond the thesis" configs: last-layer-only γ/β, BN-only training, γ init."""

import re

import numpy as np
import pytest

from experiments import ablation
from experiments.configs import CONFIGS, get_config
from jaxnorm.analysis import find_runs
from jaxnorm.study import run_study, setup_with

EXPECT = {  # config: (tag, frozen γ/β layers)
    "digits_last_gamma_beta": ("last_only", {"norm1", "norm2", "norm3", "norm4"}),
    "digits_bn_only": ("bn_only", set()),
    "digits_gamma_init": ("gamma0.5", set()),
}


def test_registered_and_distinct():
    base = get_config("digits")
    for name, (tag, _) in EXPECT.items():
        assert name in CONFIGS
        cfg = get_config(name)
        assert cfg.tag == tag and cfg.name == name and cfg.name != base.name
        assert cfg.study == base.study and cfg.model_kwargs == base.model_kwargs
    assert get_config("digits_gamma_init").gamma_init == 0.5
    frozen = re.compile(get_config("digits_last_gamma_beta").frozen)
    assert [f"norm{i}" for i in range(1, 6) if frozen.search(f"norm{i}/scale")] == ["norm1", "norm2", "norm3", "norm4"]
    assert not frozen.search("norm5/scale") and not frozen.search("conv1/kernel")
    bn_only = re.compile(get_config("digits_bn_only").frozen)
    assert all(bn_only.search(p) for p in ("conv1/kernel", "conv5/bias", "dense6/kernel", "dense6/bias"))
    assert not any(bn_only.search(p) for p in ("norm1/scale", "norm5/bias"))


# 5 steps: γ/β are recorded every 5 steps, so the trajectories hold steps 0 and 5. Two of
# the five variants (one with γ only, one with both) keep `make test` short; every variant
# trains through the same superset program (tests/train/test_multi_run.py).
VARIANTS = ("bn_gamma", "bn_gamma_beta")


@pytest.mark.extended
@pytest.mark.parametrize("name", sorted(EXPECT))
def test_quick_run_freezes_and_tags(tmp_path, name):
    tag, frozen_layers = EXPECT[name]
    setup = setup_with(ablation.STUDY.setups[name], {"quick_steps": 5, "variants": VARIANTS}, quick=True)
    run_study(ablation.STUDY, setup, seeds=[0], results=str(tmp_path), progress=False)
    root = tmp_path / "ablation" / f"{name}-quick"
    runs = find_runs(root)
    assert sorted(r.variant for r in runs) == sorted(f"{v}+{tag}" for v in VARIANTS)
    for r in runs:
        assert r.status["status"] == "finished"
        traj = r.trajectories
        keys = [k for k in traj if re.fullmatch(r"gamma_beta/norm\d/(gamma|beta)", k)]
        if r.config["norm"] in ("bn_gamma", "bn_beta", "bn_gamma_beta"):
            assert keys
        for k in keys:
            layer = k.split("/")[1]
            series = np.asarray(traj[k])
            assert len(series) >= 2
            constant = bool(np.all(series == series[0]))
            if layer in frozen_layers:
                assert constant, (r.variant, k)
            if name == "digits_last_gamma_beta" and layer == "norm5":
                assert not constant, (r.variant, k)
            if name == "digits_bn_only":
                assert not constant, (r.variant, k)  # γ/β are what trains
            if name == "digits_gamma_init" and k.endswith("/gamma"):
                np.testing.assert_array_equal(series[0], 0.5)
