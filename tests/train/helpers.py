"""Small configs shared by the training tests (offline digits, tiny models)."""

import jax
import numpy as np
import pytest

import jaxnorm.train.loop as fit_module
from jaxnorm.train import TrainConfig, fit


def tiny_config(tmp_path, **changes) -> TrainConfig:
    """An MLP with BN on 256 digits: 8 steps per epoch, compiles in about a second."""
    base = TrainConfig(
        dataset="digits",
        model="mlp",
        model_kwargs={"depth": 3, "width": 32},
        norm="bn_gamma_beta",
        batch_size=32,
        epochs=2,
        learning_rate=0.1,
        momentum=0.9,
        train_subset=256,
        log_every_steps=3,
        record_every_steps=5,
        eval_batch_size=128,
        results_dir=str(tmp_path),
        study="test",
        name="run",
    )
    return base.replace(**changes)


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves((state.params, state.batch_stats, state.opt_state))]


def max_abs_diff(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(leaves(a), leaves(b)))


def max_rel_diff(a, b) -> float:
    """Leafwise ``max|a - b| / max|b|``, the worst leaf: rounding differences scale with
    each leaf's magnitude (parameters, running variances and momentum traces differ)."""
    return max(float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)) for x, y in zip(leaves(a), leaves(b)))


def bitwise_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))


class Killed(KeyboardInterrupt):
    """What ``fit_killed_at`` raises: a kill that is not a signal (the run is 'failed')."""


def fit_killed_at(cfg, kill_step, monkeypatch, **fit_kwargs):
    """Runs ``fit`` and kills it at the first host sync at or after ``kill_step``."""
    real_sync = fit_module._Loop.sync

    def dying_sync(self, step, epoch):
        synced = real_sync(self, step, epoch)
        if step >= kill_step:
            raise Killed(f"killed at step {step}")
        return synced

    with monkeypatch.context() as m:
        m.setattr(fit_module._Loop, "sync", dying_sync)
        with pytest.raises(Killed):
            fit(cfg, progress=False, **fit_kwargs)
