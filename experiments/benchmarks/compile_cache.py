"""First-call time with and without the persistent XLA compilation cache.

A benchmark, not a test. Writes a section for this machine into BENCHMARKS.md (between
``<!-- compile_cache: <machine> -->`` markers).

    python -m experiments.benchmarks.compile_cache            # 3 repeats
    python -m experiments.benchmarks.compile_cache --quick    # 2 repeats
    python -m experiments.benchmarks.compile_cache --out -

Every measurement is a fresh Python process (the in-memory cache starts empty, as in a
new shard of a job array or a resumed sweep), in one of three states:

* ``off``: no persistent cache (``--no-compile-cache``);
* ``cold``: the cache on, its folder empty (the first process of a sweep: it compiles
  and stores);
* ``warm``: the cache on, holding what ``cold`` stored (every later shard, resumed run
  or ``--plot-only`` of the same programs: it loads instead of compiling).

Two workloads: **fit**, one ``jaxnorm.train.fit`` of 3C3D (BatchNorm γ, β) on the digits
at batch 128 for 3 steps with its evaluation (the first-call time of a run: tracing,
compiling, 3 steps, 2 evaluations), timed around the call, with XLA's backend compile
time summed from ``jax.monitoring``'s ``/jax/core/compile/backend_compile_duration``
events and the cache hits counted from ``/jax/compilation_cache/cache_hits``; and
**study**, the whole ``python -m experiments.ablation --quick`` (5 variants × 2 seeds,
20 steps, its after-steps and report), timed around its ``main``. The states are
interleaved within each repeat (off, cold, warm), each repeat with a new cache folder;
the table gives medians. The cache stores compilations of 0.3 s or more (what the study
commands set), so the fastest programs compile either way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from experiments.benchmarks.conditioning import REPO, publish

STATES = ("off", "cold", "warm")
WORKLOADS = ("fit", "study")


def _worker(workload: str, cache: Optional[str], results: str) -> dict:
    """One measurement in this (fresh) process; ``cache`` None: no persistent cache."""
    import jax
    from jax import monitoring

    compile_s, hits = [0.0], [0]

    def on_duration(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compile_s[0] += duration

    def on_event(event, **kwargs):
        if event == "/jax/compilation_cache/cache_hits":
            hits[0] += 1

    monitoring.register_event_duration_secs_listener(on_duration)
    monitoring.register_event_listener(on_event)
    if cache is not None:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
    t0 = time.perf_counter()
    if workload == "fit":
        from jaxnorm.train import TrainConfig, fit

        cfg = TrainConfig(dataset="digits32", model="3c3d", norm="bn_gamma_beta", batch_size=128, max_steps=3,
                          eval_subset=256, checkpoint_every_epochs=0, results_dir=results, study="bench", name="fit")
        assert fit(cfg, progress=False).status == "finished"
    else:
        from experiments import ablation

        argv = ["--quick", "--results", results, "--quiet"] + (["--no-compile-cache"] if cache is None else [])
        assert ablation.main(argv) == 0
    return {"seconds": time.perf_counter() - t0, "compile_s": compile_s[0], "cache_hits": hits[0]}


def _measure(workload: str, state: str, cache_dir: Path, log) -> dict:
    with tempfile.TemporaryDirectory() as results:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "JAXNORM_COMPILE_CACHE"))}
        cache = "none" if state == "off" else str(cache_dir)
        if state != "off":
            env["JAX_COMPILATION_CACHE_DIR"] = cache  # the study command keeps a folder the user set
        cmd = [sys.executable, "-m", "experiments.benchmarks.compile_cache", "--worker", workload, cache, results]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{workload}/{state} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"  {workload:5s} {state:4s}: {row['seconds']:6.1f} s (XLA compile {row['compile_s']:5.1f} s, {row['cache_hits']} cache hits)")
    return {"workload": workload, "state": state, **row}


def run(repeats: int, workloads: Sequence[str], log) -> list[dict]:
    rows = []
    for r in range(repeats):
        log(f"repeat {r + 1}/{repeats}")
        for workload in workloads:
            with tempfile.TemporaryDirectory() as cache_dir:
                for state in STATES:  # cold stores what warm loads: in this order
                    rows.append(_measure(workload, state, Path(cache_dir), log))
    return rows


def render(info, quick: bool, repeats: int, rows, elapsed) -> str:
    key = info["key"]
    L = [f"<!-- compile_cache: {key} -->", f"## Compilation cache: first-call time -- {key} -- {info['date']}", ""]
    L.append(f"- Command: `python -m experiments.benchmarks.compile_cache{' --quick' if quick else ''}`; whole run {elapsed / 60:.1f} min; "
             f"{repeats} repeats, medians; each measurement a fresh process.")
    L.append(f"- Versions: jax {info['jax']}, jaxlib {info['jaxlib']}, flax {info['flax']}; XLA_FLAGS: `{info['xla_flags'] or '(none)'}`.")
    L.append(f"- Load average (1/5/15 min) at the end: {' / '.join(f'{a:.1f}' for a in os.getloadavg())} ({os.cpu_count()} cores).")
    L.append("")
    L.append("| workload | off: s (XLA compile s) | cold: s (compile s) | warm: s (compile s, hits) | warm / off |")
    L.append("|---|---:|---:|---:|---:|")
    names = {"fit": "one `fit`: 3C3D+BN, digits, 3 steps + eval", "study": "`ablation --quick` (10 runs, report)"}
    for workload in WORKLOADS:
        cell = {}
        for state in STATES:
            sel = [r for r in rows if r["workload"] == workload and r["state"] == state]
            if sel:
                cell[state] = {k: statistics.median(r[k] for r in sel) for k in ("seconds", "compile_s", "cache_hits")}
        if len(cell) < 3:
            continue
        off, cold, warm = cell["off"], cell["cold"], cell["warm"]
        L.append(f"| {names[workload]} | {off['seconds']:.1f} ({off['compile_s']:.1f}) | {cold['seconds']:.1f} ({cold['compile_s']:.1f}) "
                 f"| {warm['seconds']:.1f} ({warm['compile_s']:.1f}, {warm['cache_hits']:.0f}) | **{warm['seconds'] / off['seconds']:.2f}** |")
    L.append("")
    L.append("off: no persistent cache; cold: the cache on and empty (compiles and stores); warm: the cache holding what cold "
             "stored (a later shard, a resumed run, a --plot-only). XLA compile: backend compile seconds summed from "
             "jax.monitoring (what the cache saves); the rest is tracing, lowering, the steps and Python.")
    L.append(f"<!-- end compile_cache: {key} -->")
    return "\n".join(L) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        workload, cache, results = argv[1:4]
        print(json.dumps(_worker(workload, None if cache == "none" else cache, results)))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 repeats instead of 3")
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--out", default=str(REPO / "BENCHMARKS.md"), help="markdown file to update ('-': print only)")
    args = p.parse_args(argv)
    from experiments.benchmarks.train_step import machine_info

    log = lambda s: print(s, file=sys.stderr, flush=True)
    info = machine_info()
    log(f"compile-cache benchmark on {info['key']}")
    repeats = 2 if args.quick else 3
    t0 = time.time()
    rows = run(repeats, args.workloads, log)
    section = render(info, args.quick, repeats, rows, time.time() - t0)
    publish(section, args.out, info["key"], "compile_cache", log)


if __name__ == "__main__":
    main()
