"""Test-time BatchNorm adaptation under corruptions: running statistics vs test-batch
statistics vs TENT (CMU lecture “Normalization and Regularization”, slide "BatchNorm:
other benefits?"; Wang et al. 2021, "Tent: fully test-time adaptation by entropy
minimization", Fig. 5; Schneider et al. 2020, "Improving robustness against common
corruptions by covariate shift adaptation").

One BN network per seed is trained on clean data, all seeds in ONE ``fit_many`` program.
The group's ``after`` step streams the test set, corrupted by every kind x severity
(:func:`jaxnorm.data.corrupt.corrupt_stream`; ``source='tfds'``: CIFAR-10-C), through
each network in the modes of :mod:`jaxnorm.adapt`: ``running`` (running averages),
``batch`` (each test batch's statistics), ``tent`` (test-batch statistics, γ/β trained
online by Adam on each batch's prediction entropy; reset for every stream).

TENT's learning rate is chosen on held-out streams, never on the test stream: per seed,
every lr of ``tent_lrs`` adapts on images neither trained on nor in the test set (digits:
the last 359 training images, held out by ``train_subset = 1079``; CIFAR-10: the
validation split), corrupted alike with other noise draws (``select_seed``); the lr with
the lowest mean held-out error is used on the test streams
(:func:`jaxnorm.analysis.tent.choose_lr`). Another noise seed of the test images would
not do: blur, contrast and brightness are deterministic, so that stream is the test
stream. The grid: Wang et al.'s Adam lr 1e-3 and larger (6 updates per digits stream).

    python -m experiments.tent                    # digits, ConvNet (4 layers, 32 ch), 3 seeds, 7 corruptions x 5 severities
    python -m experiments.tent --quick            # MLP, one seed, 2 corruptions x severities 1, 5, 128 test images (tests)
    python -m experiments.tent --tent-lrs 1e-3 --results other   # Wang et al.'s lr alone (a grid of one: no choice)

Results: ``<results>/tent/<config>[-quick]/`` holds ``study.json`` and per seed the run
``train/`` or ``train_s<seed>/`` with ``adaptation/`` (formats: :mod:`jaxnorm.analysis.tent`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

import jaxnorm.study
from experiments.configs.cifar10_3c3d import get_config as _cifar10_3c3d
from jaxnorm import adapt
from jaxnorm._registry import lookup
from jaxnorm.analysis.tent import analyze_tent, selection_of
from jaxnorm.data import load
from jaxnorm.data.augmentation import normalize
from jaxnorm.data.corrupt import CORRUPTIONS, corrupt_stream, psnr
from jaxnorm.data.loading import CORRUPTIONS as TFDS_CORRUPTIONS
from jaxnorm.results import read_json, rewrite_jsonl, write_json, write_npz
from jaxnorm.study import RunGroup, run_location
from jaxnorm.train import TrainConfig, build_model

OPTIMIZERS = adapt.TENT_OPTIMIZERS
SOURCES = ("functions", "tfds")
#: The 15 corruptions of the benchmark (Hendrycks & Dietterich 2019; Wang et al. Fig. 5).
BENCHMARK_15 = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "frosted_glass_blur", "motion_blur", "zoom_blur",
                "snow", "frost", "fog", "brightness", "contrast", "elastic", "pixelate", "jpeg_compression")  # fmt: skip
_NOT_EVAL = ("name", "train", "seeds")  # setup fields that do not change the evaluation of a trained model


@dataclasses.dataclass(frozen=True)
class TentSetup:
    """One test-time adaptation study (module docstring).

    Attributes:
      train: the training run (seed, name, location set per seed); ``norm`` learns γ or β.
      source: ``'functions'`` (:mod:`jaxnorm.data.corrupt`) or ``'tfds'`` (CIFAR-10-C).
      corruptions, severities, modes (:data:`jaxnorm.adapt.MODES`), test_subset (None: all),
        batch_size, passes (later passes reordered, new noise): the test streams.
      tent_optimizer, tent_momentum, tent_steps (per batch), tent_lrs (the grid to choose from).
      select_split, select_size (None: all), select_corruptions (None: ``corruptions``): the
        held-out images (of the training split: those past ``train.train_subset``) and kinds.
      seed, select_seed: noise draws and pass orders of the test and held-out streams.
    """

    name: str = "digits"
    # A small ConvNet (4 layers, 32 channels, 2 stages), 20 epochs of SGD on the first 1,079
    # of the 1,438 training digits: the other 359 (as many as the test set) are held out.
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        dataset="digits", model="convnet", model_kwargs={"depth": 4, "width": 32, "stages": 2}, norm="bn_gamma_beta", batch_size=64,
        learning_rate=0.1, epochs=20, train_subset=1079, eval_splits=("test",), eval_batch_size=512, log_every_steps=50, checkpoint_every_epochs=20,
    ))  # fmt: skip
    source: str = "functions"
    # Pixelate is left out on 8x8: int(c·8) gives sizes 7, 7, 6, 6, 5, and 8->5->8 is
    # closer to the image than 8->6->8 (PSNR 14.6 vs 14.1 dB): no severity ladder.
    corruptions: tuple = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur", "contrast", "brightness")
    severities: tuple = (1, 2, 3, 4, 5)
    modes: tuple = ("running", "batch", "tent")
    test_subset: Optional[int] = None
    batch_size: int = 64
    passes: int = 1
    tent_optimizer: str = "adam"
    # Wang et al.'s Adam lr 1e-3 made ~79 updates per CIFAR-10-C stream; a digits one makes 6.
    tent_lrs: tuple = (1e-3, 3e-3, 1e-2, 3e-2)
    tent_momentum: float = 0.9
    tent_steps: int = 1
    select_split: str = "train"
    select_size: Optional[int] = None
    select_corruptions: Optional[tuple] = None
    seed: int = 0
    select_seed: int = 1
    seeds: tuple = (0, 1, 2)

    def __post_init__(self):
        for f in ("corruptions", "severities", "modes", "seeds", "tent_lrs") + (("select_corruptions",) if self.select_corruptions else ()):
            object.__setattr__(self, f, tuple(getattr(self, f)))  # argparse hands lists
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}.")
        known = TFDS_CORRUPTIONS if self.source == "tfds" else tuple(CORRUPTIONS)
        for c in (c for c in self.corruptions if c not in known):
            raise ValueError(f"unknown corruption {c!r} for source {self.source!r}; known: {sorted(known)}.")
        if not self.corruptions or not self.severities or not self.modes:
            raise ValueError("corruptions, severities and modes must each name at least one.")
        if not set(self.held_out_corruptions) <= set(CORRUPTIONS):
            raise ValueError(f"held-out streams: {self.held_out_corruptions} need functions of jaxnorm.data.corrupt {sorted(CORRUPTIONS)} (set select_corruptions).")
        for s in (s for s in self.severities if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 5):
            raise ValueError(f"severities must be ints in 1..5, got {s!r}.")
        for m in self.modes:
            lookup(adapt.MODES, m, "adaptation mode")
        lookup(OPTIMIZERS, self.tent_optimizer, "TENT optimizer")
        if self.batch_size < 2 or self.passes < 1 or self.tent_steps < 1:
            raise ValueError(f"need batch_size >= 2 (batch statistics), passes and tent_steps >= 1, got {self.batch_size}, {self.passes}, {self.tent_steps}.")
        if not (lrs := self.tent_lrs) or len(set(lrs)) != len(lrs) or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in lrs):
            raise ValueError(f"tent_lrs must be distinct finite numbers > 0, at least one, got {lrs!r}.")
        if self.select_split == self.train.train_split and self.train.train_subset is None:
            raise ValueError(f"held-out images from the training split {self.select_split!r} need train.train_subset (None: all trained on).")
        if self.select_size is not None and self.select_size < 2:
            raise ValueError(f"select_size must be None or >= 2, got {self.select_size}.")

    held_out_corruptions = property(lambda self: self.select_corruptions or self.corruptions)
    held_out_start = property(lambda self: self.train.train_subset if self.select_split == self.train.train_split else 0)

    def quick(self) -> "TentSetup":
        """A smoke run: a 3-layer BN MLP, 30 steps on 256 examples, one seed, at most 2 corruptions at
        the first and last severity, 128 test and held-out images, the grid's first and middle lr."""
        train = self.train.replace(model="mlp", model_kwargs={"depth": 3, "width": 32}, checkpoint_every_epochs=1, eval_splits=()).quick(steps=30, subset=256)
        corruptions = tuple(c for c in ("gaussian_noise", "contrast") if c in self.corruptions) or self.corruptions[:2]
        severities = tuple(sorted({self.severities[0], self.severities[-1]}))
        return dataclasses.replace(self, name=self.name + "-quick", train=train, corruptions=corruptions, severities=severities,
                                   test_subset=128, select_size=128, select_corruptions=None, seeds=(0,),
                                   tent_lrs=tuple(dict.fromkeys((self.tent_lrs[0], self.tent_lrs[len(self.tent_lrs) // 2]))))  # fmt: skip

    def eval_settings(self) -> dict:
        """What the evaluation of a trained model depends on (``adaptation/settings.json``)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self) if f.name not in _NOT_EVAL}


SETUPS: dict[str, TentSetup] = {
    "digits": TentSetup(),
    # Wang et al.'s CIFAR-10-C protocol (batch 128, Adam, reset per corruption) on the thesis's 3C3D with BN (DeepOBS
    # training), 15 benchmark corruptions; lr chosen around Wang et al.'s 1e-3 on the validation split. Not run here (no GPU).
    "cifar10": TentSetup(
        name="cifar10", train=_cifar10_3c3d().replace(norm="bn_gamma_beta", checkpoint_every_epochs=100), source="tfds",
        corruptions=BENCHMARK_15, batch_size=128, tent_lrs=(2.5e-4, 1e-3, 4e-3), select_split="validation",
        select_corruptions=tuple(c for c in BENCHMARK_15 if c in CORRUPTIONS),
    ),  # fmt: skip
}


def _streams(setup: TentSetup, held_out: bool):
    """Yields ``(kind, severity, clean or None, corrupted, labels)`` (in [0, 1]) of the test or held-out streams."""
    if held_out:
        ds = load(setup.train.dataset, setup.select_split)
        start, size = setup.held_out_start, setup.select_size
        images, labels = ds.images[start:][:size], ds.labels[start:][:size]
        for kind, sev in [(c, s) for c in setup.held_out_corruptions for s in setup.severities]:
            yield kind, sev, *corrupt_stream(images, labels, kind, sev, seed=setup.select_seed, passes=setup.passes)
        return
    ds = load(setup.train.dataset, "test")
    for kind, sev in [("none", 0)] + [(c, s) for c in setup.corruptions for s in setup.severities]:
        if kind != "none" and setup.source == "tfds":
            x = jnp.asarray(load(f"cifar10_corrupted/{kind}_{sev}", "test").images[: setup.test_subset])
            yield kind, sev, None, jnp.concatenate([x] * setup.passes), np.tile(ds.labels[: setup.test_subset], setup.passes)
        else:
            yield kind, sev, *corrupt_stream(ds.images[: setup.test_subset], ds.labels[: setup.test_subset], None if kind == "none" else kind, sev, seed=setup.seed, passes=setup.passes)


def _record(kind: str, where: dict, mode: str, r: dict, tent_lr=None, **extra) -> dict:
    """One ``metrics.jsonl`` line of a stream's result ``r`` (``kind``: ``eval`` or ``select``)."""
    lr = {} if tent_lr is None else {"tent_lr": tent_lr}
    if not r["finite"]:
        return {"kind": "divergence", "stage": kind, **where, "mode": mode, **lr, "reason": "non-finite logits"}
    return {"kind": kind, **where, "mode": mode, "error": r["error"], "entropy": r["entropy"], "n": int(r["correct"].size), "updates": r["updates"], **lr, **extra}


def evaluate(setup: TentSetup, module, variables: Sequence[dict], log=print) -> list[tuple[list, dict, dict, dict]]:
    """For the trained ``variables`` of every seed (one ``module``): TENT's lr chosen on the held-out
    streams (if ``'tent'`` is a mode: ``select`` records of ``batch`` and TENT at every lr, and
    ``selection.json``), then every test stream (the clean one first) in every mode from the
    trained variables, each stream corrupted once for all seeds. Per seed ``(records, correct, examples, selection)``."""
    train = load(setup.train.dataset, setup.train.train_split)
    opt, tuning = adapt.tent_optimizer(setup.tent_optimizer, setup.tent_lrs[0], setup.tent_momentum), "tent" in setup.modes  # one optimizer object: one compiled TENT step
    states = [(adapt.init_tent if tuning else adapt.source_state)(v, opt) for v in variables]
    steps = adapt.make_steps(module, setup.modes, tent_steps=setup.tent_steps)
    out = [([], {}, {}, {}) for _ in variables]
    select = {"batch": steps.get("batch") or adapt.make_step(module, "batch"), "tent": steps.get("tent")}
    for kind, sev, _, images, labels in _streams(setup, held_out=True) if tuning else ():
        x, where = normalize(images, train.mean, train.std), {"corruption": kind, "severity": sev}
        for (records, *_), state in zip(out, states):
            for mode, lr in [("batch", None)] + [("tent", v) for v in setup.tent_lrs]:
                r = adapt.evaluate_stream({mode: select[mode]}, state if lr is None else adapt.with_learning_rate(state, lr), x, labels, setup.batch_size)[mode]
                records.append(_record("select", where, mode, r, tent_lr=lr))
    for i, (records, _, _, sel) in enumerate(out):
        if tuning:
            sel.update(split=setup.select_split, start=setup.held_out_start, n=len(labels), noise_seed=setup.select_seed,
                       corruptions=list(setup.held_out_corruptions), severities=list(setup.severities), **selection_of(records, setup.tent_lrs))
            states[i] = adapt.with_learning_rate(states[i], sel["chosen"])
            log(f"  model {i + 1}: TENT lr {sel['chosen']:g} chosen on the held-out streams (mean error per lr: "
                + ", ".join(f"{v:g} {'diverged' if m is None else f'{m:.4f}'}" for v, m in zip(sel["lrs"], sel["mean_error"])) + ")")
    for kind, sev, clean, images, labels in _streams(setup, held_out=False):
        quality = None if clean is None or kind == "none" else float(psnr(clean, images))
        x, where, errs = normalize(images, train.mean, train.std), {"corruption": kind, "severity": sev}, {}
        for (records, correct, examples, sel), state in zip(out, states):
            examples[f"{kind}/{sev}"] = np.asarray(images[0])
            for mode, r in adapt.evaluate_stream(steps, state, x, labels, setup.batch_size).items():
                records.append(_record("eval", where, mode, r, tent_lr=sel.get("chosen") if mode == "tent" else None, psnr=quality))
                if r["finite"]:
                    correct[f"{mode}/{kind}/{sev}"] = r["correct"]
                    errs.setdefault(mode, []).append(r["error"])
        log(f"  {kind:>15s} {sev}: " + ", ".join(f"{m} {np.mean(e):.3f}" for m, e in errs.items())
            + (f"  (PSNR {quality:.1f} dB)" if quality is not None else "") + (f"; mean of {len(out)} models" if len(out) > 1 else ""))  # fmt: skip
    return out


def adapt_trained(setup: TentSetup, results) -> None:
    """The group's ``after`` step: evaluates the finished runs (all seeds at once) into their
    ``adaptation/``, skipping those that hold it with these settings; other stored settings:
    ValueError (nothing is overwritten)."""
    settings, todo = setup.eval_settings(), []
    for r in results:
        out = pathlib.Path(r.run_dir) / "adaptation"
        if (out / "settings.json").is_file():
            stored = read_json(out / "settings.json")
            if stored == settings:
                continue
            diff = ", ".join(sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k)))
            raise ValueError(f"{out} holds an evaluation with other settings ({diff}); use another --results, or --overwrite to retrain and evaluate again.")
        if r.status == "finished":
            todo.append(r)
    if not todo:
        return
    config = TrainConfig.from_dict(read_json(pathlib.Path(todo[0].run_dir) / "config.json"))  # the seeds differ in seed only
    module = build_model(config, load(config.dataset, config.train_split).num_classes)
    done = evaluate(setup, module, [{"params": r.state.params, "batch_stats": r.state.batch_stats} for r in todo])
    for r, (records, correct, examples, selection) in zip(todo, done):
        out = pathlib.Path(r.run_dir) / "adaptation"
        write_npz(out / "correct.npz", correct)
        write_npz(out / "examples.npz", examples)
        write_json(out / "selection.json", selection)
        rewrite_jsonl(out / "metrics.jsonl", records)
        write_json(out / "settings.json", settings)  # last: marks the evaluation complete


class TentStudy:
    name = "tent"
    setups = SETUPS
    default = "digits"

    def add_arguments(self, parser) -> None:
        parser.add_argument("--corruptions", nargs="+", help="corruption kinds")
        parser.add_argument("--modes", nargs="+", help=f"subset of {list(adapt.MODES)}")
        parser.add_argument("--batch-size", type=int, help="test batch size")
        parser.add_argument("--passes", type=int, help="passes over the test set per stream")
        parser.add_argument("--tent-lrs", dest="tent_lrs", type=float, nargs="+", help="TENT learning rates to choose from on the held-out stream")
        parser.add_argument("--tent-optimizer", choices=sorted(OPTIMIZERS), help="TENT's optimizer")
        parser.add_argument("--tent-steps", type=int, help="TENT updates per batch")

    def groups(self, setup: TentSetup, seeds: Sequence[int], root: pathlib.Path) -> list[RunGroup]:
        """Every seed's training run (``train``, ``train_s<seed>``) as one program, and their evaluation."""
        configs = [setup.train.replace(seed=s, **run_location(root), name="train" + (f"_s{s}" if s else "")) for s in seeds]
        return [RunGroup(tuple(configs), observers=list, after=functools.partial(adapt_trained, setup))]

    def analyze(self, setup: TentSetup, root: pathlib.Path) -> str:
        return analyze_tent(root)


STUDY = TentStudy()


def main(argv=None) -> int:
    return jaxnorm.study.main(STUDY, argv)


if __name__ == "__main__":
    raise SystemExit(main())
