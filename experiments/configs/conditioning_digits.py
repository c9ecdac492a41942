"""The gradient-conditioning study's offline default: the thesis's grid, shrunk to the 8x8 digits.

Five architectures (fully connected with orthogonal init and ReLU or CReLU, looks-linear
CReLU, ConvNet without and with residual connections) x {no BN, BN} x depths 4 and 11
(``--depth 26`` adds more), 20 runs. Each trains 6 epochs (132 steps) on the 1438
training digits with SGD at batch 64 (the thesis's batch size), momentum 0.9, learning
rate 0.01 decreased tenfold on a 3-epoch plateau of the training loss (as in the
thesis; within 6 epochs it does not trigger), no augmentation, no weight decay. Widths:
128 hidden units (FC), 16 channels (ConvNet; depth 4 is one stage at 8x8, depth 11 three
stages 8, 4, 2). Every gradient metric is sampled twice per epoch (every 11 steps, 13
samples) on batches of 64 from the first 1024 training examples; the in-training κ_W
estimate every 2 steps with the training loss (66 records: the 20-record moving average
of the key points spans 40 steps). Metric costs are timed (3 calls after a compile) in
the 10 runs without BN only -- BN adds a few hundred parameters, and the timing's
compiles are a third of the runtime.

Launch: ``python -m experiments.conditioning``. Runtime: 6 min on this 2-core CPU
(5 min 57 s measured: 345 s training and timing, the rest imports and the 28 plots;
another job shared the cores part of the time, and under heavy contention it took three
times as long). A GPU gains little on nets this small; for the thesis's setup see
``conditioning_cifar10``.
"""

from jaxnorm.train import TrainConfig


def get_config() -> dict:
    """The fields of ``experiments.conditioning.ConditioningSetup`` (that module builds the setup)."""
    base = TrainConfig(
        dataset="digits",
        batch_size=64,
        learning_rate=0.01,
        momentum=0.9,
        schedule="plateau",
        schedule_kwargs={"factor": 0.1, "patience": 3},
        epochs=6,
        weight_decay=0.0,
        augment=None,
        eval_splits=("train_eval", "test"),
        eval_batch_size=512,
        log_every_steps=2,
        checkpoint_every_epochs=6,  # the final state only: a rerun restores it instead of retraining
        track_step_conditioning=True,
    )
    return dict(
        base=base,
        depths=(4, 11),
        fc_width=128,
        conv_width=16,
        cost_repeats=3,
        cost_norms=("vanilla",),
    )
