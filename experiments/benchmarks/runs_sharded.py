"""Multi-run benchmark: N stacked runs trained by 'vmap', 'loop' and 'shard' (the runs spread over devices).

A benchmark, not a test. Writes a section for this machine into BENCHMARKS.md (between
``<!-- runs_sharded: <machine> -->`` markers; rerunning on a machine replaces its section).

    python -m experiments.benchmarks.runs_sharded             # full settings (meant for several GPUs/TPUs)
    python -m experiments.benchmarks.runs_sharded --quick     # N = 1, 4 at batch 16 on 4 simulated CPU devices
    python -m experiments.benchmarks.runs_sharded --batch 128 --runs 1,4,8 --out -   # print only

What is measured: for 3C3D (10 classes) and All-CNN-C (100 classes), ``bn_gamma_beta``, SGD,
each run's batch ``--batch`` (default 256), N = 1, 4, 8 runs with their own seeds and data
orders: ``jax.jit(map_over_runs(make_train_step(...), strategy, ...), donate_argnums=0)`` --
the compiled step ``fit_many`` runs -- for ``vmap``, ``loop`` and ``shard``. ``shard`` spreads
the runs over ``default_run_devices(N, devices)`` devices (the state sharded over the run
axis, each device vmapping its share inside ``shard_map``; N padded to a multiple of the
devices with copies of the last run, which count as work but not as images). The data are
synthetic (uniform random images, never zeros) and stay on the devices.

How it is timed: ``experiments.benchmarks.train_step``'s runners -- the first call (trace +
compile + one step) apart, ``warmup`` untimed steps, then every step timed on its own (host
clock around the call and ``jax.block_until_ready``), the strategies of one (model, N)
interleaved in blocks so that load from other processes hits them alike; the table reports
medians, the IQR relative to the median, aggregate images/s (N x batch / median) and the
ratio to ``loop``.

On a CPU the devices are simulated (``--xla_force_host_platform_device_count``: with
``--devices D`` the script restarts itself with that flag when fewer exist); they share the
same cores, so the ``shard`` column there is a check that the path runs, not a speed claim.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks.conditioning import write_section
from experiments.benchmarks.train_step import MODELS, JaxRunner, load_average, machine_info, make_data, measure
from jaxnorm.models import get_model
from jaxnorm.train import parallel
from jaxnorm.train.multi_run import default_run_devices, map_over_runs, padded_runs, stack
from jaxnorm.train.optim import make_optimizer
from jaxnorm.train.state import create_state
from jaxnorm.train.step import make_train_step

REPO = Path(__file__).resolve().parents[2]
STRATEGIES = ("vmap", "loop", "shard")
NORM = "bn_gamma_beta"
IN_AXES = (0, None, 0, 0, None, None)  # state, data, perm, seed, epoch, step_in_epoch


def settings(quick: bool) -> dict:
    if quick:  # a quarter of an hour on the shared 2-core machine under load (compiles dominate)
        return {"models": ("3c3d", "allcnnc"), "runs": (1, 4), "batch": 16, "steps": 3, "warmup": 1, "block": 1, "num_examples": 512, "devices": 4}
    return {"models": ("3c3d", "allcnnc"), "runs": (1, 4, 8), "batch": 256, "steps": 30, "warmup": 3, "block": 5, "num_examples": 20_000, "devices": None}


def runner(model: str, strategy: str, runs: int, batch: int, num_examples: int, data_cache: dict) -> tuple[JaxRunner, int]:
    """The compiled step of ``runs`` stacked runs under ``strategy``, placed for it.
    Returns ``(runner, run_devices)`` (1 unless ``'shard'``)."""
    classes, _, (mean, std) = MODELS[model]
    if (num_examples, classes) not in data_cache:
        data_cache[(num_examples, classes)] = make_data(num_examples, classes)
    images, labels, _ = data_cache[(num_examples, classes)]
    module = get_model(model, norm=NORM, num_classes=classes)
    tx = make_optimizer(0.01)
    rows = default_run_devices(runs, jax.device_count()) if strategy == "shard" else 1
    width = padded_runs(runs, rows)
    seeds = list(range(runs)) + [runs - 1] * (width - runs)  # the dummies copy the last run
    rng = np.random.default_rng(1)
    perms = [rng.permutation(num_examples).astype(np.int32) for _ in range(runs)]
    perms = np.stack(perms + perms[-1:] * (width - runs))
    states = stack([create_state(jax.random.PRNGKey(s), module, tx, jnp.asarray(images[:2])) for s in seeds])
    step = make_train_step(module, tx, batch_size=batch, mean=mean, std=std, augment_config=None)
    if strategy == "shard":
        mesh = parallel.make_run_mesh(rows)
        sh = parallel.runs_sharding(mesh)
        fn = map_over_runs(step, "shard", IN_AXES, width, mesh=mesh)
        states, perms, seeds = jax.device_put((states, jnp.asarray(perms), jnp.asarray(seeds, jnp.int32)), sh)
        data = parallel.put_replicated((jnp.asarray(images), jnp.asarray(labels)), mesh)
    else:
        fn = map_over_runs(step, strategy, IN_AXES, width)
        states, perms, seeds = jax.device_put((states, jnp.asarray(perms), jnp.asarray(seeds, jnp.int32)))
        data = jax.device_put((jnp.asarray(images), jnp.asarray(labels)))
    r = JaxRunner(f"{strategy}", fn, states, data, perms, seeds, batch, num_examples, runs)
    return r, rows


def run(cfg: dict, log) -> list[dict]:
    rows, cache = [], {}
    for model in cfg["models"]:
        for n in cfg["runs"]:
            log(f"  {model} N={n} batch {cfg['batch']}, {cfg['steps']} timed steps (load {load_average()})")
            built = [runner(model, s, n, cfg["batch"], cfg["num_examples"], cache) for s in STRATEGIES]
            results = measure([r for r, _ in built], cfg["steps"], cfg["warmup"], cfg["block"], log)
            finite = all(r.check_finite() for r, _ in built)
            loop = next(res for res in results if res.label == "loop")
            for (r, rd), res in zip(built, results):
                rows.append({"model": model, "runs": n, "strategy": res.label, "run_devices": rd, "result": res,
                             "vs_loop": loop.median / res.median, "finite": finite})  # fmt: skip
            del built
    return rows


def render(info: dict, cfg: dict, rows: list[dict], elapsed: float, quick: bool, argv: Sequence[str]) -> str:
    key = info["key"]
    L = [f"<!-- runs_sharded: {key} -->", f"## Runs spread over devices (fit_many strategies) -- {key} -- {info['date']}", ""]
    cmd = " ".join(["python -m experiments.benchmarks.runs_sharded", *argv])
    L.append(f"- Command: `{cmd}` ({'quick' if quick else 'full'} settings); whole run {elapsed / 60:.1f} min.")
    L.append(f"- Versions: jax {info['jax']}, flax {info['flax']}; {jax.device_count()} devices ({jax.devices()[0].device_kind}); XLA_FLAGS `{info['xla_flags']}`.")
    L.append(f"- Settings: {dict((k, v) for k, v in cfg.items() if k != 'models')}; bn_gamma_beta, SGD lr 0.01, synthetic data on the devices.")
    if info["backend"] == "cpu":
        L.append(f"- **Simulated CPU devices share the machine's {os.cpu_count()} cores: `shard` here shows that the path runs and what it costs "
                 "on one CPU, not a speed-up.** (`'auto'` stays `'loop'` on CPU for that reason.)")  # fmt: skip
    L += ["", "| model | N | strategy | run devices | median ms/step | IQR | min ms | images/s (all runs) | x loop | first call s |",
          "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        res = r["result"]
        L.append(
            f"| {r['model']} | {r['runs']} | {r['strategy']} | {r['run_devices']} | {1e3 * res.median:,.1f} | {res.iqr_pct:.0f}% | "
            f"{1e3 * res.min:,.1f} | {res.ips:,.0f} | **{r['vs_loop']:.2f}** | {res.first_s:.1f} |"
        )
    if not all(r["finite"] for r in rows):
        L.append("")
        L.append("- Warning: a non-finite loss in some variant (the timings of a diverged step are not representative).")
    L += ["", f"- Load average at the end: {load_average()}.", "", f"<!-- end runs_sharded: {key} -->"]
    return "\n".join(L) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="settings for a small CPU (4 simulated devices, N = 1, 4, batch 16, 3 timed steps)")
    p.add_argument("--batch", type=int, default=None, help="each run's batch size (default 256; --quick 16)")
    p.add_argument("--runs", default=None, help="comma list of N (default 1,4,8)")
    p.add_argument("--models", default=None, help="comma list of 3c3d,allcnnc (default both)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per strategy")
    p.add_argument("--devices", type=int, default=None, help="CPU only: simulate this many devices (restarts the script; --quick: 4)")
    p.add_argument("--out", default=str(REPO / "BENCHMARKS.md"), help="markdown file to update ('-': print only)")
    args = p.parse_args(argv)
    cfg = settings(args.quick)
    for name in ("batch", "steps", "devices"):
        if getattr(args, name) is not None:
            if getattr(args, name) < 1:
                p.error(f"--{name} must be >= 1")
            cfg[name] = getattr(args, name)
    try:
        if args.runs:
            cfg["runs"] = tuple(int(n) for n in args.runs.split(","))
        if args.models:
            cfg["models"] = tuple(args.models.split(","))
    except ValueError:
        p.error(f"--runs takes a comma list of integers, got {args.runs!r}")
    if not all(n >= 1 for n in cfg["runs"]) or not set(cfg["models"]) <= set(MODELS):
        p.error(f"--runs must be >= 1 and --models among {sorted(MODELS)}")
    want = cfg["devices"]
    if want and jax.default_backend() == "cpu" and jax.device_count() < want:
        # XLA_FLAGS is read once per process: a child with the simulated devices.
        flags = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={want}").strip()
        env = dict(os.environ, XLA_FLAGS=flags)
        return subprocess.run([sys.executable, "-m", "experiments.benchmarks.runs_sharded", *argv], env=env, cwd=REPO).returncode
    t0 = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - t0:6.0f}s] {s}", file=sys.stderr, flush=True)
    info = machine_info()
    log(f"runs_sharded benchmark on {info['key']}: {cfg}")
    rows = run(cfg, log)
    section = render(info, cfg, rows, time.perf_counter() - t0, args.quick, argv)
    print(section)
    if args.out != "-":
        write_section(Path(args.out), section, info["key"], marker="runs_sharded")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
