"""Wall time of the BatchNorm thesis's CIFAR-10 grid, on synthetic CIFAR-shaped data.

A benchmark, not a test. Writes a section for this machine into BENCHMARKS.md (between
``<!-- grid: <machine> -->`` markers).

    python -m experiments.benchmarks.grid                 # the grid as published (meant for a GPU)
    python -m experiments.benchmarks.grid --quick         # the same command with --quick (any CPU)

The grid is the ablation study's ``cifar10_3c3d`` setup, one learning-rate scale and one
seed: the five variants × 100 epochs of 3C3D at batch 128 with DeepOBS's augmentation
(random crop with padding 2, horizontal flips, lighting), evaluated every epoch, γ/β
recorded every 5 steps, its report at the end -- ``python -m experiments.ablation --config
cifar10_3c3d --seeds 0``, run as it is, through its ``main``. CIFAR-10 itself is not
prepared on the benchmark machines, so the data come from ``tfds.testing.mock_data``:
**random images and labels** of CIFAR-10's shapes and split sizes (50,000 training and
10,000 test images) served through jaxnorm's real tfds loading path. The numbers are
therefore the grid's cost, not its accuracy (random labels are not learnable). The
target for a GPU is ≤ 10 minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Optional, Sequence

from experiments.benchmarks.conditioning import REPO, publish

TARGET_MIN = 10.0
CIFAR10_TRAIN = 50_000


def run(quick: bool, log) -> dict:
    import tensorflow_datasets as tfds

    from experiments import ablation
    from jaxnorm.analysis.runs import find_runs

    with tempfile.TemporaryDirectory() as results, tfds.testing.mock_data(num_examples=CIFAR10_TRAIN):
        argv = ["--config", "cifar10_3c3d", "--seeds", "0", "--results", results, "--no-progress", "--quiet"]
        argv += ["--quick"] if quick else []
        log("python -m experiments.ablation " + " ".join(argv) + "   (tfds mock data: random CIFAR-shaped images)")
        t0 = time.perf_counter()
        code = ablation.main(argv)
        seconds = time.perf_counter() - t0
        if code != 0:
            raise RuntimeError(f"the ablation study exited with {code}")
        runs = find_runs(results)
        steps = max((r.last_step or 0 for r in runs), default=0)
        states = sorted({r.state for r in runs})
    return {"argv": argv, "seconds": seconds, "runs": len(runs), "steps": steps, "states": states}


def render(info, row, elapsed) -> str:
    key = info["key"]
    minutes = row["seconds"] / 60
    quick = "--quick" in row["argv"]
    L = [f"<!-- grid: {key} -->", f"## The thesis's CIFAR-10 grid (synthetic data) -- {key} -- {info['date']}", ""]
    L.append(f"- Command: `python -m experiments.benchmarks.grid{' --quick' if quick else ''}`, i.e. `python -m experiments.ablation "
             f"{' '.join('<tmp>' if a.startswith(tempfile.gettempdir()) else a for a in row['argv'])}` on `tfds.testing.mock_data`: random images and labels "
             "of CIFAR-10's shapes (50,000 training images), so the time is real and the accuracy meaningless.")
    L.append(f"- Versions: jax {info['jax']}, jaxlib {info['jaxlib']}, flax {info['flax']}; devices {', '.join(info['devices'])}.")
    L.append(f"- Load average (1/5/15 min) at the end: {' / '.join(f'{a:.1f}' for a in os.getloadavg())} ({os.cpu_count()} cores).")
    L.append("")
    L.append("| grid | runs | steps per run | wall time | target |")
    L.append("|---|---:|---:|---:|---|")
    what = "5 variants × 3C3D, --quick" if quick else "5 variants × 100 epochs of 3C3D, batch 128, augmented"
    verdict = "" if quick else (" (met)" if minutes <= TARGET_MIN else " (**not met**)")
    L.append(f"| {what} | {row['runs']} ({', '.join(row['states'])}) | {row['steps']:,} | {minutes:.1f} min | ≤ {TARGET_MIN:g} min on one GPU{verdict} |")
    L.append(f"<!-- end grid: {key} -->")
    return "\n".join(L) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the study's --quick (a smoke run of the same command)")
    p.add_argument("--out", default=str(REPO / "BENCHMARKS.md"), help="markdown file to update ('-': print only)")
    args = p.parse_args(argv)
    from experiments.benchmarks.train_step import machine_info

    log = lambda s: print(s, file=sys.stderr, flush=True)
    info = machine_info()
    log(f"grid benchmark on {info['key']}")
    t0 = time.time()
    row = run(args.quick, log)
    log(f"{row['runs']} runs, {row['steps']} steps in {row['seconds'] / 60:.1f} min")
    section = render(info, row, time.time() - t0)
    publish(section, args.out, info["key"], "grid", log)


if __name__ == "__main__":
    main()
