"""Training-step benchmark: jaxnorm vs Flax's BatchNorm vs PyTorch, and the multi-run strategies.

A benchmark, not a test. Writes a markdown section for this machine into BENCHMARKS.md.

    python -m experiments.benchmarks.train_step            # full settings (meant for a GPU)
    python -m experiments.benchmarks.train_step --quick    # < 10 min on a 2-core CPU
    python -m experiments.benchmarks.train_step --quick --steps 10 --sections main
    python -m experiments.benchmarks.train_step --quick --out -   # print only, write nothing

What is measured (the same model, batch and on-device data on every side):

* **main** -- for 3C3D (batch 128, 10 classes) and All-CNN-C (batch 256, 100 classes), each
  ``vanilla`` and ``bn_gamma_beta``:

  - ``jaxnorm``: ``jax.jit(make_train_step(...), donate_argnums=0)``, plain SGD lr 0.01,
    ``augment_config=None`` (normalization only);
  - ``jaxnorm|min`` and ``flax|min``: the jaxnorm model and the same network written with
    ``flax.linen.BatchNorm``, both through one minimal step written here (gather by
    ``perm``, normalize, ``value_and_grad`` with mutable ``batch_stats``, ``optax.sgd``),
    so the only difference is the BN layer. Their ratio is "jaxnorm/flax". For
    ``vanilla`` the two models are the same plain ``nn.Conv``/``nn.Dense`` network, so
    that ratio shows the noise floor.
  - ``torch``/``torch-cl``: the same network in PyTorch (NCHW contiguous / channels_last),
    the dataset resident in memory, indexed by a permutation tensor, ``torch.optim.SGD``,
    ``torch.set_num_threads`` left at its default. Skipped with a note if torch is missing.

  Before timing, a parity check feeds the jaxnorm model's parameters to the Flax and the
  PyTorch networks and compares the training-mode logits on one batch (``--no-check``
  skips it): the three sides compute the same function.

* **multi** -- N = 1, 4, 8 stacked runs of 3C3D ``bn_gamma_beta`` (batch 128):
  ``jit(map_over_runs(step, strategy, (0, None, 0, 0, None, None), N), donate_argnums=0)``
  for ``vmap``, ``loop`` and ``map``; aggregate images/s = N * batch / median.

* **cpu** (CPU backend only) -- things that might help XLA on a CPU, on 3C3D
  ``bn_gamma_beta``: XLA flags (each in its own worker process, since ``XLA_FLAGS`` is read
  once per process), bf16 compute (in the Flax reference network, not in the library) and a
  max pool written as nine strided slices (its backward pass is elementwise selects instead
  of XLA's ``select_and_scatter``).

How it is timed: every step is timed on its own -- a host clock around the call and
``jax.block_until_ready`` on the returned (state, metrics); for torch the step is
synchronous on the CPU (``torch.cuda.synchronize()`` on a GPU). The first call (trace +
compile + one step) is reported separately as "first call"; then ``warmup`` untimed steps;
then the variants of one comparison run interleaved in blocks of ``block`` steps (round
robin), so that load from other processes hits all of them alike. The table reports the
median, the interquartile range relative to the median, and the minimum. The step index
walks through the epoch's permutation, so every step sees a different batch of a
synthetic, uniformly random dataset (never zeros) that stays on the device.
"""

from __future__ import annotations

import abc

import argparse
import dataclasses
import datetime
import functools
import importlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

# jax preallocates most of a GPU's memory; the torch side needs some of it too.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnorm.models import get_model
from jaxnorm.train.multi_run import map_over_runs, stack
from jaxnorm.train.optim import make_optimizer
from jaxnorm.train.state import create_state
from jaxnorm.train.step import make_train_step

REPO = Path(__file__).resolve().parents[2]
LR = 0.01
CIFAR10 = ((0.49139968, 0.48215841, 0.44653091), (0.24703223, 0.24348513, 0.26158784))
CIFAR100 = ((0.50707516, 0.48654887, 0.44091784), (0.26733429, 0.25643846, 0.27615047))
MODELS = {  # name -> (classes, default batch, normalization constants)
    "3c3d": (10, 128, CIFAR10),
    "allcnnc": (100, 256, CIFAR100),
}
NORMS = ("vanilla", "bn_gamma_beta")
STRATEGIES = ("vmap", "loop", "map")
CPU_FLAG_SETS = (
    "",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_multi_thread_eigen=false",
)


# --------------------------------------------------------------------------------------
# Settings.


@dataclasses.dataclass
class Settings:
    main_steps: dict  # model -> timed steps
    batch: dict  # model -> batch size
    warmup: int
    block: int
    multi_runs: tuple
    multi_steps: dict  # N -> timed steps
    multi_strategies: dict  # N -> strategies measured
    multi_cap: dict  # strategy -> at most this many timed steps
    multi_warmup: int
    cpu_steps: int
    num_examples: int

    @staticmethod
    def full() -> "Settings":
        return Settings(
            main_steps={"3c3d": 50, "allcnnc": 50},
            batch={m: b for m, (_, b, _) in MODELS.items()},
            warmup=5,
            block=10,
            multi_runs=(1, 4, 8),
            multi_steps={1: 50, 4: 50, 8: 50},
            multi_strategies={1: STRATEGIES, 4: STRATEGIES, 8: STRATEGIES},
            multi_cap={},
            multi_warmup=3,
            cpu_steps=30,
            num_examples=40_000,
        )

    @staticmethod
    def quick() -> "Settings":
        # Tuned so the whole run stays under 10 minutes on a 2-core CPU (see BENCHMARKS.md):
        # All-CNN-C at batch 256 takes ~11 s per step there, 'map' ~6 s per run per step.
        return Settings(
            main_steps={"3c3d": 30, "allcnnc": 8},
            batch={"3c3d": 128, "allcnnc": 32},
            warmup=1,
            block=5,
            multi_runs=(1, 4, 8),
            multi_steps={1: 10, 4: 3, 8: 3},
            multi_strategies={1: STRATEGIES, 4: ("vmap", "loop"), 8: ("vmap", "loop")},
            multi_cap={"map": 3},
            multi_warmup=0,
            cpu_steps=10,
            num_examples=10_000,
        )


