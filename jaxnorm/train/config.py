"""``TrainConfig``: one training run, described as code.

Every choice that changes a result is a field here (and lands in the run's
``config.json``), so two runs differ exactly where their configs differ. A run's
identity -- what a run folder is compared on before it is resumed -- is every field but
the bookkeeping of :data:`jaxnorm.train.run_folder.BOOKKEEPING_FIELDS` (where it is
stored, its tag, and how often it logs, evaluates, records and checkpoints).

Values are checked at construction (``ValueError`` naming the field): counts are
integers (not floats or bools; numpy integers become ints), the learning rate is finite
and > 0, the momentum in [0, 1), ``study`` and ``name`` are relative folder names that
stay below ``results_dir``. Studies build
configs in ``experiments/configs/``; :meth:`TrainConfig.quick` shrinks any of them for
a laptop or a test.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
from typing import Any, Mapping, Optional

from jaxnorm._registry import lookup
from jaxnorm.data.augmentation import AugmentConfig
from jaxnorm.modes import check_bn_mode
from jaxnorm.objective import LOSSES, check_l2_scope
from jaxnorm.train.metric_loggers import check_logger_names
from jaxnorm.train.optim import OPTIMIZERS

EVAL_BN_MODES = ("running", "batch")  # jaxnorm.modes: running statistics, or each eval batch's
TRAIN_EVAL_MODES = ("fixed", "deepobs")  # the stored train_eval split, or DeepOBS-PyTorch's redraw

_OPTIONAL_INTEGER_FIELDS = ("max_steps", "train_subset", "eval_subset", "num_devices")
_INTEGER_FIELDS = (
    "batch_size", "epochs", "warmup_steps", "seed", "eval_every_epochs", "eval_batch_size",
    "log_every_steps", "record_every_steps", "checkpoint_every_epochs",
) + _OPTIONAL_INTEGER_FIELDS


def _check_real(field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"TrainConfig.{field} must be a finite number, got {value!r}.")


def _check_relative_name(field: str, value) -> None:
    """``study`` and ``name`` are folders below ``results_dir``: relative, '/'-separated
    parts (studies nest, e.g. study ``'ablation/digits'``, name ``'lr1/bn_s0'``), none
    empty, ``'.'`` or ``'..'``, so a run can never write outside its study's folder."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"TrainConfig.{field} must be a non-empty string, got {value!r}.")
    parts = value.split("/")
    if value.startswith("/") or "\\" in value or "\0" in value or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"TrainConfig.{field}={value!r} must be a relative path of '/'-separated names, none empty, '.' or '..' "
            "(it is a folder below results_dir)."
        )


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
        :func:`jaxnorm.train.optim.make_optimizer`; ``learning_rate`` finite and > 0,
        ``momentum`` in [0, 1) (at 1 or above the heavy-ball sum grows without bound). The learning rate, momentum and
        weight decay are data (in the optimizer state): runs that differ only in them
        train as one program in :func:`~jaxnorm.train.fit_many`.
      weight_decay: λ. For ``sgd``/``adam`` the L2 term ``0.5 λ Σ ||θ||²`` added to the
        loss; for ``adamw`` decoupled decay; θ ranges over ``l2_scope``.
      l2_scope: which parameters λ covers (:data:`jaxnorm.objective.L2_SCOPES`):
        ``'weights'`` (default: the kernels, the thesis's text) or ``'all_but_bias'``
        (DeepOBS-PyTorch's behaviour: every parameter not named ``bias``, so BN's γ
        too). Structure: runs trained as one program share it.
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

    Evaluation and bookkeeping (of these, only the fields in ``BOOKKEEPING_FIELDS`` leave a
    run's identity unchanged; ``eval_bn_mode``, ``eval_batch_size``, ``divergence_factor``,
    ``num_devices``, ``sync_bn`` and ``train_eval_mode`` can change its numbers):
      eval_every_epochs: evaluate every k epochs (and after the last).
      train_eval_mode: how the ``'train_eval'`` split (the training-loss set) is formed:
        ``'fixed'`` (default) -- the stored split, the same examples every evaluation,
        normalized only; ``'deepobs'`` -- DeepOBS-PyTorch's behaviour: as many examples
        as that split holds (after ``eval_subset``, at most the training set's size),
        redrawn at every evaluation from all of the run's training examples and passed
        through the training ``augment`` (:func:`jaxnorm.train.step.make_drawn_evaluate`;
        DeepOBS-PyTorch draws from the 50k images that also hold its validation set:
        here from the training split only, the splits staying disjoint). Needs
        ``'train_eval'`` in ``eval_splits``.
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
      loggers: sinks that receive every ``metrics.jsonl`` line as it is written, names
        from :data:`jaxnorm.train.metric_loggers.LOGGERS`: ``'tensorboard'`` (event files
        in ``<run>/tensorboard/``) and ``'wandb'`` (one Weights & Biases run per run);
        both need ``pip install 'jaxnorm[log]'``. Default ``()``: none, no other file is
        written. A list is kept as a tuple; an unknown name or one given twice is a
        ValueError. Bookkeeping: switching them on for a resumed run keeps its identity.
      record_every_steps: the γ/β recorder's interval (“Dissecting BatchNorm: An Ablation Study on the Core Components”, Tübingen thesis 2023: 5).
      checkpoint_every_epochs: checkpoint interval (0: never; the last epoch is
        always checkpointed when > 0).
      num_devices: data-parallel over this many local devices (None: 1).
      sync_bn: with several devices, BatchNorm statistics over the global batch
        (True) or per device, as ghost batches of the per-device size (False).
      study, name, results_dir: the run writes ``results_dir/study/name/``. ``study``
        and ``name`` may nest (``'ablation/digits'``, ``'lr1/bn_s0'``) but every
        '/'-separated part must be a real name: not empty, ``'.'`` or ``'..'``, and not
        absolute, so no run writes outside its study's folder.
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
    l2_scope: str = "weights"
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
    train_eval_mode: str = "fixed"
    eval_bn_mode: str = "running"
    divergence_factor: Optional[float] = None
    eval_batch_size: int = 500
    log_every_steps: int = 50
    loggers: tuple[str, ...] = ()
    record_every_steps: int = 5
    checkpoint_every_epochs: int = 1
    num_devices: Optional[int] = None
    sync_bn: bool = True

    study: str = "adhoc"
    name: str = "run"
    results_dir: str = "results"

    def __post_init__(self):
        self._check_integers()
        positive = ("batch_size", "epochs", "eval_every_epochs", "eval_batch_size", "log_every_steps", "record_every_steps")
        for f in positive:
            if getattr(self, f) < 1:
                raise ValueError(f"TrainConfig.{f} must be >= 1, got {getattr(self, f)}.")
        for f in ("max_steps", "train_subset", "eval_subset", "num_devices"):
            if getattr(self, f) is not None and getattr(self, f) < 1:
                raise ValueError(f"TrainConfig.{f} must be >= 1 or None, got {getattr(self, f)}.")
        if self.checkpoint_every_epochs < 0:
            raise ValueError(f"TrainConfig.checkpoint_every_epochs must be >= 0 (0: never), got {self.checkpoint_every_epochs}.")
        for f in ("learning_rate", "momentum", "weight_decay", "gamma_init"):
            _check_real(f, getattr(self, f))
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0 and finite, got {self.learning_rate}.")
        # momentum >= 1 makes the heavy-ball average grow without bound (momentum=5 trains
        # to a loss of 1e6 that is still finite, so divergence would not catch it).
        if not 0 <= self.momentum < 1:
            raise ValueError(f"TrainConfig.momentum must lie in [0, 1), got {self.momentum}.")
        for f in ("study", "name"):
            _check_relative_name(f, getattr(self, f))
        object.__setattr__(self, "loggers", check_logger_names(self.loggers))
        if not isinstance(self.tag, str):
            raise ValueError(f"TrainConfig.tag must be a string, got {self.tag!r}.")
        check_bn_mode(self.eval_bn_mode, EVAL_BN_MODES, where="TrainConfig.eval_bn_mode")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}.")
        if self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps}.")
        if self.divergence_factor is not None and not self.divergence_factor > 1:
            raise ValueError(f"TrainConfig.divergence_factor must be > 1 or None, got {self.divergence_factor}.")
        lookup(LOSSES, self.loss, "TrainConfig.loss")
        check_l2_scope(self.l2_scope, where="TrainConfig.l2_scope")
        if self.train_eval_mode not in TRAIN_EVAL_MODES:
            raise ValueError(f"TrainConfig.train_eval_mode must be one of {list(TRAIN_EVAL_MODES)}, got {self.train_eval_mode!r}.")
        if self.train_eval_mode == "deepobs" and "train_eval" not in self.eval_splits:
            raise ValueError(f"TrainConfig.train_eval_mode='deepobs' redraws the 'train_eval' split, which eval_splits {list(self.eval_splits)} lacks.")
        lookup({k: k for k in OPTIMIZERS}, self.optimizer, "TrainConfig.optimizer")
        if self.frozen is not None:
            try:
                re.compile(self.frozen)
            except re.error as e:
                raise ValueError(f"TrainConfig.frozen is not a valid regular expression ({self.frozen!r}): {e}.") from None

    def _check_integers(self) -> None:
        """Every count is a Python int (numpy integers are converted, so ``config.json``
        holds numbers): a float or a bool is refused here, naming the field, instead of
        failing later somewhere that has nothing to do with it (the device mesh)."""
        for f in _INTEGER_FIELDS:
            v = getattr(self, f)
            if v is None and f in _OPTIONAL_INTEGER_FIELDS:
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ValueError(f"TrainConfig.{f} must be an integer, got {v!r} ({type(v).__name__}).")
            object.__setattr__(self, f, int(v))

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
        d["loggers"] = list(self.loggers)
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
