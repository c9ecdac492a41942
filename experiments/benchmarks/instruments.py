"""Instrument-panel benchmark: jaxnorm's ``Instruments`` presets against Cockpit's, each as a
multiple of its own framework's plain training step.

A benchmark, not a test. Writes a markdown section for this machine into BENCHMARKS.md
(between ``<!-- instruments: <machine> -->`` markers; other sections stay).

    python -m experiments.benchmarks.instruments            # full settings
    python -m experiments.benchmarks.instruments --quick    # a few minutes on a 2-core CPU
    python -m experiments.benchmarks.instruments --quick --out -   # print only

What is measured, batch 128 of synthetic CIFAR-shaped data (32x32x3, 10 classes), on
DeepOBS's 3C3D without normalization (the network of Cockpit's own benchmark; BackPACK,
which Cockpit runs on, refuses a BatchNorm in training mode), plain SGD:

* jaxnorm: one training step (``make_train_step``, jitted), and one step followed by the
  ``Instruments`` observer (:mod:`jaxnorm.observers.instruments`) with each preset on a
  batch of 128 pool examples, as ``fit`` calls it with ``every=1``; ratio = (step +
  observer) / step; and the instrumented step of ``TrainBatchInstruments`` (the panel
  on the training batch from the step's own backward pass, what ``fit`` runs at every
  observed step); ratio = instrumented step / step.
* Cockpit (``cockpit-for-pytorch``, where it imports): the same network in PyTorch,
  ``torch.optim.SGD``; one plain step, and one step inside ``with cockpit(...)`` with
  Cockpit's ``economy`` and ``business`` configurations tracked at every step; ratio =
  Cockpit step / plain step. The padding modules are ``nn.ZeroPad2d`` (BackPACK's
  second-order extensions, which ``business`` needs, support only known modules).

Timing as in the other benchmarks: first calls apart, then turns (round robin), medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks.conditioning import publish, round_robin
from experiments.benchmarks.train_step import CIFAR10, build_torch_model, load_average, machine_info, make_data, optional_import
from jaxnorm.models import get_model
from jaxnorm.observers import INSTRUMENT_PRESETS, Instruments, TrainBatchInstruments
from jaxnorm.train import create_state, make_optimizer, make_train_step

REPO = Path(__file__).resolve().parents[2]
CLASSES = 10
COCKPIT_PRESETS = ("economy", "business")


@dataclasses.dataclass
class Settings:
    batch: int
    turns: int
    num_examples: int

    @staticmethod
    def full() -> "Settings":
        return Settings(batch=128, turns=20, num_examples=2_000)

    @staticmethod
    def quick() -> "Settings":
        return Settings(batch=128, turns=4, num_examples=512)


def jax_variants(cfg: Settings, log) -> dict:
    images, labels, perm = make_data(cfg.num_examples, CLASSES)
    module = get_model("3c3d", num_classes=CLASSES, norm="vanilla")
    tx = make_optimizer(0.01)
    state0 = create_state(jax.random.PRNGKey(0), module, tx, jnp.asarray(images[:1]))
    data = (jnp.asarray(images), jnp.asarray(labels))
    perm = jnp.asarray(perm)
    step = jax.jit(make_train_step(module, tx, batch_size=cfg.batch, mean=CIFAR10[0], std=CIFAR10[1]))
    holder = {"state": state0, "s": 0}
    steps_per_epoch = cfg.num_examples // cfg.batch

    def one_step():
        s = holder["s"] = (holder["s"] + 1) % steps_per_epoch
        holder["state"], m = step(holder["state"], data, perm, jnp.int32(0), jnp.int32(0), jnp.int32(s))
        return m["loss"]

    fns = {"jaxnorm step": one_step}
    for preset in INSTRUMENT_PRESETS:
        obs = Instruments(module, images, labels, mean=CIFAR10[0], std=CIFAR10[1], preset=preset, batch_size=cfg.batch)
        call = jax.jit(obs)
        carry = {"c": obs.init_carry(state0)}

        def with_panel(call=call, carry=carry):
            one_step()
            record, carry["c"] = call(holder["state"], carry["c"])
            return record

        fns[f"jaxnorm step + Instruments {preset}"] = with_panel
    for preset in INSTRUMENT_PRESETS:
        # The panel inside the step (fit's instrumented step at every=1): the step's own backward pass.
        obs = TrainBatchInstruments(preset=preset)
        fused = jax.jit(make_train_step(module, tx, batch_size=cfg.batch, mean=CIFAR10[0], std=CIFAR10[1], in_step=[obs]))
        carries = {"c": {"instruments": obs.init_carry(state0)}}

        def in_step(fused=fused, carries=carries):
            s = holder["s"] = (holder["s"] + 1) % steps_per_epoch
            holder["state"], m, records, carries["c"] = fused(holder["state"], data, perm, jnp.int32(0), jnp.int32(0), jnp.int32(s), carries["c"])
            return records

        fns[f"jaxnorm TrainBatchInstruments {preset} step"] = in_step
    return fns


def torch_variants(cfg: Settings, log) -> dict:
    # cockpit 1.0.2 imports pkg_resources, which setuptools 81 removed: then it does not import.
    torch, cockpit = optional_import("torch"), optional_import("cockpit.utils.configuration")
    if torch is None or cockpit is None:
        return {}
    from backpack import extend
    from cockpit import Cockpit
    from cockpit.utils.configuration import configuration

    images, labels, _ = make_data(cfg.num_examples, CLASSES)
    tx = torch.from_numpy(np.ascontiguousarray(images[: cfg.batch].transpose(0, 3, 1, 2)))
    ty = torch.from_numpy(labels[: cfg.batch].astype(np.int64))

    def net():
        # One flat nn.Sequential with nn.ZeroPad2d for the custom Pad (the same (left, right,
        # top, bottom)): BackPACK's second-order extensions, which `business` needs, walk
        # known modules only.
        layers = []
        for block in build_torch_model("3c3d", "vanilla", CLASSES).blocks.values():
            for m in block if isinstance(block, torch.nn.Sequential) else [block]:
                layers.append(torch.nn.ZeroPad2d(m.pads) if type(m).__name__ == "Pad" else m)
        return torch.nn.Sequential(*layers)

    plain_net = net()
    plain_opt = torch.optim.SGD(plain_net.parameters(), lr=0.01)
    plain_loss = torch.nn.CrossEntropyLoss()

    def plain():
        plain_opt.zero_grad()
        loss = plain_loss(plain_net(tx), ty)
        loss.backward()
        plain_opt.step()
        return loss.item()

    fns = {"torch step": plain}
    for preset in COCKPIT_PRESETS:
        model = extend(net())
        loss_fn = extend(torch.nn.CrossEntropyLoss(reduction="mean"))
        individual = torch.nn.CrossEntropyLoss(reduction="none")
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        pit = Cockpit(model.parameters(), quantities=configuration(preset))
        counter = {"step": -1}  # Cockpit's Alpha caches from global step 0 on

        def tracked(model=model, loss_fn=loss_fn, individual=individual, opt=opt, pit=pit, counter=counter):
            counter["step"] += 1
            opt.zero_grad()
            out = model(tx)
            loss = loss_fn(out, ty)
            losses = individual(out, ty)
            with pit(counter["step"], info={"batch_size": cfg.batch, "individual_losses": losses, "loss": loss, "optimizer": opt}):
                loss.backward(create_graph=pit.create_graph(counter["step"]))
            opt.step()
            return loss.item()

        fns[f"torch step + Cockpit {preset}"] = tracked
    return fns


def run(cfg: Settings, log) -> dict:
    fns = jax_variants(cfg, log)
    fns.update(torch_variants(cfg, log))
    log(f"  3c3d vanilla, batch {cfg.batch} (load {load_average()}): {', '.join(fns)}")
    res = round_robin(fns, {k: cfg.turns for k in fns}, log)
    return {"results": res, "cockpit": any(k.startswith("torch") for k in fns), "load": load_average()}


def render(info, cfg_name, cfg: Settings, r: dict, elapsed: float) -> str:
    key = info["key"]
    L = [f"<!-- instruments: {key} -->", f"## Instrument panel vs Cockpit -- {key} -- {info['date']}", ""]
    L.append(f"- Command: `python -m experiments.benchmarks.instruments{' --quick' if cfg_name == 'quick' else ''}` ({cfg_name} settings); whole run {elapsed / 60:.1f} min.")
    L.append(f"- Versions: jax {info['jax']}, flax {info['flax']}, torch {info['torch']}; devices {', '.join(info['devices'])}.")
    L.append(f"- Settings: {dataclasses.asdict(cfg)}; 3C3D without normalization, batch {cfg.batch}, SGD; every quantity at every step.")
    L.append("")
    L.append("| what | calls | median ms | IQR | x plain step (same framework) | first call s |")
    L.append("|---|---:|---:|---:|---:|---:|")
    base = {t.label.split()[0]: t.median for t in r["results"] if t.label in ("jaxnorm step", "torch step")}
    for t in r["results"]:
        L.append(f"| {t.label} | {len(t.times)} | {1e3 * t.median:,.1f} | {t.iqr_pct:.0f}% | **{t.median / base[t.label.split()[0]]:.2f}** | {t.first_s:.1f} |")
    L.append("")
    if not r["cockpit"]:
        L.append("- cockpit-for-pytorch (or torch / backpack-for-pytorch) not importable here: no Cockpit rows.")
    L.append(f"- Load average at the end: {r['load']}.")
    L.append("")
    L.append(f"<!-- end instruments: {key} -->")
    return "\n".join(L) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="settings for a small CPU")
    p.add_argument("--out", default=str(REPO / "BENCHMARKS.md"), help="markdown file to update ('-': print only)")
    args = p.parse_args(argv)
    cfg = Settings.quick() if args.quick else Settings.full()
    log = lambda s: print(s, file=sys.stderr, flush=True)
    t0 = time.time()
    info = machine_info()
    log(f"instrument-panel benchmark on {info['key']}")
    r = run(cfg, log)
    section = render(info, "quick" if args.quick else "full", cfg, r, time.time() - t0)
    publish(section, args.out, info["key"], "instruments", log)


if __name__ == "__main__":
    main()