# --------------------------------------------------------------------------------------
# Data: synthetic, resident on the device.


def make_data(num_examples: int, num_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.random((num_examples, 32, 32, 3), dtype=np.float32)  # uniform [0, 1), never zeros
    labels = rng.integers(0, num_classes, num_examples).astype(np.int32)
    perm = rng.permutation(num_examples).astype(np.int32)
    return images, labels, perm


# --------------------------------------------------------------------------------------
# (b) The same networks with flax.linen.BatchNorm, and a minimal step.

_glorot_normal = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")  # untruncated, like jaxnorm's default
_glorot_uniform = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def _flax_bn(train: bool, name: str, dtype):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)


def slice_max_pool(x: jax.Array) -> jax.Array:
    """3x3 stride-2 'SAME' max pool as the maximum of nine strided slices.

    Equal to ``nn.max_pool(x, (3, 3), (2, 2), 'SAME')`` for inputs >= 0 (post-ReLU: zero
    padding then equals -inf padding). Its gradient splits ties between equal maxima,
    where ``select_and_scatter`` gives all to one; after a ReLU that only differs for
    exactly equal positive values.
    """
    n, h, w, c = x.shape
    oh, ow = -(-h // 2), -(-w // 2)
    ph, pw = max((oh - 1) * 2 + 3 - h, 0), max((ow - 1) * 2 + 3 - w, 0)
    xp = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = None
    for i in range(3):
        for j in range(3):
            s = jax.lax.slice(xp, (0, i, j, 0), (n, i + 2 * (oh - 1) + 1, j + 2 * (ow - 1) + 1, c), (1, 2, 2, 1))
            out = s if out is None else jnp.maximum(out, s)
    return out


class FlaxThreeCThreeD(nn.Module):
    """3C3D with ``flax.linen.BatchNorm`` after conv1..3 and dense1..2 (bias dropped there).
    Submodule names equal jaxnorm's, so the two models share one parameter tree."""

    num_classes: int = 10
    bn: bool = False
    dtype: Any = None
    pool: str = "max_pool"  # or "slices"

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(nn.Conv, kernel_init=_glorot_normal, dtype=self.dtype)
        dense = functools.partial(nn.Dense, kernel_init=_glorot_uniform, dtype=self.dtype)
        if self.pool == "slices":
            pool = slice_max_pool
        else:
            pool = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2), padding="SAME")

        def block(x, k, layer):
            x = layer(use_bias=not self.bn)(x)
            if self.bn:
                x = _flax_bn(train, f"norm{k}", self.dtype)(x)
            return nn.relu(x)

        x = pool(block(x, 1, functools.partial(conv, 64, (5, 5), padding="VALID", name="conv1")))
        x = pool(block(x, 2, functools.partial(conv, 96, (3, 3), padding="VALID", name="conv2")))
        x = pool(block(x, 3, functools.partial(conv, 128, (3, 3), padding="SAME", name="conv3")))
        x = x.reshape((x.shape[0], -1))
        x = block(x, 4, functools.partial(dense, 512, name="dense1"))
        x = block(x, 5, functools.partial(dense, 256, name="dense2"))
        return dense(self.num_classes, name="dense3")(x).astype(jnp.float32)


class FlaxAllCNNC(nn.Module):
    """All-CNN-C with ``flax.linen.BatchNorm`` after conv1..8 (bias dropped there)."""

    num_classes: int = 100
    bn: bool = False
    dtype: Any = None
    input_dropout: float = 0.2
    hidden_dropout: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool):
        layers = [
            (96, (3, 3), 1, "SAME"), (96, (3, 3), 1, "SAME"), (96, (3, 3), 2, "SAME"),
            (192, (3, 3), 1, "SAME"), (192, (3, 3), 1, "SAME"), (192, (3, 3), 2, "SAME"),
            (192, (3, 3), 1, "VALID"), (192, (1, 1), 1, "VALID"), (self.num_classes, (1, 1), 1, "VALID"),
        ]  # fmt: skip
        x = nn.Dropout(self.input_dropout, deterministic=not train)(x)
        for i, (features, kernel, stride, padding) in enumerate(layers):
            with_bn = self.bn and i < 8
            x = nn.Conv(features, kernel, strides=stride, padding=padding, use_bias=not with_bn,
                        kernel_init=_glorot_normal, dtype=self.dtype, name=f"conv{i + 1}")(x)  # fmt: skip
            if with_bn:
                x = _flax_bn(train, f"norm{i + 1}", self.dtype)(x)
            x = nn.relu(x)
            if i in (2, 5):
                x = nn.Dropout(self.hidden_dropout, deterministic=not train)(x)
        return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


def flax_model(name: str, norm: str, num_classes: int, **kw) -> nn.Module:
    bn = {"vanilla": False, "bn_gamma_beta": True}[norm]
    return {"3c3d": FlaxThreeCThreeD, "allcnnc": FlaxAllCNNC}[name](num_classes=num_classes, bn=bn, **kw)


@flax.struct.dataclass
class MinState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def min_state(key, module, tx, sample) -> MinState:
    variables = module.init(key, sample, train=False)
    return MinState(jnp.zeros((), jnp.int32), variables["params"], variables.get("batch_stats", {}), tx.init(variables["params"]))


