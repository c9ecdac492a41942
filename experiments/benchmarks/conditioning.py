"""Gradient-diagnostics benchmark: per-example gradients, metrics-only paths, observer overhead.

A benchmark, not a test. Writes a markdown section for this machine into BENCHMARKS.md
(between ``<!-- conditioning: <machine> -->`` markers; other sections stay).

    python -m experiments.benchmarks.conditioning            # full settings (meant for a GPU)
    python -m experiments.benchmarks.conditioning --quick    # ~10 min on a 2-core CPU
    python -m experiments.benchmarks.conditioning --quick --out -   # print only

What is measured, with synthetic CIFAR-shaped data (10 classes) on the device:

* **per-example** (batch 128), for 3C3D ``bn_gamma_beta`` and an 11-layer ``deep_fc``
  (width 256) with BN: one batch gradient (``jax.grad`` of the training-mode mean
  loss, what a train step differentiates) vs ``per_example_grads`` in each mode
  (``running``, ``frozen``, ``coupled``), vs a Python loop of a jitted single-example
  gradient (running statistics, the per-example definition a loop can compute), and the
  metrics-only paths (``per_example_sq_norms`` and ``per_example_gram`` with chunks of 32,
  which never hold every gradient). The ratio column is time / batch-gradient time.
* **observer** (3C3D ``bn_gamma_beta``): training steps (``make_train_step``, batch 128, SGD) with no observer, with
  ``StepConditioning`` (the in-optimizer κ_W estimate, ``track_step_conditioning=True``) at
  k = 1, and with ``GradientConditioning`` (a cheap subset and every metric) at k = 1 and
  k = 50; time per training step averaged over whole loops of ``k``-step periods, as
  ``fit`` runs them. The ratio column is time per step / plain step.

Timing: each variant's first call (trace + compile + one run) is reported apart; then the
variants are timed in turns (round robin, one call each per turn) so machine load hits
them alike; median and interquartile range over the turns.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from experiments.benchmarks.train_step import CIFAR10, Result, load_average, machine_info, make_data
from jaxnorm.data.augmentation import normalize
from jaxnorm.diagnostics import (
    batch_loss_fn,
    num_coordinates,
    per_example_grads,
    per_example_gram,
    per_example_sq_norms,
)
from jaxnorm.models import get_model
from jaxnorm.observers import GradientConditioning, StepConditioning
from jaxnorm.train.optim import make_optimizer
from jaxnorm.train.state import create_state
from jaxnorm.train.step import make_train_step

REPO = Path(__file__).resolve().parents[2]
MODEL, NORM, CLASSES = "3c3d", "bn_gamma_beta", 10
# (label, model, options): the per-example table is measured for each.
PER_EXAMPLE_MODELS = (
    ("3c3d bn_gamma_beta", "3c3d", {"norm": NORM}),
    ("deep_fc d11 w256 bn_gamma_beta", "deep_fc", {"norm": NORM, "depth": 11, "width": 256}),
)
CHEAP = ("coherence", "per_example_diversity", "weight_rank")


@dataclasses.dataclass
class Settings:
    batch: int
    turns: int  # timed calls per per-example variant
    coupled_turns: int
    coupled_chunk: int
    loop_turns: int
    steps_k1: int  # training steps timed with an observer at k = 1
    all_k1: int  # ... with every metric at k = 1 (tens of seconds per call on a CPU)
    periods_k50: int  # 50-step periods timed with an observer at k = 50
    num_examples: int

    @staticmethod
    def full() -> "Settings":
        return Settings(batch=128, turns=20, coupled_turns=5, coupled_chunk=16, loop_turns=5, steps_k1=50, all_k1=10, periods_k50=4, num_examples=10_000)

    @staticmethod
    def quick() -> "Settings":
        return Settings(batch=128, turns=5, coupled_turns=1, coupled_chunk=16, loop_turns=2, steps_k1=6, all_k1=2, periods_k50=1, num_examples=2_000)


def _timed(fn: Callable) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


def round_robin(fns: dict[str, Callable], turns: dict[str, int], log) -> list[Result]:
    """First call of each, then ``turns[label]`` timed calls each, in turns."""
    firsts = {}
    for label, fn in fns.items():
        firsts[label] = _timed(fn)
        log(f"    {label:<34s} first call {firsts[label]:8.2f} s")
    times = {label: [] for label in fns}
    while any(len(times[l]) < turns[l] for l in fns):
        for label, fn in fns.items():
            if len(times[label]) < turns[label]:
                times[label].append(_timed(fn))
    out = [Result(l, 1, firsts[l], times[l]) for l in fns]
    for t in out:
        log(f"    {t.label:<34s} median {1e3 * t.median:10.1f} ms  IQR {t.iqr_pct:5.1f}%")
    return out


def _setup(batch: int, num_examples: int, model: str = MODEL, options=None):
    images, labels, perm = make_data(num_examples, CLASSES)
    module = get_model(model, num_classes=CLASSES, **(options or {"norm": NORM}))
    tx = make_optimizer(0.01)
    state = create_state(jax.random.PRNGKey(0), module, tx, jnp.asarray(images[:1]))
    x = normalize(jnp.asarray(images[:batch]), *CIFAR10)
    return module, state, x, jnp.asarray(labels[:batch]), (images, labels, perm)


def run_per_example(cfg: Settings, log, label: str, model: str, options: dict) -> dict:
    module, state, x, y, _ = _setup(cfg.batch, cfg.num_examples, model, options)
    v = state.variables
    P = num_coordinates(state.params)
    batch_grad = jax.jit(lambda v, x, y: jax.grad(batch_loss_fn(module, v, x, y, bn_mode="batch"))(v["params"]))
    pe = {m: jax.jit(lambda v, x, y, m=m: per_example_grads(module, v, x, y, bn_mode=m)) for m in ("running", "frozen")}
    coupled = jax.jit(lambda v, x, y: per_example_grads(module, v, x, y, bn_mode="batch", chunk_size=cfg.coupled_chunk))
    norms = jax.jit(lambda v, x, y: per_example_sq_norms(module, v, x, y, bn_mode="frozen", chunk_size=32, method="materialize"))
    gram = jax.jit(lambda v, x, y: per_example_gram(module, v, x, y, bn_mode="frozen", chunk_size=32, method="materialize"))
    single = jax.jit(lambda v, xi, yi: jax.grad(lambda p: batch_loss_fn(module, {**v, "params": p}, xi[None], yi[None], bn_mode="running")(p))(v["params"]))

    def loop():
        out = [single(v, x[i], y[i]) for i in range(x.shape[0])]
        return out

    fns = {
        "batch gradient": lambda: batch_grad(v, x, y),
        "per_example_grads running": lambda: pe["running"](v, x, y),
        "per_example_grads frozen": lambda: pe["frozen"](v, x, y),
        f"per_example_grads coupled (chunk {cfg.coupled_chunk})": lambda: coupled(v, x, y),
        "python loop of jitted single grads": loop,
        "per_example_sq_norms frozen (chunk 32)": lambda: norms(v, x, y),
        "per_example_gram frozen (chunk 32)": lambda: gram(v, x, y),
    }
    turns = {l: cfg.turns for l in fns}
    turns[f"per_example_grads coupled (chunk {cfg.coupled_chunk})"] = cfg.coupled_turns
    turns["python loop of jitted single grads"] = cfg.loop_turns
    log(f"  per-example gradients, {label}, batch {cfg.batch}, {P:,} parameters (load {load_average()})")
    res = round_robin(fns, turns, log)
    b = cfg.batch
    held = {  # floats of gradients held at once
        "batch gradient": P,
        "per_example_grads running": b * P,
        "per_example_grads frozen": b * P,
        f"per_example_grads coupled (chunk {cfg.coupled_chunk})": b * P,
        "python loop of jitted single grads": b * P,
        "per_example_sq_norms frozen (chunk 32)": 32 * P,
        "per_example_gram frozen (chunk 32)": 2 * 32 * P,
    }
    return {"label": label, "results": res, "params": P, "batch": b, "held": held, "load": load_average()}


def run_observer(cfg: Settings, log) -> dict:
    _, _, _, _, (images, labels, perm) = _setup(cfg.batch, cfg.num_examples)
    module = get_model(MODEL, norm=NORM, num_classes=CLASSES)
    data = (jnp.asarray(images), jnp.asarray(labels))
    perm = jnp.asarray(perm)

    def trainer(track: bool):
        tx = make_optimizer(0.01, track_step_conditioning=track)
        state = create_state(jax.random.PRNGKey(0), module, tx, data[0][:1])
        step = jax.jit(make_train_step(module, tx, batch_size=cfg.batch, mean=CIFAR10[0], std=CIFAR10[1]), donate_argnums=0)
        return state, step

    pool = 1024
    obs_cheap = GradientConditioning(module, images[:pool], labels[:pool], mean=CIFAR10[0], std=CIFAR10[1], metrics=CHEAP, every=1)
    obs_all = GradientConditioning(module, images[:pool], labels[:pool], mean=CIFAR10[0], std=CIFAR10[1], every=1)
    spe = len(labels) // cfg.batch

    def loop_fn(track, observer, k):
        holder = {}
        state, step = trainer(track)
        observe = jax.jit(lambda st: jax.tree.map(jnp.copy, observer(st))) if observer is not None else None
        holder["state"], holder["i"] = state, 0

        def run():  # one period: k training steps, then the observer once
            st, out = holder["state"], None
            for _ in range(k):
                i = holder["i"]
                st, m = step(st, data, perm, 0, 0, i % spe)
                holder["i"] = i + 1
            if observe is not None:
                out = observe(st)
            holder["state"] = st
            return (st.params, m, out)

        return run

    variants = {
        "plain step": (False, None, 1),
        "StepConditioning, k=1": (True, StepConditioning(1), 1),
        f"GradientConditioning {'+'.join(CHEAP)}, k=1": (False, obs_cheap, 1),
        "GradientConditioning all metrics, k=1": (False, obs_all, 1),
        "plain step x50": (False, None, 50),
        f"GradientConditioning {'+'.join(CHEAP)}, k=50": (False, obs_cheap, 50),
        "GradientConditioning all metrics, k=50": (False, obs_all, 50),
    }
    fns = {l: loop_fn(*v) for l, v in variants.items()}
    turns = {l: (cfg.steps_k1 if v[2] == 1 else cfg.periods_k50) for l, v in variants.items()}
    turns["GradientConditioning all metrics, k=1"] = cfg.all_k1
    log(f"  observer overhead, {MODEL} {NORM}, train batch {cfg.batch}, observer batch 64 x 4 batches (load {load_average()})")
    res = round_robin(fns, turns, log)
    per_step = {t.label: t.median / variants[t.label][2] for t in res}
    return {"results": res, "per_step": per_step, "k": {l: v[2] for l, v in variants.items()}, "load": load_average()}


def render(info, cfg_name, cfg: Settings, pes: list, ob: dict, elapsed: float) -> str:
    key = info["key"]
    L = [f"<!-- conditioning: {key} -->", f"## Gradient diagnostics -- {key} -- {info['date']}", ""]
    L.append(f"- Command: `python -m experiments.benchmarks.conditioning{' --quick' if cfg_name == 'quick' else ''}` ({cfg_name} settings); whole run {elapsed / 60:.1f} min.")
    L.append(f"- Versions: jax {info['jax']}, flax {info['flax']}, optax {info['optax']}; devices {', '.join(info['devices'])}.")
    L.append(f"- Settings: {dataclasses.asdict(cfg)}.")
    L.append("")
    for pe in pes:
        L.append(f"### Per-example gradients: {pe['label']}, batch {pe['batch']}, {pe['params']:,} parameters")
        L.append("")
        L.append("| what | calls | median ms | IQR | x batch gradient | gradient floats held | first call s |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        base = pe["results"][0].median
        for t in pe["results"]:
            L.append(f"| {t.label} | {len(t.times)} | {1e3 * t.median:,.1f} | {t.iqr_pct:.0f}% | **{t.median / base:.2f}** | {pe['held'][t.label]:,} | {t.first_s:.1f} |")
        loop = next(t for t in pe["results"] if t.label.startswith("python loop"))
        L.append("")
        for mode in ("running", "frozen"):
            t = next(t for t in pe["results"] if t.label == f"per_example_grads {mode}")
            L.append(f"- vectorized `{mode}` vs the Python loop: **{loop.median / t.median:.1f}x** faster.")
        L.append(f"- load average at the end: {pe['load']}.")
        L.append("")
    L.append(f"### Observer overhead: {MODEL} {NORM}, train batch {cfg.batch}")
    L.append("")
    L.append("| what | k | periods timed | median ms per step | x plain step (same k) |")
    L.append("|---|---:|---:|---:|---:|")
    for t in ob["results"]:
        k = ob["k"][t.label]
        # Each row against the plain loop of the same period (k = 1 or k = 50 steps).
        plain = ob["per_step"]["plain step" if k == 1 else "plain step x50"]
        L.append(f"| {t.label} | {k} | {len(t.times)} | {1e3 * ob['per_step'][t.label]:,.1f} | **{ob['per_step'][t.label] / plain:.2f}** |")
    L.append("")
    L.append(f"Load average at the end: {ob['load']}.")
    L.append(f"<!-- end conditioning: {key} -->")
    return "\n".join(L) + "\n"


def write_section(path: Path, section: str, key: str, marker: str = "conditioning") -> None:
    """Replaces the ``<!-- {marker}: {key} -->`` ... ``<!-- end {marker}: {key} -->`` section of
    ``path`` (or appends it), leaving the rest of the file alone."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = f"<!-- {marker}: {key} -->", f"<!-- end {marker}: {key} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    text = pattern.sub(lambda m: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def publish(section: str, out: str, key: str, marker: str, log) -> None:
    """What every benchmark does with its section: print it (``out == '-'``) or write it
    into the markdown file ``out`` with :func:`write_section`."""
    if out == "-":
        print(section)
    else:
        write_section(Path(out), section, key, marker=marker)
        log(f"wrote {out}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="settings for a small CPU")
    p.add_argument("--sections", default="per_example,observer")
    p.add_argument("--out", default=str(REPO / "BENCHMARKS.md"), help="markdown file to update ('-': print only)")
    args = p.parse_args(argv)
    cfg = Settings.quick() if args.quick else Settings.full()
    log = lambda s: print(s, file=sys.stderr, flush=True)
    t0 = time.time()
    info = machine_info()
    log(f"conditioning benchmark on {info['key']}")
    sections = set(args.sections.split(","))
    pe = [run_per_example(cfg, log, *m) for m in PER_EXAMPLE_MODELS] if "per_example" in sections else None
    ob = run_observer(cfg, log) if "observer" in sections else None
    if pe is None or ob is None:
        log("both sections are needed for the report; nothing written.")
        return
    section = render(info, "quick" if args.quick else "full", cfg, pe, ob, time.time() - t0)
    publish(section, args.out, info["key"], "conditioning", log)


if __name__ == "__main__":
    main()
