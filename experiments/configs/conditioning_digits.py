"""The gradient-conditioning study's offline default: the thesis's grid, shrunk to the 8x8 digits.

Five architectures (fully connected with orthogonal init and ReLU or CReLU, looks-linear
CReLU, ConvNet without and with residual connections) x {no BN, BN} x depths 4 and 11
(``--depth 26`` adds more), x seeds 0, 1, 2: 60 runs. Each trains 15 epochs (330 steps)
on the 1438 training digits with SGD at batch 64 (the thesis's batch size), momentum 0.9,
learning rate 0.01 decreased tenfold on a 3-epoch plateau of the training loss (as in the
thesis), no augmentation, no weight decay. 15 epochs, not 6: the depth-4 ConvNet and
ResNet without BN sit at a loss of about ln 10 for the first ~150 steps and only then
learn (seed 0: 0.54 / 0.78 at step 300). Widths: 128 hidden units (FC), 16 channels
(ConvNet; depth 4 is one stage at 8x8, depth 11 three stages 8, 4, 2). Every gradient
metric is sampled once per epoch (every 22 steps, 16 samples) on batches of 64 from the
first 1024 training examples, the same batches for every seed; the η sweep of κ_W and
κ_X (11 step sizes) at every second sample from step 0; the in-training κ_W (consecutive
and same batch) every 2 steps with the training loss (165 records). Metric costs are
timed (3 calls after a compile) in the 10 seed-0 runs without BN only.

Launch: ``python -m experiments.conditioning``. Runtime: not measured to the end on this
2-core CPU: under a load average of 12-17 (other jobs) one run took about 7 min, so the
60 runs would take hours there; on an idle machine expect well over the 6 min the
earlier 6-epoch one-seed default took. A GPU gains little on nets this small; for the
thesis's setup see ``conditioning_cifar10``.
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
        epochs=15,
        weight_decay=0.0,
        augment=None,
        eval_splits=("train_eval", "test"),
        eval_batch_size=512,
        log_every_steps=2,
        checkpoint_every_epochs=15,  # the final state only: a rerun restores it instead of retraining
        track_step_conditioning=True,
    )
    return dict(
        base=base,
        depths=(4, 11),
        fc_width=128,
        conv_width=16,
        samples_per_epoch=1,
        sweep_every=2,
        cost_repeats=3,
        cost_norms=("vanilla",),
        cost_seeds=(0,),
        seeds=(0, 1, 2),
    )