def make_minimal_step(module, tx, *, batch_size: int, mean, std) -> Callable:
    """What ``make_train_step`` computes without augmentation or weight decay, written with
    plain optax/flax calls: gather by ``perm``, normalize, one SGD step."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)

    def step(state: MinState, data, perm, seed, epoch, step_in_epoch):
        images, labels = data
        idx = jax.lax.dynamic_slice(perm, (jnp.asarray(step_in_epoch, jnp.int32) * batch_size,), (batch_size,))
        x, y = (images[idx] - mean) / std, labels[idx]
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), epoch), step_in_epoch)
        _, dropout_key = jax.random.split(key)

        def loss_fn(params):
            variables = {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
            logits, upd = module.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": dropout_key})
            ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
            acc = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
            return ce, (acc, upd.get("batch_stats", state.batch_stats))

        (loss, (acc, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)  # fmt: skip
        return new, {"loss": loss, "acc": acc}

    return step


# --------------------------------------------------------------------------------------
# (c) PyTorch reference.


def optional_import(name: str):
    """The module ``name`` (e.g. ``'torch'``, ``'backpack'``), or None where it does not
    import -- ImportError, or a broken install: the PyTorch baselines of every benchmark
    are optional (the ``bench`` extra)."""
    try:
        return importlib.import_module(name)
    except Exception:
        return None


def _same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    """TF/XLA 'SAME' padding (before, after) of one spatial axis."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def build_torch_model(name: str, norm: str, num_classes: int, *, dropout: bool = True):
    """The network in PyTorch, NCHW. TF 'SAME' padding: symmetric cases use the conv's own
    padding, asymmetric ones (stride 2, and the max pools) an explicit zero pad, as the
    DeepOBS PyTorch code does. BN: ``BatchNorm2d/1d(eps=1e-5, momentum=0.1)`` (= Flax 0.9)."""
    torch = optional_import("torch")
    tnn = torch.nn
    F = torch.nn.functional
    bn = {"vanilla": False, "bn_gamma_beta": True}[norm]

    class Pad(tnn.Module):
        def __init__(self, pads):
            super().__init__()
            self.pads = pads  # (left, right, top, bottom)

        def forward(self, x):
            return F.pad(x, self.pads)

    def conv(cin, cout, k, s, padding, size, bias):
        if padding == "VALID":
            return [tnn.Conv2d(cin, cout, k, s, padding=0, bias=bias)], (size - k) // s + 1
        lo, hi = _same_pad(size, k, s)
        out = -(-size // s)
        if lo == hi:
            return [tnn.Conv2d(cin, cout, k, s, padding=lo, bias=bias)], out
        return [Pad((lo, hi, lo, hi)), tnn.Conv2d(cin, cout, k, s, padding=0, bias=bias)], out

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = tnn.ModuleDict()
            size, cin = 32, 3
            if name == "3c3d":
                spec = [(64, 5, 1, "VALID"), (96, 3, 1, "VALID"), (128, 3, 1, "SAME")]
                for i, (cout, k, s, pad) in enumerate(spec):
                    layers, size = conv(cin, cout, k, s, pad, size, bias=not bn)
                    layers += [tnn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)] if bn else []
                    lo, hi = _same_pad(size, 3, 2)
                    layers += [tnn.ReLU(), Pad((lo, hi, lo, hi)), tnn.MaxPool2d(3, 2)]
                    size = -(-size // 2)
                    self.blocks[f"conv{i + 1}"] = tnn.Sequential(*layers)
                    cin = cout
                self.blocks["flatten"] = tnn.Flatten()
                fin = cin * size * size
                for i, fout in enumerate((512, 256)):
                    layers = [tnn.Linear(fin, fout, bias=not bn)]
                    layers += [tnn.BatchNorm1d(fout, eps=1e-5, momentum=0.1)] if bn else []
                    self.blocks[f"dense{i + 1}"] = tnn.Sequential(*layers, tnn.ReLU())
                    fin = fout
                self.blocks["dense3"] = tnn.Sequential(tnn.Linear(fin, num_classes))
            else:
                spec = [(96, 3, 1, "SAME"), (96, 3, 1, "SAME"), (96, 3, 2, "SAME"),
                        (192, 3, 1, "SAME"), (192, 3, 1, "SAME"), (192, 3, 2, "SAME"),
                        (192, 3, 1, "VALID"), (192, 1, 1, "VALID"), (num_classes, 1, 1, "VALID")]  # fmt: skip
                self.blocks["drop0"] = tnn.Dropout(0.2 if dropout else 0.0)
                for i, (cout, k, s, pad) in enumerate(spec):
                    with_bn = bn and i < 8
                    layers, size = conv(cin, cout, k, s, pad, size, bias=not with_bn)  # conv9 keeps its bias
                    layers += [tnn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)] if with_bn else []
                    self.blocks[f"conv{i + 1}"] = tnn.Sequential(*layers, tnn.ReLU())
                    if i in (2, 5):
                        self.blocks[f"drop{i}"] = tnn.Dropout(0.5 if dropout else 0.0)
                    cin = cout
            for m in self.modules():
                if isinstance(m, tnn.Conv2d):
                    tnn.init.xavier_normal_(m.weight)
                elif isinstance(m, tnn.Linear):
                    tnn.init.xavier_uniform_(m.weight)
                if isinstance(m, (tnn.Conv2d, tnn.Linear)) and m.bias is not None:
                    tnn.init.zeros_(m.bias)

        def forward(self, x):
            for block in self.blocks.values():
                x = block(x)
            return x.mean(dim=(2, 3)) if name == "allcnnc" else x

    return Net()


