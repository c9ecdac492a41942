"""Synthetic run folders written with the real writers of jaxnorm.results."""

from __future__ import annotations

import numpy as np

from jaxnorm.results import append_jsonl, write_json, write_npz

VARIANTS = ("vanilla", "bn", "bn_gamma", "bn_beta", "bn_gamma_beta")
# Seed-0 test accuracy per epoch; seed s adds 0.02*s except where TEST_BY_SEED says otherwise.
TEST = {
    "vanilla": [0.30, 0.40, 0.50],
    "bn": [0.40, 0.50, 0.60],
    "bn_gamma": [0.50, 0.60, 0.70],
    "bn_beta": [0.20, 0.30, 0.40],
    "bn_gamma_beta": [0.50, 0.75, 0.80],
}
TEST_BY_SEED = {("bn_gamma_beta", 1): [0.60, 0.70, 0.82]}
LAYERS = {"norm1": 4, "norm2": 3}
STEPS = np.arange(0, 25, 5)


def test_curve(variant, seed):
    return TEST_BY_SEED.get((variant, seed), [a + 0.02 * seed for a in TEST[variant]])


def train_loss(variant, seed):
    i = VARIANTS.index(variant)
    return [2.0 / (e + 1) + 0.1 * i + 0.1 * seed for e in range(3)]


def trajectories(variant, seed):
    learns = {"bn_gamma": ("gamma",), "bn_beta": ("beta",), "bn_gamma_beta": ("gamma", "beta")}.get(variant, ())
    rng = np.random.default_rng(seed)
    out = {}
    for layer, c in LAYERS.items():
        for kind in learns:
            neutral = 1.0 if kind == "gamma" else 0.0
            out[f"gamma_beta/{layer}/{kind}"] = neutral + 0.3 * rng.standard_normal((len(STEPS), c)).cumsum(0)
    if out:
        out["gamma_beta/steps"] = STEPS
    return out


def write_run(folder, variant, seed, lr=0.1, test=None, loss=None, traj=None, diverge_after=None, study="abl"):
    """Writes one run; with ``diverge_after=k`` only the first k epochs are evaluated and a
    divergence line and a diverged status follow."""
    test = test_curve(variant, seed) if test is None else test
    loss = train_loss(variant, seed) if loss is None else loss
    traj = trajectories(variant, seed) if traj is None else traj
    write_json(folder / "config.json", {"norm": variant, "learning_rate": lr, "seed": seed, "name": folder.name,
                                        "study": study, "model": "3c3d", "dataset": "cifar10", "epochs": 3})
    n = len(test) if diverge_after is None else diverge_after
    lines = []
    for e in range(n):
        step = 10 * (e + 1)
        lines.append({"kind": "train", "step": step, "epoch": e, "loss": loss[e], "ce": loss[e], "acc": 0.5, "steps": 10})
        lines.append({"kind": "eval", "split": "train_eval", "epoch": e, "step": step, "loss": loss[e], "acc": test[e] + 0.1, "n": 100})
        lines.append({"kind": "eval", "split": "test", "epoch": e, "step": step, "loss": loss[e] + 0.2, "acc": test[e], "n": 100})
    if diverge_after is not None:
        lines.append({"kind": "divergence", "epoch": n, "step": 10 * n + 3, "reason": "non-finite loss (nan)"})
    append_jsonl(folder / "metrics.jsonl", lines)
    if traj:
        write_npz(folder / "trajectories.npz", traj)
    status = "finished" if diverge_after is None else "diverged"
    write_json(folder / "status.json", {"status": status, "step": 10 * n})
    return folder


def write_study(root, lrs=(0.1,), seeds=(0, 1)):
    """Five variants x seeds x lrs, laid out like the ablation script (not relied upon)."""
    for lr in lrs:
        for v in VARIANTS:
            for s in seeds:
                write_run(root / "abl" / "3c3d" / f"lr{lr:g}" / f"{v}_s{s}", v, s, lr=lr)
    return root
