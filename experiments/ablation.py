"""The BatchNorm ablation study (source document 001): five variants of one problem.

Trains ``vanilla``, ``bn``, ``bn_gamma``, ``bn_beta`` and ``bn_gamma_beta`` of a named
config with the same seed, as one compiled program (``jaxnorm.train.fit_many``), for each
learning-rate scale, seed and BN placement asked for -- recording γ/β every 5 steps and
the ReLU sparsity after each BN layer on a probe batch -- then writes the plots and
``summary.md`` (``jaxnorm.analysis``; regenerate them any time with
``python -m experiments.plot <results dir>``).

    python -m experiments.ablation                          # digits default (make demo)
    python -m experiments.ablation cifar10_3c3d --lr-scale 0.1 1 10
    python -m experiments.ablation cifar10_3c3d --positions first penultimate first3 last3 with_last
    python -m experiments.ablation cifar100_allcnnc --shard 2/3   # one SLURM array task of three
    python -m experiments.ablation cifar10_3c3d --quick       # a few steps on a small subset

Results: ``<results>/ablation/<config>[-<positions>]/lr<scale>/<variant>_s<seed>/`` (see the
README for what each file holds); plots in ``<results>/ablation/<config>/plots/``.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import time
from typing import Sequence

from experiments.configs import CONFIGS, get_config
from jaxnorm.layers import ABLATION_VARIANTS
from jaxnorm.models import get_model
from jaxnorm.train import GammaBetaRecorder, ReluSparsity, TrainConfig, build_model, fit_many


def _num_weight_layers(config: TrainConfig) -> int:
    """How many weight layers (bn_positions flags) the config's model has."""
    import jax
    import jax.numpy as jnp

    from jaxnorm.data import load

    ds = load(config.dataset, "test") if config.dataset.startswith("digits") else None
    shape = ds.images.shape[1:] if ds is not None else (32, 32, 3)
    model = get_model(config.model, norm="bn", **{**dict(config.model_kwargs), "bn_positions": None})
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, *shape)), train=False))
    names = [k for k in variables["params"] if k.startswith(("conv", "dense"))]
    return len(names)


def positions_preset(name: str, num_layers: int) -> tuple[int, ...] | None:
    """``bn_positions`` of the thesis's placement studies, for a net of ``num_layers``
    weight layers (the last is the output layer).

    default: after every layer but the last; with_last: after every layer; first: after
    the first only; penultimate: after the last hidden layer only; first3/last3 and
    first4/last4: the first/last three or four hidden layers; last4_incl: the last four
    layers, the output layer included (All-CNN-C, thesis Fig. A.16 C).
    """
    L = num_layers
    hidden = list(range(L - 1))
    on = {
        "default": None,
        "with_last": list(range(L)),
        "first": [0],
        "penultimate": [L - 2],
        "first3": hidden[:3],
        "last3": hidden[-3:],
        "first4": hidden[:4],
        "last4": hidden[-4:],
        "last4_incl": list(range(L))[-4:],
    }
    if name not in on:
        raise ValueError(f"unknown BN placement {name!r}; known: {sorted(on)}")
    if on[name] is None:
        return None
    return tuple(int(i in on[name]) for i in range(L))


def plan_jobs(args) -> list[tuple[float, str, int]]:
    """Every (lr scale, placement, seed) job, before sharding."""
    return list(itertools.product(args.lr_scale, args.positions, args.seeds))


def shard_jobs(jobs: Sequence, shard: str) -> list:
    """Jobs of shard ``i/n`` (1-based i): every n-th job starting at the i-th."""
    try:
        i, n = (int(p) for p in shard.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 2/3), got {shard!r}.") from None
    if not 1 <= i <= n:
        raise ValueError(f"--shard {shard}: need 1 <= i <= n.")
    return list(jobs)[i - 1 :: n]