def load_flax_into_torch(tmodel, variables, name: str):
    """Copies a jaxnorm/flax parameter tree into :func:`build_torch_model`'s network."""
    torch = optional_import("torch")
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))
    with torch.no_grad():
        for key, block in tmodel.blocks.items():
            if key not in params:
                continue
            p = params[key]
            weight = [m for m in block if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))][0]
            kernel = np.asarray(p["kernel"])
            if kernel.ndim == 4:  # HWIO -> OIHW
                weight.weight.copy_(t(kernel.transpose(3, 2, 0, 1)))
            else:
                if key == "dense1":  # flax flattens (h, w, c), torch (c, h, w)
                    side = int(round((kernel.shape[0] / 128) ** 0.5))
                    kernel = kernel.reshape(side, side, 128, -1).transpose(2, 0, 1, 3).reshape(kernel.shape)
                weight.weight.copy_(t(kernel.T))
            if "bias" in p:
                weight.bias.copy_(t(p["bias"]))
            norm_key = "norm" + key[len("conv"):] if key.startswith("conv") else "norm" + str(3 + int(key[-1]))
            bnm = [m for m in block if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
            if bnm and norm_key in params:
                bnm[0].weight.copy_(t(params[norm_key]["scale"]))
                bnm[0].bias.copy_(t(params[norm_key]["bias"]))
                bnm[0].running_mean.copy_(t(stats[norm_key]["mean"]))
                bnm[0].running_var.copy_(t(stats[norm_key]["var"]))


# --------------------------------------------------------------------------------------
# Runners: one variant of a comparison, stepped on demand.


class Runner(abc.ABC):
    label: str
    images_per_step: int

    @abc.abstractmethod
    def first(self) -> float:
        """The first call, timed (compile + one step)."""

    @abc.abstractmethod
    def steps(self, k: int) -> list[float]:
        """``k`` timed steps."""

    def close(self) -> None:
        pass


class JaxRunner(Runner):
    def __init__(self, label, step_fn, state, data, perm, seed, batch, num_examples, runs: int = 1):
        self.label = label
        self.fn = jax.jit(step_fn, donate_argnums=0)
        self.state, self.data, self.perm, self.seed = state, data, perm, seed
        self.steps_per_epoch = num_examples // batch
        self.images_per_step = runs * batch
        self.i = 0

    def _one(self) -> float:
        s = self.i % self.steps_per_epoch
        self.i += 1
        t0 = time.perf_counter()
        self.state, metrics = self.fn(self.state, self.data, self.perm, self.seed, 0, s)
        jax.block_until_ready((self.state, metrics))
        dt = time.perf_counter() - t0
        self.last_loss = metrics["loss"]
        return dt

    def first(self) -> float:
        return self._one()

    def steps(self, k: int) -> list[float]:
        return [self._one() for _ in range(k)]

    def check_finite(self) -> bool:
        return bool(np.all(np.isfinite(np.asarray(self.last_loss))))


class TorchRunner(Runner):
    def __init__(self, label, name, norm, num_classes, images_nhwc, labels, perm, mean, std, batch, channels_last: bool):
        torch = optional_import("torch")
        self.torch = torch
        self.label = label
        self.dev = torch.device("cuda" if (torch.cuda.is_available() and jax.default_backend() == "gpu") else "cpu")
        torch.manual_seed(0)
        self.model = build_torch_model(name, norm, num_classes).to(self.dev)
        self.channels_last = channels_last
        nhwc = torch.from_numpy(images_nhwc).to(self.dev)
        # Resident in the layout the variant computes in: NHWC storage for channels_last.
        self.images = nhwc if channels_last else nhwc.permute(0, 3, 1, 2).contiguous()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(self.dev)
        self.perm = torch.from_numpy(perm.astype(np.int64)).to(self.dev)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.dev).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.dev).view(1, 3, 1, 1)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR)
        self.batch = batch
        self.images_per_step = batch
        self.steps_per_epoch = len(labels) // batch
        self.i = 0
        self.model.train()

    def _sync(self):
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def _one(self) -> float:
        s = self.i % self.steps_per_epoch
        self.i += 1
        self._sync()
        t0 = time.perf_counter()
        idx = self.perm[s * self.batch : (s + 1) * self.batch]
        x = self.images.index_select(0, idx)
        x = x.permute(0, 3, 1, 2) if self.channels_last else x  # NHWC storage -> NCHW view
        x = (x - self.mean) / self.std
        y = self.labels.index_select(0, idx)
        self.opt.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = self.torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        self.opt.step()
        _acc = (logits.detach().argmax(1) == y).float().mean()
        self._sync()
        dt = time.perf_counter() - t0
        self.last_loss = loss.detach()
        return dt

    def first(self) -> float:
        return self._one()

    def steps(self, k: int) -> list[float]:
        return [self._one() for _ in range(k)]


class WorkerRunner(Runner):
    """A jaxnorm step in a child process with its own ``XLA_FLAGS``, driven over pipes."""

    def __init__(self, label, spec: dict, xla_flags: str):
        self.label = label
        self.images_per_step = spec["batch"]
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "experiments.benchmarks.train_step", "--_worker", json.dumps(spec)],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True, bufsize=1,
        )  # fmt: skip
        self.info = None

    def wait_ready(self) -> "WorkerRunner":
        if self.info is None:
            self.info = self._read()
        return self

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        self.err.seek(0)
        raise RuntimeError(f"worker {self.label!r} died:\n{self.err.read()[-3000:]}")

    def _ask(self, cmd: str):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def first(self) -> float:
        return self._ask("first")

    def steps(self, k: int) -> list[float]:
        return self._ask(f"steps {k}")

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
        self.err.seek(0)
        self.warnings = [l for l in self.err.read().splitlines() if "no longer supported" in l or "Unknown flag" in l]


def worker_main(spec: dict) -> None:
    """Child process of :class:`WorkerRunner`: builds one jaxnorm step, answers commands."""
    name, norm, batch = spec["model"], spec["norm"], spec["batch"]
    runner = jaxnorm_runner("w", name, norm, batch, spec["num_examples"])
    out = sys.stdout

    def reply(obj):
        out.write("@@" + json.dumps(obj) + "\n")
        out.flush()

    reply({"xla_flags": os.environ.get("XLA_FLAGS", ""), "devices": [str(d) for d in jax.devices()]})
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "first":
            reply(runner.first())
        elif cmd[0] == "steps":
            reply(runner.steps(int(cmd[1])))


# --------------------------------------------------------------------------------------
# Building the variants.

_DATA_CACHE: dict = {}


