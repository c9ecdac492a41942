"""End-to-end smoke of every model: forward and backward passes on real (digits) data.

For every registered model and a few norms, on one fixed batch of the embedded digits
dataset: build the model, take ``--steps`` jitted SGD steps in training mode (batch
statistics, dropout on), and report the loss before and after, whether the running
statistics moved, and the time. A working backward
pass shows up as a falling loss on that batch.

    python -m experiments.smoke            # what ``make demo`` runs (~1-2 min on 2 CPU cores)
    python -m experiments.smoke --steps 5 --only mlp convnet
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnorm import get_model
from jaxnorm.data import load_digits

# (label, model name, model kwargs, digits in CIFAR shape?, norms to try, learning rate)
CASES = [
    ("3c3d", "3c3d", {}, True, ("vanilla", "bn", "bn_gamma", "bn_beta", "bn_gamma_beta"), 0.05),
    ("allcnnc", "allcnnc", {"num_classes": 10}, True, ("vanilla", "bn_gamma_beta"), 0.05),
    ("mlp-4", "mlp", {"depth": 4, "width": 64}, False, ("vanilla", "bn_gamma_beta", "layer"), 0.1),
    ("fc-11 looks-lin", "deep_fc", {"depth": 11, "width": 64, "activation": "crelu", "kernel_init": "looks_linear"},
     False, ("vanilla",), 0.05),
    ("fc-11 relu", "deep_fc", {"depth": 11, "width": 64}, False, ("vanilla", "bn_gamma_beta"), 0.05),
    ("resnet-11", "convnet", {"depth": 11, "width": 16, "residual": True}, False, ("vanilla", "bn_gamma_beta"), 0.05),
    ("convnet-11", "convnet", {"depth": 11, "width": 16, "norm_options": {"num_groups": 4}}, False,
     ("bn_gamma_beta", "group"), 0.05),
]


def _loss(params, batch_stats, model, x, y, key):
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, updates.get("batch_stats", batch_stats)


def run_case(name, kwargs, cifar_shape, norm, lr, steps, batch_size, seed=0):
    """Trains one model for ``steps`` steps on one batch; returns a result dict."""
    x, y = load_digits("train", cifar_shape=cifar_shape)
    x, y = jnp.asarray(x[:batch_size]), jnp.asarray(y[:batch_size])
    model = get_model(name, norm=norm, **kwargs)
    key = jax.random.PRNGKey(seed)
    variables = model.init(key, x, train=False)
    params, stats0 = variables["params"], variables.get("batch_stats", {})
    opt = optax.sgd(lr, momentum=0.9)

    @jax.jit
    def step(params, stats, opt_state, k):
        (loss, stats), grads = jax.value_and_grad(_loss, has_aux=True)(params, stats, model, x, y, k)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    t0 = time.perf_counter()
    state = (params, stats0, opt.init(params))
    losses = []
    for i in range(steps):
        *state, loss = step(*state, jax.random.fold_in(key, i))
        losses.append(loss)
    params, stats, _ = state
    losses = np.asarray(jax.device_get(losses))
    moved = bool(stats) and any(
        float(jnp.max(jnp.abs(a - b))) > 0 for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(stats0))
    )
    return {
        "model": name,
        "norm": norm,
        "params": sum(p.size for p in jax.tree.leaves(params)),
        "loss0": float(losses[0]),
        "lossN": float(losses[-1]),
        "finite": bool(np.all(np.isfinite(losses))),
        "stats_moved": moved if stats else None,
        "seconds": time.perf_counter() - t0,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="SGD steps per model (default 12)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--only", nargs="*", default=None, help="model names to run (default: all)")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; one fixed digits batch of {args.batch_size}")
    header = f"{'model':16} {'norm':14} {'params':>9} {'loss@0':>8} {'loss@N':>8} {'stats':>6} {'sec':>6}"
    print(header + "\n" + "-" * len(header))
    failures = 0
    for label, name, kwargs, cifar_shape, norms, lr in CASES:
        if args.only and name not in args.only:
            continue
        for norm in norms:
            r = run_case(name, kwargs, cifar_shape, norm, lr, args.steps, args.batch_size)
            ok = r["finite"] and r["lossN"] < r["loss0"]
            failures += not ok
            moved = {None: "-", True: "moved", False: "STUCK"}[r["stats_moved"]]
            print(
                f"{label:16} {norm:14} {r['params']:9,d} {r['loss0']:8.4f} {r['lossN']:8.4f} "
                f"{moved:>6} {r['seconds']:6.1f}" + ("" if ok else "   <- loss did not fall")
            )
    print(f"\n{'all models trained' if not failures else f'{failures} case(s) did not reduce the loss'}.")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
