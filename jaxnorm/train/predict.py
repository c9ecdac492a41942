"""The logits of trained runs on a stored split, for measurements after training.

A study's ``after`` step (:class:`jaxnorm.study.RunGroup`) gets each run's final state;
:func:`split_logits` turns those states into the logits the run's ``<split>`` metrics
were computed from -- the same examples (the first ``eval_subset`` of the split), the same
normalization constants (the training split's) and the same BN mode
(``config.eval_bn_mode``) -- so a quantity computed from them (e.g. the logit-scale
analysis, :mod:`jaxnorm.analysis.logit_scale`) reproduces the stored loss first.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm.data import load
from jaxnorm.data.augmentation import normalize
from jaxnorm.modes import apply as apply_in_mode, check_bn_mode
from jaxnorm.results import RunDir, read_npz, write_npz
from jaxnorm.train.config import TrainConfig
from jaxnorm.train.loop import build_model
from jaxnorm.train.run_groups import check_compatible
from jaxnorm.train.step import layout_eval


def group_module(configs: Sequence[TrainConfig]):
    """The module :func:`~jaxnorm.train.fit_many` trains the group ``configs`` with: the
    ``'bn_ablation'`` superset when they mix ablation variants, else the configs' model
    (the structure their checkpoints and final states hold). ValueError for configs that
    cannot share a program."""
    superset = check_compatible(configs)
    cfg = configs[0]
    return build_model(cfg, load(cfg.dataset, cfg.train_split).num_classes, norm="bn_ablation" if superset else None)


def make_predict(module, *, mean, std, bn_mode: str = "running") -> Callable:
    """Builds ``predict(state, images) -> logits`` for a split laid out as
    ``(num_batches, batch, ...)`` (:func:`~jaxnorm.train.layout_eval`), images in [0, 1];
    the batches run in one ``lax.scan``. ``bn_mode``: ``'running'`` or ``'batch'``
    (:mod:`jaxnorm.modes`). Not jitted: the caller compiles it once for all states of
    one structure."""
    check_bn_mode(bn_mode, ("running", "batch"))
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)

    def predict(state, images):
        def body(_, x):
            return None, apply_in_mode(module, state.variables, normalize(x, mean, std), bn_mode=bn_mode)

        return jax.lax.scan(body, None, images)[1]

    return predict


def split_logits(config: TrainConfig, module, states: Sequence, split: str = "train_eval") -> tuple[np.ndarray, np.ndarray]:
    """Each state's logits on the first ``config.eval_subset`` examples of ``split``.

    Args:
      config: the runs' shared data and evaluation settings (dataset, splits,
        ``eval_subset``, ``eval_batch_size``, ``eval_bn_mode``).
      module: the model the states belong to (for a ``fit_many`` group of BN-ablation
        variants, the ``'bn_ablation'`` superset: the states hold its variables).
      states: :class:`~jaxnorm.train.TrainState` s of that module (one compilation for all).

    Returns:
      ``(logits, labels)``: float32 ``(len(states), n, num_classes)`` and int ``(n,)``.
      In ``'batch'`` mode only whole batches are used, as in the run's evaluation.

    Raises:
      ValueError: no states; ``config.train_eval_mode == 'deepobs'`` with
        ``split='train_eval'`` (that set is redrawn at every evaluation, so there is no
        stored set to predict on).
    """
    if not states:
        raise ValueError("split_logits needs at least one state.")
    if split == "train_eval" and config.train_eval_mode == "deepobs":
        raise ValueError("train_eval_mode='deepobs' redraws the train_eval set at every evaluation; there is no stored set to predict on.")
    train = load(config.dataset, config.train_split)
    ds = load(config.dataset, split)
    images, labels = ds.images[: config.eval_subset], ds.labels[: config.eval_subset]
    laid, laid_labels, mask = layout_eval(
        images, labels, min(config.eval_batch_size, len(labels)), drop_remainder=config.eval_bn_mode == "batch"
    )
    predict = jax.jit(make_predict(module, mean=train.mean, std=train.std, bn_mode=config.eval_bn_mode))
    keep = mask.reshape(-1) > 0
    out = []
    for state in states:
        logits = np.asarray(predict(state, jnp.asarray(laid)))
        out.append(logits.reshape(-1, logits.shape[-1])[keep])
    return np.stack(out).astype(np.float32), laid_labels.reshape(-1)[keep]


def _is_current(result, split: str) -> bool:
    """Whether the run folder already holds ``split``'s logits of the result's final step."""
    path = RunDir(result.run_dir).final_logits
    if not path.exists():
        return False
    try:
        stored = read_npz(path)
        return int(stored["step"]) == int(result.step) and str(stored["split"]) == split
    except (OSError, ValueError, KeyError):  # damaged: write it again
        return False


def save_final_logits(configs: Sequence[TrainConfig], results: Sequence, split: str = "train_eval") -> list:
    """A study's ``after`` step: each finished run's logits on ``split`` from its final
    state (:func:`split_logits`), saved as ``<run>/final_logits.npz`` with ``logits``
    (n, K), ``labels`` (n,), ``step`` and ``split``. Runs that did not finish (diverged:
    their state is not the last good one), keep no state, or already hold that step's
    file are skipped, so a rerun that only reads finished runs back compiles nothing.
    Returns the files written. The write is atomic (:func:`jaxnorm.results.write_npz`).

    Args:
      configs, results: a group's configs and its :class:`~jaxnorm.train.FitResult` s
        (in the same order), trained as one ``fit_many`` group (:func:`group_module`).
    """
    todo = [r for r in results if r.status == "finished" and r.state is not None and not _is_current(r, split)]
    if not todo:
        return []
    logits, labels = split_logits(configs[0], group_module(configs), [r.state for r in todo], split)
    written = []
    for r, z in zip(todo, logits):
        path = RunDir(r.run_dir).final_logits
        write_npz(path, {"logits": z, "labels": labels, "step": np.asarray(int(r.step)), "split": np.asarray(split)})
        written.append(path)
    return written
