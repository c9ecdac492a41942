"""The gradient-conditioning study's offline default: the thesis's comparisons, shrunk to
the 8x8 digits and sized for a 2-core CPU.

Default (``python -m experiments.conditioning``): no BN vs BN (γ and β) on three
architectures at depth 4 -- the fully connected ReLU net with orthogonal init, the
ConvNet without skips and the ResNet (the ConvNet with identity skips) -- and the depth
contrast 4 vs 11 on the fully connected ReLU net, x seeds 0, 1, 2: 8 configurations, 24
runs; the three seeds of a configuration train as one ``fit_many`` program. Each trains
15 epochs (330 steps) on the 1438 training digits with SGD at batch 64 (the thesis's
batch size), momentum 0.9, learning rate 0.01 decreased tenfold on a 3-epoch plateau of
the training loss (as in the thesis), no augmentation, no weight decay. 15 epochs, not
6: the depth-4 ConvNet and ResNet without BN sit at a loss of about ln 10 for the first
~150 steps and only then learn. Widths: 128 hidden units (FC), 16 channels (ConvNet;
depth 4 is one stage at 8x8). Every gradient metric is sampled once per epoch (every 22
steps, 16 samples) on batches of 64 from the first 1024 training examples, the same
batches for every seed; the η sweep of κ_W and κ_X (11 step sizes, 1e-6 to 0.1) at
every fifth sample only (steps 0, 110, 220, 330: it costs about as much as all other
metrics together); the in-training κ_W (consecutive and same batch) every 2 steps with
the training loss. Metric costs are timed (3 calls after a compile) in the 4 seed-0 runs
without BN only.

``--config digits_full`` (:func:`get_full_config`) is the whole grid: all five
architectures (adding CReLU with orthogonal and with looks-linear init) x {no BN, BN} x
depths 4 and 11 x 3 seeds, 60 runs in 20 programs, the sweep at every second sample.
Runtime, on the shared 2-core Intel Xeon CPU under a load average of about 20: the
first two configurations (6 runs) took 33 min wall and 7.3 CPU-min; extrapolated, the
default needs about 28 CPU-min there (about 14 min on 2 busy cores, somewhat less on
quiet ones: not measured), the full grid 2.5-3x that.
A GPU gains little on nets this small; for the thesis's setup see ``conditioning_cifar10``.
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
        architectures=("ortho_relu", "convnet", "resnet"),
        deep_architectures=("ortho_relu",),
        depths=(4, 11),
        fc_width=128,
        conv_width=16,
        samples_per_epoch=1,
        sweep_every=5,
        cost_repeats=3,
        cost_norms=("vanilla",),
        cost_seeds=(0,),
        seeds=(0, 1, 2),
    )


def get_full_config() -> dict:
    """The whole grid (module docstring): every architecture at every depth, a sweep at
    every second conditioning sample."""
    every = ("ortho_relu", "ortho_crelu", "looks_linear", "convnet", "resnet")
    return {**get_config(), "architectures": every, "deep_architectures": None, "sweep_every": 2}