def dataset(num_examples: int, num_classes: int):
    key = (num_examples, num_classes)
    if key not in _DATA_CACHE:
        images, labels, perm = make_data(num_examples, num_classes)
        dev = (jax.device_put(images), jax.device_put(labels))
        _DATA_CACHE[key] = (images, labels, perm, dev, jax.device_put(perm))
    return _DATA_CACHE[key]


def jaxnorm_runner(label, name, norm, batch, num_examples) -> JaxRunner:
    classes, _, (mean, std) = MODELS[name]
    _, _, _, data, perm = dataset(num_examples, classes)
    module = get_model(name, norm=norm, num_classes=classes)
    tx = make_optimizer(LR)
    state = create_state(jax.random.PRNGKey(0), module, tx, data[0][:2])
    step = make_train_step(module, tx, batch_size=batch, mean=mean, std=std, augment_config=None)
    return JaxRunner(label, step, state, data, perm, 0, batch, num_examples)


def minimal_runner(label, module, name, batch, num_examples) -> JaxRunner:
    classes, _, (mean, std) = MODELS[name]
    _, _, _, data, perm = dataset(num_examples, classes)
    tx = optax.sgd(LR)
    state = min_state(jax.random.PRNGKey(0), module, tx, data[0][:2])
    step = make_minimal_step(module, tx, batch_size=batch, mean=mean, std=std)
    return JaxRunner(label, step, state, data, perm, 0, batch, num_examples)


def torch_runner(label, name, norm, batch, num_examples, channels_last) -> TorchRunner:
    classes, _, (mean, std) = MODELS[name]
    images, labels, perm, _, _ = dataset(num_examples, classes)
    return TorchRunner(label, name, norm, classes, images, labels, perm, mean, std, batch, channels_last)


def multi_runner(label, strategy, runs, batch, num_examples) -> JaxRunner:
    classes, _, (mean, std) = MODELS["3c3d"]
    _, _, perm_np, data, _ = dataset(num_examples, classes)
    module = get_model("3c3d", norm="bn_gamma_beta", num_classes=classes)
    tx = make_optimizer(LR)
    states = stack([create_state(jax.random.PRNGKey(r), module, tx, data[0][:2]) for r in range(runs)])
    rng = np.random.default_rng(1)
    perms = jnp.asarray(np.stack([rng.permutation(num_examples).astype(np.int32) for _ in range(runs)]))
    step = make_train_step(module, tx, batch_size=batch, mean=mean, std=std, augment_config=None)
    fn = map_over_runs(step, strategy, (0, None, 0, 0, None, None), runs)
    return JaxRunner(label, fn, states, data, perms, jnp.arange(runs, dtype=jnp.int32), batch, num_examples, runs)


# --------------------------------------------------------------------------------------
# Parity: the three sides compute the same function.


def parity(name: str, norm: str, batch: int = 16) -> dict:
    classes, _, (mean, std) = MODELS[name]
    rng = np.random.default_rng(2)
    x_raw = rng.random((batch, 32, 32, 3), dtype=np.float32)
    x = (x_raw - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    no_drop = {"input_dropout": 0.0, "hidden_dropout": 0.0} if name == "allcnnc" else {}
    jm = get_model(name, norm=norm, num_classes=classes, **no_drop)
    variables = jm.init(jax.random.PRNGKey(3), x[:2], train=False)
    if "batch_stats" in variables:  # non-trivial running statistics (train mode ignores them)
        variables = {**variables, "batch_stats": jax.tree.map(lambda v: v + 0.1, variables["batch_stats"])}
    fwd = lambda m: jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"])[0])
    ref = np.asarray(fwd(jm)(variables, x), np.float64)
    rel = lambda a: float(np.linalg.norm(np.asarray(a, np.float64) - ref) / np.linalg.norm(ref))
    out = {}
    fm = flax_model(name, norm, classes, **no_drop)
    fvars = fm.init(jax.random.PRNGKey(3), x[:2], train=False)
    same_tree = jax.tree.structure(fvars) == jax.tree.structure(variables) and all(
        a.shape == b.shape for a, b in zip(jax.tree.leaves(fvars), jax.tree.leaves(variables))
    )
    out["flax_tree_equal"] = same_tree
    out["flax_rel_err"] = rel(fwd(fm)(variables, x)) if same_tree else float("nan")
    if name == "3c3d" and norm == "bn_gamma_beta":
        out["slices_rel_err"] = rel(fwd(flax_model(name, norm, classes, pool="slices"))(variables, x))
    torch = optional_import("torch")
    if torch is not None:
        tm = build_torch_model(name, norm, classes, dropout=False)
        load_flax_into_torch(tm, variables, name)
        tm.train()
        with torch.no_grad():
            tl = tm(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
        out["torch_rel_err"] = rel(tl)
        n_t = sum(p.numel() for p in tm.parameters())
        n_j = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables["params"]))
        out["param_counts"] = (n_j, n_t)
    return out


# --------------------------------------------------------------------------------------
# Measuring.


@dataclasses.dataclass
class Result:
    label: str
    images_per_step: int
    first_s: float
    times: list

    @property
    def median(self) -> float:
        return float(np.median(self.times))

    @property
    def iqr_pct(self) -> float:
        q1, q3 = np.percentile(self.times, [25, 75])
        return float(100 * (q3 - q1) / self.median)

    @property
    def min(self) -> float:
        return float(np.min(self.times))

    @property
    def ips(self) -> float:
        return self.images_per_step / self.median


