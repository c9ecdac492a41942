"""The digits run shared by the studies of the gradient-conditioning thesis's figures that
had no counterpart (samplers, masking, mirrored weights; “Gradient Conditioning in Deep
Neural Networks”, BYU thesis 2022): the conditioning study's training setup (SGD at
batch 64, the thesis's batch size, momentum 0.9, learning rate 0.01, 6 epochs = 132
steps on the 1438 training digits, no augmentation), and the thesis's 11-layer ConvNet
with normalization and without skip connections in miniature (16 channels, three
stages at 8x8, 4x4, 2x2).
"""

from jaxnorm.train import TrainConfig

BASE = TrainConfig(
    dataset="digits", norm="bn_gamma_beta", batch_size=64, learning_rate=0.01, momentum=0.9, epochs=6, augment=None,
    eval_splits=("train_eval", "test"), eval_batch_size=512, log_every_steps=11, checkpoint_every_epochs=6,
)  # fmt: skip
CONVNET11 = {"depth": 11, "width": 16, "stages": 3, "residual": False}
#: The thesis's scale for a GPU (not run here: no GPU with CIFAR-10 prepared): CIFAR-10
#: (782 steps per epoch at the thesis's batch 64), 10 epochs, 32 channels.
CIFAR10 = BASE.replace(dataset="cifar10", epochs=10, eval_splits=("test",), log_every_steps=100, checkpoint_every_epochs=1)
CONVNET11_CIFAR10 = {**CONVNET11, "width": 32}


def quick_base(base: TrainConfig) -> TrainConfig:
    """The ``--quick`` training run: 4 steps on 256 examples, its final state checkpointed."""
    return base.quick(steps=4, subset=256).replace(checkpoint_every_epochs=1)


def seed_config(base: TrainConfig, model: str, model_kwargs, norm: str, seed: int, location: dict) -> TrainConfig:
    """Run ``s<seed>`` of a study whose runs differ only in seed (``location``:
    :func:`jaxnorm.study.run_location`)."""
    return base.replace(model=model, model_kwargs=dict(model_kwargs), norm=norm, seed=seed, name=f"s{seed}", **location)
