"""How much of a training-loss gap between variants is the scale of the logits.

Once a network classifies every training example correctly, its cross-entropy can fall
without any prediction changing: multiplying the logits by t > 1 lowers the loss of
every correctly ranked example. A gap in final training loss between two BatchNorm
variants that both reach 100% training accuracy can therefore be confidence (logit
scale) rather than a better fit. This module splits such a gap into the two parts.

For one run's logits ``z`` (n × K) on the training-loss set, with the per-example mean
over classes removed (cross-entropy does not see it):

* **scale** ``s = sqrt(mean_ik (z_ik − z̄_i)²)``, the RMS of the centred logits;
* **shape** ``u = (z − z̄) / s``, the logits at unit scale; the **normalized margin** is
  ``mean_i (u_iy − max_{k≠y} u_ik)`` (positive: correctly ranked);
* ``ce(t) = mean_i [logsumexp_k(t·u_ik) − t·u_iy]``, the cross-entropy of the run's
  logit directions at scale ``t``; ``ce(s)`` is the run's own loss.

Two variants are compared seed by seed (the variants of a seed start from the same
weights and see the same batches): both runs' logit directions are evaluated at the
pair's **common scale** ``s* = sqrt(s_a s_b)``. The difference ``ce_a(s*) − ce_b(s*)`` is
the part of their loss gap that is *not* scale (their logit directions compared at equal
confidence); the rest, ``[ce_a(s_a) − ce_b(s_b)] − [ce_a(s*) − ce_b(s*)]``, is scale.
Each part gets the paired t-interval over seeds. (A common scale per pair rather than
per seed: a variant stuck near chance, such as vanilla at a too-large step size, has a
tiny scale and would drag a seed-wide mean away from both compared runs.)

The logits come from each run's ``final_logits.npz`` (written after training by the
ablation study's ``after`` step with :func:`jaxnorm.train.predict.split_logits`: the
final checkpoint on the run's ``train_eval`` set, in its evaluation BN mode), so ``ce(s)``
reproduces the run's final stored training loss: the report shows that check.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from jaxnorm.analysis.runs import variant_order
from jaxnorm.analysis.stats import mean_interval, paired_test
from jaxnorm.results import RunDir

def _centred(logits) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be (examples, classes >= 2), got shape {z.shape}.")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits contain NaN or inf (a diverged run?); no logit-scale statistics.")
    return z - z.mean(axis=1, keepdims=True)


def logit_scale(logits) -> float:
    """The RMS of the per-example centred logits (module docstring); 0 for constant logits."""
    return float(np.sqrt(np.mean(_centred(logits) ** 2)))


def ce_at_scale(logits, labels, scale: float) -> float:
    """Mean cross-entropy of ``logits``' directions rescaled to RMS ``scale``
    (``ce(t)`` of the module docstring; ``scale = logit_scale(logits)`` gives the
    ordinary cross-entropy). ValueError for constant logits (no direction)."""
    zc = _centred(logits)
    s = float(np.sqrt(np.mean(zc**2)))
    if s == 0:
        raise ValueError("constant logits have no direction to rescale.")
    t = zc * (float(scale) / s)
    y = np.asarray(labels).astype(int)
    top = t.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.sum(np.exp(t - top), axis=1))
    return float(np.mean(lse - t[np.arange(len(y)), y]))


def normalized_margin(logits, labels) -> float:
    """``mean_i (u_iy − max_{k≠y} u_ik)`` of the unit-scale logits (module docstring)."""
    zc = _centred(logits)
    u = zc / max(float(np.sqrt(np.mean(zc**2))), np.finfo(np.float64).tiny)
    y = np.asarray(labels).astype(int)
    rows = np.arange(len(y))
    correct = u[rows, y]
    u[rows, y] = -np.inf
    return float(np.mean(correct - u.max(axis=1)))


def load_logits(run) -> tuple[np.ndarray, np.ndarray] | None:
    """``(logits, labels)`` of a run's ``final_logits.npz``, or None without one."""
    path = RunDir(run.path).final_logits
    if not path.exists():
        return None
    with np.load(path) as f:
        return np.asarray(f["logits"]), np.asarray(f["labels"])