def measure(runners: Sequence[Runner], steps, warmup: int, block: int, log) -> list[Result]:
    """First call of each runner, ``warmup`` untimed steps, then ``steps`` timed steps each
    (an int, or a dict label -> int), interleaved round robin in blocks of ``block``."""
    want = steps if isinstance(steps, dict) else {r.label: steps for r in runners}
    firsts = {}
    for r in runners:
        firsts[r.label] = r.first()
        log(f"    {r.label:<28s} first call {firsts[r.label]:7.2f} s")
    for r in runners:
        r.steps(warmup)
    times = {r.label: [] for r in runners}
    while any(len(t) < want[label] for label, t in times.items()):
        for r in runners:
            k = min(block, want[r.label] - len(times[r.label]))
            if k > 0:
                times[r.label] += r.steps(k)
    results = [Result(r.label, r.images_per_step, firsts[r.label], times[r.label]) for r in runners]
    for res in results:
        log(f"    {res.label:<28s} median {1e3 * res.median:9.1f} ms  IQR {res.iqr_pct:5.1f}%  {res.ips:8.1f} img/s")
    return results


def load_average() -> str:
    """The 1/5/15-minute load averages, '1.7/1.9/2.1' ('n/a' where the OS has none)."""
    try:
        return "%.1f/%.1f/%.1f" % os.getloadavg()
    except OSError:
        return "n/a"


# --------------------------------------------------------------------------------------
# Sections.


def run_main(cfg: Settings, args, log) -> dict:
    has_torch = optional_import("torch") is not None and not args.no_torch
    out = {"groups": [], "parity": {}, "torch": has_torch}
    for name in args.models.split(","):
        batch, steps = cfg.batch[name], (args.steps or cfg.main_steps[name])
        for norm in NORMS:
            log(f"  main: {name} {norm} batch {batch}, {steps} timed steps (load {load_average()})")
            if not args.no_check:
                out["parity"][(name, norm)] = p = parity(name, norm)
                log(f"    parity: {p}")
            runners = [
                jaxnorm_runner("jaxnorm", name, norm, batch, cfg.num_examples),
                minimal_runner("jaxnorm|min", get_model(name, norm=norm, num_classes=MODELS[name][0]), name, batch, cfg.num_examples),
                minimal_runner("flax|min", flax_model(name, norm, MODELS[name][0]), name, batch, cfg.num_examples),
            ]  # fmt: skip
            if has_torch:
                runners += [
                    torch_runner("torch", name, norm, batch, cfg.num_examples, channels_last=False),
                    torch_runner("torch-cl", name, norm, batch, cfg.num_examples, channels_last=True),
                ]
            load0 = load_average()
            res = measure(runners, steps, cfg.warmup, cfg.block, log)
            finite = all(np.all(np.isfinite(np.asarray(r.last_loss.cpu() if hasattr(r.last_loss, "cpu") else r.last_loss))) for r in runners)
            out["groups"].append({"model": name, "norm": norm, "batch": batch, "steps": steps, "results": res,
                                  "load": (load0, load_average()), "finite": finite})  # fmt: skip
            for r in runners:
                r.close()
    return out


def run_multi(cfg: Settings, args, log) -> dict:
    batch = MODELS["3c3d"][1]
    groups = []
    for n in cfg.multi_runs:
        steps = args.multi_steps or cfg.multi_steps[n]
        strategies = cfg.multi_strategies[n]
        log(f"  multi: N={n} {strategies}, {steps} timed steps (load {load_average()})")
        runners = [multi_runner(s, s, n, batch, cfg.num_examples) for s in strategies]
        load0 = load_average()
        want = {s: min(steps, cfg.multi_cap.get(s, steps)) for s in strategies}
        res = measure(runners, want, cfg.multi_warmup, cfg.block, log)
        groups.append({"runs": n, "steps": want, "results": res, "load": (load0, load_average()),
                       "skipped": [s for s in STRATEGIES if s not in strategies]})  # fmt: skip
    return {"groups": groups, "batch": batch}


def run_cpu(cfg: Settings, args, log) -> dict:
    name, norm = "3c3d", "bn_gamma_beta"
    batch, steps = cfg.batch[name], (args.steps or cfg.cpu_steps)
    out = {"steps": steps, "batch": batch}
    log(f"  cpu: XLA flags, jaxnorm step {name} {norm} (load {load_average()})")
    spec = {"model": name, "norm": norm, "batch": batch, "num_examples": cfg.num_examples}
    runners = [WorkerRunner(flags or "(none)", spec, flags) for flags in CPU_FLAG_SETS]  # start together
    runners = [r.wait_ready() for r in runners]
    load0 = load_average()
    out["flags"] = measure(runners, steps, cfg.warmup, cfg.block, log)
    out["flags_load"] = (load0, load_average())
    for r in runners:
        r.close()
    out["flag_warnings"] = {r.label: r.warnings for r in runners if r.warnings}
    log(f"  cpu: Flax reference variants (minimal step) (load {load_average()})")
    classes = MODELS[name][0]
    runners = [
        minimal_runner("flax f32", flax_model(name, norm, classes), name, batch, cfg.num_examples),
        minimal_runner("flax bf16", flax_model(name, norm, classes, dtype=jnp.bfloat16), name, batch, cfg.num_examples),
        minimal_runner("flax f32 slice-pool", flax_model(name, norm, classes, pool="slices"), name, batch, cfg.num_examples),
    ]  # fmt: skip
    load0 = load_average()
    out["variants"] = measure(runners, steps, cfg.warmup, cfg.block, log)
    out["variants_load"] = (load0, load_average())
    return out


# --------------------------------------------------------------------------------------
# Report.


