"""The gradient-conditioning study on CIFAR-10, as the gradient-conditioning thesis (“Gradient Conditioning in Deep Neural Networks”, BYU 2022) ran it.

Five architectures (fully connected with orthogonal init and ReLU or CReLU, looks-linear
CReLU, ConvNet without and with residual connections) x {no BN, BN} x depths 11, 26 and
40 (``--depth 55`` and more add depths), trained with SGD at batch 64 (the thesis's only
batch size), momentum 0.9, learning rate 0.01 decreased tenfold when the epoch's mean
training loss has not improved for 5 epochs (the thesis: "learning rate decreased on
plateau"), 50 epochs, no weight decay. Every gradient metric is sampled about twice per
epoch (every 312 of the 625 steps) on batches of 64 drawn from the first 1024 training
examples; the in-training κ_W estimate every 25 steps with the training loss.

Data: the DeepOBS split (40k train), normalization only -- no augmentation: the thesis
describes none, and its discussion of networks that "converged to zero loss" needs a
training set that can be fit exactly; the metrics then also see the distribution the
training loss is measured on. Widths: 256 hidden units (FC), 64 channels (ConvNet), 3
resolution stages (32, 16, 8).

Launch (GPU/TPU, CIFAR-10 prepared for tfds, see the README's "Data" section):

    python -m experiments.conditioning --config cifar10
    python -m experiments.conditioning --config cifar10 --shard $SLURM_ARRAY_TASK_ID/6   # 30 runs, 5 per task

Expected runtime: not measured (no GPU and no CIFAR-10 here). Estimate: 31k steps per run
at a few ms per step on an H100 plus ~100 conditioning samples of well under a second,
so a few minutes per run, about 1-3 h for the 30 runs; depth 40 and the metric timings
dominate. Checkpoints every 10 epochs; a rerun resumes unfinished runs and skips
finished ones. On a 2-core CPU use the digits config (``conditioning_digits``).
"""

from jaxnorm.train import TrainConfig


def get_config() -> dict:
    """The fields of ``experiments.conditioning.ConditioningSetup`` (that module builds the setup)."""
    base = TrainConfig(
        dataset="cifar10",
        batch_size=64,
        learning_rate=0.01,
        momentum=0.9,
        schedule="plateau",
        schedule_kwargs={"factor": 0.1, "patience": 5},
        epochs=50,
        weight_decay=0.0,
        augment=None,
        train_split="train",
        eval_splits=("train_eval", "test"),
        eval_every_epochs=5,
        eval_batch_size=1000,
        log_every_steps=25,
        checkpoint_every_epochs=10,
        track_step_conditioning=True,
    )
    return dict(
        base=base,
        depths=(11, 26, 40),
        fc_width=256,
        conv_width=64,
        conv_stages=3,
        pool_size=1024,
        conditioning={"batch_size": 64, "num_batches": 4},
    )
