"""The training engine: state, loss, optimizers, compiled steps, the ``fit`` loop,
observers, checkpoints, data parallelism and many runs at once."""

from jaxnorm.train.checkpoint import CheckpointError, Checkpointer
from jaxnorm.train.config import TrainConfig
from jaxnorm.train.loop import FitResult, build_model, fit, fit_many
from jaxnorm.train.run_folder import BOOKKEEPING_FIELDS, RunExistsError, RunLockedError
from jaxnorm.objective import accuracy, cross_entropy, l2_penalty
from jaxnorm.observers import GammaBetaRecorder, Observer, ReluSparsity, norm_layers
from jaxnorm.train.optim import SCHEDULES, make_optimizer
from jaxnorm.results import RunDir, read_jsonl, read_npz
from jaxnorm.train.state import TrainState, create_state
from jaxnorm.train.step import layout_eval, make_evaluate, make_train_step

__all__ = [
    "BOOKKEEPING_FIELDS",
    "CheckpointError",
    "Checkpointer",
    "FitResult",
    "GammaBetaRecorder",
    "Observer",
    "ReluSparsity",
    "RunDir",
    "RunExistsError",
    "RunLockedError",
    "SCHEDULES",
    "TrainConfig",
    "TrainState",
    "accuracy",
    "build_model",
    "create_state",
    "cross_entropy",
    "fit",
    "fit_many",
    "l2_penalty",
    "layout_eval",
    "make_evaluate",
    "make_optimizer",
    "make_train_step",
    "norm_layers",
    "read_jsonl",
    "read_npz",
]