def machine_info() -> dict:
    cpu = platform.processor() or "?"
    try:
        names = [l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    torch = optional_import("torch")
    devs = jax.devices()
    backend = jax.default_backend()
    kind = devs[0].device_kind if backend != "cpu" else cpu
    return {
        "backend": backend,
        "key": f"{backend}: {kind} x{len(devs)}" + (f", {os.cpu_count()} cores" if backend == "cpu" else ""),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "devices": [str(d) for d in devs],
        "jax": jax.__version__,
        "jaxlib": __import__("jaxlib").__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "torch": (torch.__version__ + f" ({torch.get_num_threads()} threads)") if torch else "not installed",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def _ms(x):
    return f"{1e3 * x:,.1f}"


def _group_table(res: list[Result]) -> list[str]:
    rows = ["| variant | median ms | IQR | min ms | images/s | first call s |", "|---|---:|---:|---:|---:|---:|"]
    for r in res:
        label = r.label.replace("|", "\\|")
        rows.append(f"| {label} | {_ms(r.median)} | {r.iqr_pct:.0f}% | {_ms(r.min)} | {r.ips:,.0f} | {r.first_s:.1f} |")
    return rows


def render(info, cfg_name, cfg: Settings, args, main, multi, cpu, elapsed) -> str:
    L = [f"<!-- machine: {info['key']} -->", f"## {info['key']} -- {info['date']}", ""]
    L += [
        f"- Command: `{' '.join(['python -m experiments.benchmarks.train_step'] + [shlex.quote(a) for a in sys.argv[1:]])}`"
        f" ({cfg_name} settings); whole run {elapsed / 60:.1f} min.",
        f"- Machine: {info['platform']}, Python {info['python']}; CPU {info['cpu']}, {info['cores']} cores; "
        f"JAX devices {', '.join(info['devices'])}.",
        f"- Versions: jax {info['jax']}, jaxlib {info['jaxlib']}, flax {info['flax']}, optax {info['optax']}, "
        f"torch {info['torch']}. XLA_FLAGS: `{info['xla_flags'] or '(none)'}`.",
        f"- Settings: timed steps {', '.join(f'{m} {args.steps or n}' for m, n in cfg.main_steps.items())} (main); "
        f"batch {', '.join(f'{m} {b}' for m, b in cfg.batch.items())}; multi-run timed steps "
        f"{', '.join(f'N={n}: {args.multi_steps or k}' for n, k in cfg.multi_steps.items())}"
        f"{''.join(f' ({s} at most {c})' for s, c in cfg.multi_cap.items())}, strategies "
        f"{'; '.join(f'N={n}: ' + '/'.join(v) for n, v in cfg.multi_strategies.items())}, warm-up {cfg.multi_warmup}; "
        f"cpu table {args.steps or cfg.cpu_steps} timed steps.",
        f"- Synthetic data: {cfg.num_examples:,} images 32x32x3 uniform in [0, 1), random labels, on the device; "
        f"warm-up {cfg.warmup} steps after the first call, variants interleaved in blocks of {cfg.block} steps, "
        "each step timed alone (block_until_ready / synchronous torch). Load average (1/5/15 min) is given "
        "per comparison: above the core count means other processes shared the CPU.",
        "",
    ]
    if main:
        L += ["### Single run: jaxnorm vs Flax BatchNorm vs PyTorch", ""]
        L += [
            "| model | norm | batch | steps | jaxnorm ms (img/s) | jaxnorm\\|min ms | flax\\|min ms | jaxnorm/flax | "
            "step overhead | torch ms | torch-cl ms | jaxnorm/torch | first call s (jaxnorm/flax) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for g in main["groups"]:
            r = {x.label: x for x in g["results"]}
            a, b1, b2 = r["jaxnorm"], r["jaxnorm|min"], r["flax|min"]
            jf = b2.median / b1.median
            ovh = b1.median / a.median
            if "torch" in r:
                best = min(r["torch"], r["torch-cl"], key=lambda x: x.median)
                tcols = f"{_ms(r['torch'].median)} | {_ms(r['torch-cl'].median)} | {best.median / a.median:.2f} ({best.label}) |"
            else:
                tcols = "skipped | skipped | -- |"
            L.append(
                f"| {g['model']} | {g['norm']} | {g['batch']} | {g['steps']} | {_ms(a.median)} ({a.ips:,.0f}) | "
                f"{_ms(b1.median)} | {_ms(b2.median)} | **{jf:.2f}** | {ovh:.2f} | {tcols} {a.first_s:.1f} / {b2.first_s:.1f} |"
            )
        L += [
            "",
            "Ratios are throughput ratios (>1: jaxnorm faster). *jaxnorm/flax* = flax|min median / jaxnorm|min median "
            "(same minimal step, only the BN layer differs; target >= 0.95). *step overhead* = jaxnorm|min / jaxnorm "
            "(cost of `make_train_step`'s extras: step key, metrics dict, `with_extra_args_support` optimizer). "
            "*jaxnorm/torch* = best torch layout / jaxnorm.",
            "",
        ]
        if not main["torch"]:
            L += ["PyTorch was not importable (or `--no-torch`): the torch columns are skipped.", ""]
        if main["parity"]:
            L += ["Parity (training-mode logits of one batch of 16, the jaxnorm model's parameters loaded into the others; "
                  "relative error ||a - b|| / ||b||; dropout off):", ""]  # fmt: skip
            for (name, norm), p in main["parity"].items():
                items = ", ".join(f"{k} {v:.1e}" if isinstance(v, float) else f"{k} {v}" for k, v in p.items())
                L.append(f"- {name} {norm}: {items}")
            L.append("")
        L += ["<details><summary>Per-variant details (median, IQR, min, first call, load)</summary>", ""]
        for g in main["groups"]:
            L += [f"{g['model']} {g['norm']}, batch {g['batch']}, {g['steps']} timed steps, load {g['load'][0]} -> "
                  f"{g['load'][1]}, losses finite: {g['finite']}", ""] + _group_table(g["results"]) + [""]  # fmt: skip
        L += ["</details>", ""]
    if multi:
        L += [f"### Many runs in one program: 3c3d bn_gamma_beta, batch {multi['batch']} per run", ""]
        L += ["Each cell: median ms per step of all N runs, aggregate images/s = N x batch / median, timed steps.", "",
              "| N | vmap | loop | map | vmap/loop | load |", "|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for g in multi["groups"]:
            r = {x.label: x for x in g["results"]}
            cell = lambda s: f"{_ms(r[s].median)} ms, {r[s].ips:,.0f} img/s ({len(r[s].times)})" if s in r else "not run"
            ratio = f"**{r['vmap'].ips / r['loop'].ips:.2f}**" if "vmap" in r and "loop" in r else "--"
            L.append(f"| {g['runs']} | {cell('vmap')} | {cell('loop')} | {cell('map')} | {ratio} | "
                     f"{g['load'][0]} -> {g['load'][1]} |")  # fmt: skip
        L += ["", "First calls (s): " + "; ".join(
            f"N={g['runs']}: " + ", ".join(f"{x.label} {x.first_s:.1f}" for x in g["results"]) for g in multi["groups"]), ""]  # fmt: skip
    if cpu:
        base = cpu["flags"][0]
        L += [f"### CPU: what might help XLA (3c3d bn_gamma_beta, batch {cpu['batch']}, {cpu['steps']} timed steps each)", ""]
        L += ["| XLA_FLAGS (jaxnorm step, one worker process each) | median ms | IQR | images/s | vs none | first call s |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in cpu["flags"]:
            L.append(f"| `{r.label}` | {_ms(r.median)} | {r.iqr_pct:.0f}% | {r.ips:,.0f} | {base.median / r.median:.2f} | {r.first_s:.1f} |")
        L += ["", f"Load {cpu['flags_load'][0]} -> {cpu['flags_load'][1]}."]
        for label, w in cpu.get("flag_warnings", {}).items():
            L.append(f"Warning from `{label}`: {w[0][-160:]}")
        vb = cpu["variants"][0]
        L += ["", "| Flax reference network, minimal step | median ms | IQR | images/s | vs f32 | first call s |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in cpu["variants"]:
            L.append(f"| {r.label} | {_ms(r.median)} | {r.iqr_pct:.0f}% | {r.ips:,.0f} | {vb.median / r.median:.2f} | {r.first_s:.1f} |")
        L += ["", f"Load {cpu['variants_load'][0]} -> {cpu['variants_load'][1]}. `vs` columns: throughput ratio to the first row.", ""]
    L.append(f"<!-- end machine: {info['key']} -->")
    return "\n".join(L) + "\n"


HEADER = """# Benchmarks

Training-step throughput of jaxnorm, produced by
[`experiments/benchmarks/train_step.py`](experiments/benchmarks/train_step.py) (its docstring
describes the method). Install the comparison side with `pip install -e '.[bench]'` (PyTorch
2.13.0; on a CUDA machine install a CUDA build of the same version). One section per machine;
rerunning the benchmark on a machine replaces that machine's section and leaves the rest of
this file alone.

"""

GPU_PENDING = """<!-- gpu pending -->
## GPU

Not measured yet: no GPU was lent in the session that wrote this benchmark. On a GPU machine run
`python -m experiments.benchmarks.train_step` (full settings: 50 timed steps per variant, All-CNN-C at
batch 256, every multi-run strategy at N = 1, 4, 8); its section replaces this one.
<!-- end gpu pending -->
"""


def write_report(path: Path, section: str, key: str, backend: str) -> None:
    text = path.read_text() if path.exists() else HEADER + GPU_PENDING
    start, end = f"<!-- machine: {key} -->", f"<!-- end machine: {key} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda m: section, text)
    else:
        anchor = "<!-- gpu pending -->"
        text = text.replace(anchor, section + "\n" + anchor) if anchor in text else text.rstrip("\n") + "\n\n" + section
    if backend == "gpu":
        text = re.sub(r"<!-- gpu pending -->.*?<!-- end gpu pending -->\n?", "", text, flags=re.S)
    path.write_text(text)


# --------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="settings for a small CPU (< 10 min on 2 cores)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant in the main and cpu tables (override)")
    p.add_argument("--multi-steps", type=int, default=None, help="timed steps per strategy in the multi-run table")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps after the first call")
    p.add_argument("--sections", default=None, help="comma list of main,multi,cpu (default: all; cpu on CPU only)")
    p.add_argument("--models", default="3c3d,allcnnc", help="models of the main table (comma list)")
    p.add_argument("--allcnnc-batch", type=int, default=None, help="All-CNN-C batch size (override; default 256, --quick 32)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch side")
    p.add_argument("--no-check", action="store_true", help="skip the parity check")
    p.add_argument("--out", default="BENCHMARKS.md", help="markdown file to update ('-': print only)")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        worker_main(json.loads(args._worker))
        return

    t0 = time.perf_counter()
    cfg_name = "quick" if args.quick else "full"
    cfg = Settings.quick() if args.quick else Settings.full()
    if args.warmup is not None:
        cfg.warmup = cfg.multi_warmup = args.warmup
    if args.allcnnc_batch:
        cfg.batch["allcnnc"] = args.allcnnc_batch
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        p.error(f"unknown model(s) {sorted(unknown)}; known: {sorted(MODELS)}")
    info = machine_info()
    default_sections = "main,multi" + (",cpu" if info["backend"] == "cpu" else "")
    sections = set((args.sections or default_sections).split(","))
    log = lambda s: print(f"[{time.perf_counter() - t0:6.0f}s] {s}", flush=True)
    log(f"{info['key']} | jax {info['jax']} | torch {info['torch']} | {cfg_name} settings | sections {sorted(sections)}")

    main_res = run_main(cfg, args, log) if "main" in sections else None
    multi_res = run_multi(cfg, args, log) if "multi" in sections else None
    cpu_res = run_cpu(cfg, args, log) if "cpu" in sections else None
    elapsed = time.perf_counter() - t0
    section = render(info, cfg_name, cfg, args, main_res, multi_res, cpu_res, elapsed)
    print("\n" + section)
    if args.out != "-":
        out = Path(args.out)
        write_report(out if out.is_absolute() else Path.cwd() / out, section, info["key"], info["backend"])
        log(f"wrote {args.out}")
    log(f"done in {elapsed / 60:.1f} min")


if __name__ == "__main__":
    main()