def job_configs(base: TrainConfig, config_name: str, lr_scale: float, positions: str, seed: int, args) -> list[TrainConfig]:
    """The five variants' configs of one job."""
    group = config_name if positions == "default" else f"{config_name}-{positions}"
    model_kwargs = dict(base.model_kwargs)
    bn_positions = positions_preset(positions, _num_weight_layers(base))
    if bn_positions is not None:
        model_kwargs["bn_positions"] = bn_positions
    cfg = base.replace(
        learning_rate=base.learning_rate * lr_scale,
        seed=seed,
        model_kwargs=model_kwargs,
        results_dir=str(pathlib.Path(args.results) / "ablation" / group),
        study=f"lr{lr_scale:g}",
    )
    if args.quick:
        cfg = cfg.quick(steps=args.quick_steps, subset=args.quick_subset)
    return [cfg.replace(norm=v, name=f"{v}_s{seed}") for v in args.variants]


def observers_for(configs: Sequence[TrainConfig], probe_size: int = 256) -> list:
    """The γ/β recorder and the ReLU-sparsity probe for one job's runs."""
    from jaxnorm.data import load, normalize

    cfg = configs[0]
    train = load(cfg.dataset, cfg.train_split)
    n = min(probe_size, cfg.train_subset or probe_size, len(train))
    probe = normalize(train.images[:n], train.mean, train.std)
    mixed = len({c.norm for c in configs}) > 1
    module = build_model(cfg, train.num_classes, norm="bn_ablation" if mixed else None)
    total = cfg.max_steps or 10**9
    every = max(1, min(10 * cfg.record_every_steps, total // 4))
    last = f"norm{_num_weight_layers(cfg)}"  # feeds the logits, not a ReLU
    return [GammaBetaRecorder(cfg.record_every_steps), ReluSparsity(module, probe, every=every, skip={last})]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="digits", choices=sorted(CONFIGS))
    parser.add_argument("--lr-scale", type=float, nargs="+", default=[1.0], help="learning-rate multipliers")
    parser.add_argument("--positions", nargs="+", default=["default"], help="BN placements (see positions_preset)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=list(ABLATION_VARIANTS), choices=ABLATION_VARIANTS)
    parser.add_argument("--published-code", action="store_true", help="what the thesis's code did instead of its text")
    parser.add_argument("--quick", action="store_true", help="a few steps on a small subset (laptops, tests)")
    parser.add_argument("--quick-steps", type=int, default=20)
    parser.add_argument("--quick-subset", type=int, default=512)
    parser.add_argument("--shard", default="1/1", help="i/n: run every n-th job starting at the i-th")
    parser.add_argument("--strategy", default="auto", choices=["auto", "vmap", "loop", "map"])
    parser.add_argument("--results", default="results")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    options = {"as_published_code": True} if args.published_code else {}
    base = get_config(args.config, **options)
    jobs = shard_jobs(plan_jobs(args), args.shard)
    print(f"ablation {args.config}: {len(jobs)} job(s) of {len(args.variants)} variants (shard {args.shard})")
    t0 = time.perf_counter()
    for lr_scale, positions, seed in jobs:
        configs = job_configs(base, args.config, lr_scale, positions, seed, args)
        results = fit_many(
            configs, strategy=args.strategy, observers=observers_for(configs), progress=not args.no_progress
        )
        for r in results:
            test = [m for m in r.metrics if m["kind"] == "eval" and m["split"] == "test"]
            acc = f"{test[-1]['acc']:.4f}" if test else "-"
            print(f"  lr x{lr_scale:g} {positions:11} seed {seed}  {r.run_dir.name:20} {r.status:9} test acc {acc}")
    print(f"trained in {time.perf_counter() - t0:.1f} s")
    if not args.no_plots:
        from experiments.plot import plot_results

        groups = {pathlib.Path(args.results) / "ablation" / (args.config if p == "default" else f"{args.config}-{p}") for _, p, _ in jobs}
        for root in sorted(groups):
            plot_results(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