def seed_statistics(runs) -> dict[str, dict[int, dict]]:
    """``{variant: {seed: {'scale', 'margin', 'ce', 'stored_ce', 'logits', 'labels'}}}``
    for the finished runs of one group that stored finite, non-constant logits."""
    out: dict[str, dict[int, dict]] = {}
    for r in runs:
        data = load_logits(r) if r.finished else None
        if data is None or not np.all(np.isfinite(data[0])):
            continue
        z, y = data
        s = logit_scale(z)
        if s == 0:
            continue
        stored = r.eval_series("train_eval", "loss")[1]
        out.setdefault(r.variant, {})[r.seed] = {
            "scale": s, "margin": normalized_margin(z, y), "ce": ce_at_scale(z, y, s),
            "stored_ce": float(stored[-1]) if stored.size else math.nan, "logits": z, "labels": y,
        }  # fmt: skip
    return out


def split_gap(a: dict, b: dict) -> tuple[float, float]:
    """For one seed's runs ``a`` and ``b`` (entries of :func:`seed_statistics`): their
    loss difference ``ce_a(s_a) − ce_b(s_b)`` and the part that is not scale,
    ``ce_a(s*) − ce_b(s*)`` at the pair's common scale ``s* = sqrt(s_a s_b)``."""
    common = math.sqrt(a["scale"] * b["scale"])
    return (a["ce"] - b["ce"],
            ce_at_scale(a["logits"], a["labels"], common) - ce_at_scale(b["logits"], b["labels"], common))


def comparisons(variants: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs the table compares: every BN variant that learns γ or β against ``bn``
    (the normalization alone), and ``bn_gamma`` against ``bn_beta``; for tagged
    variants, the same pairs within one tag."""
    out = []
    by_tag: dict[str, set] = {}
    for v in variants:
        plain, _, tag = v.partition("+")
        by_tag.setdefault(tag, set()).add(plain)
    for tag, plains in by_tag.items():
        name = (lambda p: p + (f"+{tag}" if tag else ""))
        if "bn" in plains:
            out += [(name(p), name("bn")) for p in ("bn_gamma", "bn_beta", "bn_gamma_beta") if p in plains]
        if {"bn_gamma", "bn_beta"} <= plains:
            out.append((name("bn_gamma"), name("bn_beta")))
    return out


def logit_scale_markdown(runs) -> str | None:
    """The logit-scale section of one group's ``summary.md`` (module docstring), or None
    when no run of the group stored logits."""
    stats = seed_statistics(runs)
    if not stats:
        return None
    order = variant_order(stats)
    rows = ["| variant | n | logit scale s | normalized margin | final train loss ce(s) (stored) |", "|---|---|---|---|---|"]
    for v in order:
        seeds = sorted(stats[v])
        ci = {k: mean_interval([stats[v][s][k] for s in seeds]) for k in ("scale", "margin", "ce", "stored_ce")}
        rows.append(f"| {v} | {len(seeds)} | {ci['scale'].format(3, say_single=False)} | {ci['margin'].format(3, say_single=False)} | "
                    f"{ci['ce'].format(4, say_single=False)} ({ci['stored_ce'].format(4, say_single=False)}) |")
    pairs = [(a, b) for a, b in comparisons(order) if a in stats and b in stats]
    if pairs:
        rows += ["", "| comparison (paired by seed) | Δ train loss | Δ at the pair's common scale (not scale) | scale's part of Δ |", "|---|---|---|---|"]
        for a, b in pairs:
            split = [split_gap(stats[a][s], stats[b][s]) for s in sorted(set(stats[a]) & set(stats[b]))]
            total, shape = [t for t, _ in split], [d for _, d in split]
            zero = [0.0] * len(split)
            rows.append(f"| {a} − {b} | {paired_test(total, zero).format(4)} | {paired_test(shape, zero).format(4)} | "
                        f"{paired_test(total, shape).format(4)} |")
    head = ("Final checkpoint on the train_eval set: s = RMS of the centred logits, normalized margin = mean "
            "(correct − best other logit)/s, ce(s) = the cross-entropy recomputed from the stored logits (in brackets "
            "the run's stored final train loss, which it should equal). A comparison evaluates both runs of a seed "
            "at their common scale s* = √(s_a s_b): the Δ there is the part of the loss gap that is not logit scale, "
            "the rest is scale (`jaxnorm/analysis/logit_scale.py`).\n\n")
    return head + "\n".join(rows) + "\n"
