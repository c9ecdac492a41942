"""The gradient-conditioning thesis's toy computations, no training: the Lemma 2.2
simulations (Figs. 2.1, 2.2) and the Balduzzi et al. 1-D shattered-gradients toy
(Fig. 3.5; "The Shattered Gradients Problem", ICML 2017, Fig. 1), from “Gradient
Conditioning in Deep Neural Networks” (BYU thesis 2022).

* Lemma 2.2 (:mod:`jaxnorm.diagnostics.lemma_simulation`): per seed, ``distributions``
  pairs of vector distributions, ``samples`` vector pairs each, without and with the
  magnitude bias of Fig. 2.2, for both readings of the perturbation (``independent``,
  as the text is written, and ``shrink``, a gradient step).
* Shattered gradients (:mod:`jaxnorm.diagnostics.shattered`): ``f'(x)`` on ``grid``
  inputs in [−2, 2] of rectifier nets at initialization (He init, BatchNorm on the grid
  batch): feedforward with 1 and 24 hidden layers of 200 units (24 also without BN),
  and a 50-layer resnet (jaxnorm's residual ``convnet`` on 1x1 "images": a 3x3 conv on
  one pixel is a dense layer, so it is a dense resnet with BN).

    python -m experiments.toys                # 3 seeds: 1000 x 1000 Lemma samples, 256-point grids
    python -m experiments.toys --quick        # tiny sizes: a smoke run
    python -m experiments.toys --plot-only    # plots + summary.md from the stored files

Results: ``<results>/toys/<setup>/lemma22.npz`` (``<reading>.<bias>.s<seed>.<field>``),
``shattered.npz`` (``<net>.s<seed>``: the curve; ``grid``), ``plots/`` (lemma22.png,
shattered.png, summary.md; :mod:`jaxnorm.analysis.toys`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm.analysis import toys as analysis
from jaxnorm.diagnostics.lemma_simulation import PERTURBATIONS, simulate
from jaxnorm.diagnostics.shattered import input_gradient_curve
from jaxnorm.models import get_model
from jaxnorm.results import write_json, write_npz


@dataclasses.dataclass(frozen=True)
class ToyNet:
    """A 1-D toy network: registered ``model``, its kwargs (``width`` filled in), and the
    input rank it takes (2: dense ``(b, 1)``; 4: ``(b, 1, 1, 1)``)."""

    model: str
    kwargs: dict
    rank: int
    label: str


NETS = {
    "ff1_bn": ToyNet("mlp", {"depth": 2, "norm": "bn_gamma_beta"}, 2, "feedforward, 1 hidden layer, BN"),
    "ff24_bn": ToyNet("mlp", {"depth": 25, "norm": "bn_gamma_beta"}, 2, "feedforward, 24 hidden layers, BN"),
    "ff24_plain": ToyNet("mlp", {"depth": 25, "norm": "vanilla"}, 2, "feedforward, 24 hidden layers, no BN"),
    "resnet50_bn": ToyNet("convnet", {"depth": 50, "residual": True, "stages": 1, "norm": "bn_gamma_beta"}, 4,
                          "resnet, 50 layers, BN"),
}


@dataclasses.dataclass(frozen=True)
class ToySetup:
    name: str = "default"
    distributions: int = 1000
    samples: int = 1000
    dim: int = 16
    grid: int = 256
    width: int = 200
    depth_cap: int = 1000  # --quick caps every depth
    seeds: tuple = (0, 1, 2)

    def quick(self) -> "ToySetup":
        return dataclasses.replace(self, name="default-quick", distributions=20, samples=20, dim=4, grid=32, width=8, depth_cap=4)


def run_lemma(setup: ToySetup) -> dict:
    out = {}
    for reading in PERTURBATIONS:
        for bias in (False, True):
            for seed in setup.seeds:
                sim = simulate(seed, distributions=setup.distributions, samples=setup.samples, dim=setup.dim,
                               magnitude_bias=bias, perturbation=reading)  # fmt: skip
                out.update({f"{reading}.{'bias' if bias else 'plain'}.s{seed}.{k}": v for k, v in sim.items()})
    return out


def run_shattered(setup: ToySetup) -> dict:
    grid = np.linspace(-2.0, 2.0, setup.grid, dtype=np.float32)
    out = {"grid": grid}
    for name, net in NETS.items():
        kwargs = {**net.kwargs, "depth": min(net.kwargs["depth"], setup.depth_cap)}
        module = get_model(net.model, num_classes=1, width=setup.width, kernel_init="he_normal", **kwargs)
        x = jnp.asarray(grid.reshape((-1,) + (1,) * (net.rank - 1)))
        curve = jax.jit(lambda v: input_gradient_curve(module, v, x))
        for seed in setup.seeds:
            variables = module.init(jax.random.PRNGKey(seed), x[:2], train=False)
            out[f"{name}.s{seed}"] = np.asarray(curve(variables))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.toys", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--results", default="results")
    p.add_argument("--plot-only", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace stored results of another setup")
    args = p.parse_args(argv)
    setup = ToySetup().quick() if args.quick else ToySetup()
    if args.seeds:
        setup = dataclasses.replace(setup, seeds=tuple(args.seeds))
    root = pathlib.Path(args.results) / "toys" / setup.name
    t0 = time.perf_counter()
    stored = root / "setup.json"
    if not args.plot_only and stored.is_file() and not args.overwrite:
        if json.loads(stored.read_text()) != {**dataclasses.asdict(setup), "seeds": list(setup.seeds)}:
            print(f"error: {root} holds results of another setup ({stored}); pass --overwrite to replace them, "
                  "or --results DIR for a new folder.", file=sys.stderr)
            return 2
    if not args.plot_only:
        root.mkdir(parents=True, exist_ok=True)
        write_npz(root / "lemma22.npz", run_lemma(setup))
        write_npz(root / "shattered.npz", run_shattered(setup))
        write_json(root / "setup.json", {**dataclasses.asdict(setup), "seeds": list(setup.seeds)})
    labels = {k: v.label for k, v in NETS.items()}
    print(analysis.write_report(root, labels))
    print(f"done in {time.perf_counter() - t0:.1f} s; plots and summary.md in {root / 'plots'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
