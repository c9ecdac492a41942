"""``TrainConfig``: one training run, described as code.

Every choice that changes a result is a field here (and lands in the run's
``config.json``), so two runs differ exactly where their configs differ. Studies build
configs in ``experiments/configs/``; :meth:`TrainConfig.quick` shrinks any of them for
a laptop or a test.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Mapping, Optional

from jaxnorm._registry import lookup
from jaxnorm.data.augmentation import AugmentConfig
from jaxnorm.modes import check_bn_mode
from jaxnorm.objective import LOSSES
from jaxnorm.train.optim import OPTIMIZERS

EVAL_BN_MODES = ("running", "batch")  # jaxnorm.modes: running statistics, or each eval batch's


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run.

    What is trained:
      dataset: a name from :data:`jaxnorm.data.DATASETS` (default: offline digits in
        CIFAR shape).
      model: a name from :func:`jaxnorm.models.model_names`.
      model_kwargs: the model's options (``num_classes`` defaults to the dataset's).
      norm: a name from :data:`jaxnorm.layers.NORMS`.

    How:
      loss: the per-example loss, a name from :data:`jaxnorm.objective.LOSSES`
        (``'ce'``: cross-entropy; ``'mse'``: squared error against one-hot targets).
      batch_size, epochs: as usual; ``max_steps`` caps the total (quick runs).
      full_batch: full-batch gradient descent: every step uses the whole training
        subset in its stored order (no shuffling, ``batch_size`` ignored), so an epoch
        is one step (Cohen et al.'s edge-of-stability setting).
      optimizer: ``'sgd'``, ``'adam'`` or ``'adamw'``; optimizer_kwargs: Adam's
        ``b1``/``b2``/``eps``.
      learning_rate, momentum, nesterov, schedule, schedule_kwargs, warmup_steps: see
        :func:`jaxnorm.train.optim.make_optimizer`. The learning rate, momentum and
        weight decay are data (in the optimizer state): runs that differ only in them
        train as one program in :func:`~jaxnorm.train.fit_many`.
      weight_decay: λ. For ``sgd``/``adam`` the L2 term ``0.5 λ Σ ||W||²`` added to the
        loss (weights only); for ``adamw`` decoupled decay of the weights.
      augment: :class:`jaxnorm.data.AugmentConfig` for training batches, or None for
        normalization only.
      train_split, eval_splits: dataset splits; evaluation runs on each eval split.
      train_subset: use only the first n training examples (quick runs).
      eval_subset: evaluate on only the first n examples of each eval split (quick runs).
      seed: the run's seed: initialization, data order and augmentation are functions
        of (seed, epoch, step) only.
      frozen: a regular expression, or None. It is matched (``re.search``) against each
        ``params`` leaf's path joined with '/' (e.g. ``'norm3/scale'``,
        ``'conv1/kernel'``); matching leaves stay at their initial values (a zero
        update; the L2 term still counts them). A pattern that matches no parameter is
        an error when the optimizer is initialized (see
        :func:`jaxnorm.train.optim.make_optimizer`).
      gamma_init: the initial γ of every norm layer that learns one (default 1). It has
        no effect on variants without a learned γ (``bn``, ``bn_beta``, ``vanilla``): in
        the ``bn_ablation`` superset their switched-off γ is exactly 1 regardless.
      track_step_conditioning: keep the in-training κ_W estimate in the optimizer state
        (:mod:`jaxnorm.diagnostics.step_tracker`; read it with the
        ``StepConditioning`` observer). Changes no update.
      tag: a label that tells apart runs of the same norm in reports (a run's variant is
        ``norm`` or ``norm+tag``); changes nothing in training.

    Bookkeeping:
      eval_every_epochs: evaluate every k epochs (and after the last).
      eval_bn_mode: ``'running'`` (BN uses running statistics; default) or ``'batch'``
        (BN uses each eval batch's statistics, as TENT's baseline does); the
        vocabulary of :mod:`jaxnorm.modes`.
      divergence_factor: a run has also diverged once its training loss exceeds this
        multiple of its first step's loss (None: only a non-finite loss is divergence).
        Gradient descent past the edge of stability can climb for many steps with a
        finite loss.
      eval_batch_size: batch size of evaluation.
      log_every_steps: how often training metrics are pulled to the host (the only
        host sync of the hot loop) and written to ``metrics.jsonl``.
      record_every_steps: the γ/β recorder's interval (source document 001: 5).
      checkpoint_every_epochs: checkpoint interval (0: never; the last epoch is
        always checkpointed when > 0).
      num_devices: data-parallel over this many local devices (None: 1).
      sync_bn: with several devices, BatchNorm statistics over the global batch
        (True) or per device, as ghost batches of the per-device size (False).
      study, name, results_dir: the run writes ``results_dir/study/name/``.
    """

    dataset: str = "digits32"
    model: str = "3c3d"
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    norm: str = "bn_gamma_beta"

    loss: str = "ce"
    batch_size: int = 128
    epochs: int = 1
    max_steps: Optional[int] = None
    full_batch: bool = False
    optimizer: str = "sgd"
    optimizer_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    learning_rate: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    schedule: str = "constant"
    schedule_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    augment: Optional[AugmentConfig] = None
    train_split: str = "train"
    eval_splits: tuple[str, ...] = ("train_eval", "test")
    train_subset: Optional[int] = None
    eval_subset: Optional[int] = None
    seed: int = 0
    frozen: Optional[str] = None
    gamma_init: float = 1.0
    track_step_conditioning: bool = False
    tag: str = ""

    eval_every_epochs: int = 1
    eval_bn_mode: str = "running"
    divergence_factor: Optional[float] = None
    eval_batch_size: int = 500
    log_every_steps: int = 50
    record_every_steps: int = 5
    checkpoint_every_epochs: int = 1
    num_devices: Optional[int] = None
    sync_bn: bool = True

    study: str = "adhoc"
    name: str = "run"
    results_dir: str = "results"

    def __post_init__(self):
        positive = ("batch_size", "epochs", "eval_every_epochs", "eval_batch_size", "log_every_steps", "record_every_steps")
        for f in positive:
            if getattr(self, f) < 1:
                raise ValueError(f"TrainConfig.{f} must be >= 1, got {getattr(self, f)}.")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"TrainConfig.max_steps must be >= 1 or None, got {self.max_steps}.")
        check_bn_mode(self.eval_bn_mode, EVAL_BN_MODES, where="TrainConfig.eval_bn_mode")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}.")
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate}.")
        if self.momentum < 0:
            raise ValueError(f"TrainConfig.momentum must be >= 0, got {self.momentum}.")
        if self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps}.")
        if self.divergence_factor is not None and not self.divergence_factor > 1:
            raise ValueError(f"TrainConfig.divergence_factor must be > 1 or None, got {self.divergence_factor}.")
        lookup(LOSSES, self.loss, "TrainConfig.loss")
        lookup({k: k for k in OPTIMIZERS}, self.optimizer, "TrainConfig.optimizer")
        if self.frozen is not None:
            try:
                re.compile(self.frozen)
            except re.error as e:
                raise ValueError(f"TrainConfig.frozen is not a valid regular expression ({self.frozen!r}): {e}.") from None

    def replace(self, **changes) -> "TrainConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def quick(self, steps: int = 20, subset: int = 256) -> "TrainConfig":
        """A shrunken copy for a laptop or a test: at most ``steps`` steps on the first
        ``subset`` training examples (and eval examples), one epoch, evaluated and
        checkpointed once."""
        return self.replace(
            max_steps=min(steps, self.max_steps or steps),
            train_subset=min(subset, self.train_subset or subset),
            eval_subset=min(subset, self.eval_subset or subset),
            epochs=1,
            batch_size=min(self.batch_size, subset),
            log_every_steps=min(self.log_every_steps, steps),
        )

    def to_dict(self) -> dict:
        """JSON-ready dict (what ``config.json`` holds)."""
        d = dataclasses.asdict(self)
        d["model_kwargs"] = dict(self.model_kwargs)
        d["schedule_kwargs"] = dict(self.schedule_kwargs)
        d["optimizer_kwargs"] = dict(self.optimizer_kwargs)
        d["eval_splits"] = list(self.eval_splits)
        return json.loads(json.dumps(d, default=str))

    @classmethod
    def from_dict(cls, d: Mapping) -> "TrainConfig":
        """Inverse of :meth:`to_dict` (e.g. from a run's ``config.json``)."""
        d = dict(d)
        if "eval_mode" in d:  # the field's name before the one BN-mode vocabulary
            d["eval_bn_mode"] = d.pop("eval_mode")
        if d.get("augment") is not None:
            d["augment"] = AugmentConfig(**d["augment"])
        d["eval_splits"] = tuple(d.get("eval_splits", ()))
        return cls(**d)
