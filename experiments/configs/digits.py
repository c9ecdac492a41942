"""The offline default: the five variants on the embedded digits (``make demo``).

A 6-layer plain ConvNet (width 32) on the 8x8 digits, batch 64, plain SGD at a constant
lr 0.1, 10 epochs, no augmentation (flipping digits would change their meaning). Chosen
so the variants' differences show within a couple of minutes on 2 CPU cores: without
BN the net learns slowly at this step size; with it the normalization alone does most of
the work and γ/β add a little on top -- the main finding of "Dissecting BatchNorm: An
Ablation Study on the Core Components" (master thesis, University of Tübingen, 2023),
on a problem you can run anywhere.

10 epochs, not the 20 of before issue 14: the ablation now trains three seeds by
default, and three seeds of 20 epochs took 337 s wall on the shared 2-core machine
(measured), against the ≈ 2 min a ``make demo`` should take. At epoch 10 the variants
are already apart on every seed (train_eval loss: vanilla 0.25-0.32, BN variants
0.033-0.066; train accuracy 0.95-0.96 against 1.0), in the same order as at epoch 20,
and the first 10 epochs are bit-identical to those of the 20-epoch runs.

Launch: ``python -m experiments.ablation`` (or ``make demo``). Runtime (measured on the
shared 2-core machine, under load from other jobs): 237 s wall, 154 s of CPU, for the
five variants in one program per seed (the old one-seed, 20-epoch demo: 222 s wall, 106
s CPU under the same load, ~80 s when measured on a quieter machine); seconds on a GPU. A checkpoint after
every epoch: a killed demo resumes from its last epoch, and a second ``make demo`` reads
the finished runs back (one line each) instead of training them again.
"""

from jaxnorm.train import TrainConfig


def get_config():
    return TrainConfig(
        dataset="digits",
        model="convnet",
        model_kwargs={"depth": 6, "width": 32},
        batch_size=64,
        learning_rate=0.1,
        momentum=0.0,
        epochs=10,
        weight_decay=0.0,
        augment=None,
        eval_batch_size=512,
        log_every_steps=50,
        record_every_steps=5,
        # Every epoch, so a killed demo resumes; measured: no cost above noise
        # (88 vs 90 s for 4 epochs x 5 variants on 2 busy cores).
        checkpoint_every_epochs=1,
        study="ablation",
        name="digits",
    )
