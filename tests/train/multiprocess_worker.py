"""One process of a multi-process ``fit``, started by tests/train/test_multiprocess.py.

``python -m tests.train.multiprocess_worker RESULTS OUT --process-id I --num-processes P
--port PORT [--stall-after-step S]``: joins the coordinator on 127.0.0.1:PORT (with
``--num-processes 1`` no coordinator: the one-process reference), trains
:func:`config` data-parallel over every (simulated) device of every process, and writes
``OUT/params_<I>.npz`` (this process's copy of the final state; every process writes
its own, outside the run folder, so the test can check they agree) and
``OUT/result_<I>.json`` (status, step, pid). The device count per process comes from
the environment (``XLA_FLAGS=--xla_force_host_platform_device_count=N``, set by the test).

``--try-errors``: first, :func:`try_errors` (written to ``OUT/errors_<I>.json``).
``--again``: after the run, ``fit`` it once more (it has ended: read back, not trained).
``--stall-after-step S``: after the first host sync at a step past both the first
checkpoint and ``S``, write ``OUT/stalled_<I>`` and sleep until killed (the test
SIGKILLs every process there, so the run folder holds a checkpoint and metrics lines
past it, as a job killed mid-epoch leaves it).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time


def config(results: str, num_devices: int):
    from jaxnorm.train import TrainConfig

    # 256 digits, batch 32: 8 steps per epoch; 2 epochs, a checkpoint after each.
    return TrainConfig(
        dataset="digits", model="mlp", model_kwargs={"depth": 2, "width": 16}, norm="bn_gamma_beta",
        batch_size=32, epochs=2, learning_rate=0.1, momentum=0.9, train_subset=256,
        log_every_steps=3, record_every_steps=5, eval_splits=("test",), eval_subset=128, eval_batch_size=128, checkpoint_every_epochs=1,
        num_devices=num_devices, results_dir=results, study="multiproc", name="run",
    )  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("out")
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--stall-after-step", type=int, default=None)
    p.add_argument("--try-errors", action="store_true")
    p.add_argument("--again", action="store_true")
    a = p.parse_args(argv)
    t0 = time.monotonic()
    say = lambda what: print(f"[process {a.process_id}] {what} at {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)

    import jax

    if a.num_processes > 1:
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{a.port}", num_processes=a.num_processes, process_id=a.process_id,
            initialization_timeout=120,
        )  # fmt: skip
    say("distributed initialized")

    import jaxnorm.train.loop as loop
    from jaxnorm.train import fit

    out = pathlib.Path(a.out)
    say("imported")
    cfg = config(a.results, jax.device_count())
    if a.try_errors:
        (out / f"errors_{a.process_id}.json").write_text(json.dumps(try_errors(cfg)))
        say("errors tried")
    if a.stall_after_step is not None:
        real_sync, real_checkpoint = loop._Loop.sync, loop._Loop.checkpoint
        saved = []

        def checkpoint(self, state, ckpts, keep, epoch, step):
            real_checkpoint(self, state, ckpts, keep, epoch, step)
            saved.append(step)

        def sync(self, step, epoch):
            n = real_sync(self, step, epoch)
            if saved and step > max(saved[0], a.stall_after_step):
                (out / f"stalled_{a.process_id}").write_text(str(step))
                while True:
                    time.sleep(1)
            return n

        loop._Loop.sync, loop._Loop.checkpoint = sync, checkpoint

    r = fit(cfg, progress=False)
    say("fit done")
    save(out / f"params_{a.process_id}.npz", r.state)
    result = {"status": r.status, "step": r.step, "pid": os.getpid(), "metrics": r.metrics}
    if a.again:  # the run has ended: read back from its folder, not trained again
        again = fit(cfg, progress=False)
        save(out / f"again_{a.process_id}.npz", again.state)
        result["again"] = {"status": again.status, "step": again.step, "traces": again.traces}
    (out / f"result_{a.process_id}.json").write_text(json.dumps(result))
    return 0


def save(path, state) -> None:
    import jax
    import numpy as np

    np.savez(path, *[np.asarray(x) for x in jax.tree.leaves((state.params, state.batch_stats, state.opt_state))])


def try_errors(cfg) -> dict:
    """What every process must see, without hanging: a SIGTERM received by one process
    (every process stops at the same step), a device count that is not a multiple of the
    process count (refused before any file is written), and a run folder that is not a
    jaxnorm run (process 0 refuses it, the others are told)."""
    from jaxnorm.train import fit

    import signal

    import jaxnorm.train.loop as loop

    seen = {}
    # A SIGTERM that only process 1 receives (after its host sync at step 3) stops both.
    real_sync = loop._Loop.sync

    def sync(self, step, epoch):
        n = real_sync(self, step, epoch)
        if step == 3 and __import__("jax").process_index() == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return n

    loop._Loop.sync = sync
    try:
        fit(cfg.replace(name="interrupted"), progress=False)
        seen["interrupted"] = "no error"
    except KeyboardInterrupt as e:
        seen["interrupted"] = f"{type(e).__name__}: {e}"
    finally:
        loop._Loop.sync = real_sync
    foreign = cfg.replace(name="foreign")
    if cfg.num_devices and __import__("jax").process_index() == 0:
        root = pathlib.Path(cfg.results_dir) / cfg.study / "foreign"
        root.mkdir(parents=True, exist_ok=True)
        (root / "notes.txt").write_text("a user's file")
    for what, c in (("devices", cfg.replace(num_devices=3, name="devices")), ("foreign", foreign)):
        try:
            fit(c, progress=False)
            seen[what] = "no error"
        except Exception as e:
            seen[what] = f"{type(e).__name__}: {e}"
    return seen


if __name__ == "__main__":
    sys.exit(main())
