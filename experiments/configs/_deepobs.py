"""What the three DeepOBS problems of the thesis share (“Dissecting BatchNorm: An Ablation Study on the Core Components”, Tübingen thesis 2023, Table 3.1)."""

from __future__ import annotations

from jaxnorm.data import DEEPOBS_AUGMENT
from jaxnorm.train import TrainConfig


def deepobs_config(*, as_published_code: bool, **fields) -> TrainConfig:
    """Plain SGD, constant learning rate, cross-entropy + L2 on the weights (the thesis's
    text; DeepOBS-PyTorch also decays BN's γ: pass ``l2_scope='all_but_bias'``), the DeepOBS
    augmentation, train on the 40k split, report train_eval and test every epoch (the fixed
    train_eval split; DeepOBS-PyTorch redraws it, augmented, every time:
    ``train_eval_mode='deepobs'``).

    ``as_published_code=True`` reproduces what the thesis's published code did instead of
    what its text says: its L2 term never reached the loss (``weight_decay=0``). The
    CIFAR-100 configs apply their own code differences (10x smaller learning rate,
    All-CNN-C 500 epochs). Not reproduced: the code's validation split could overlap the
    training data; jaxnorm's splits are disjoint.
    """
    base = dict(
        momentum=0.0,
        schedule="constant",
        augment=DEEPOBS_AUGMENT,
        train_split="train",
        eval_splits=("train_eval", "test"),
        eval_batch_size=1000,
        record_every_steps=5,
        log_every_steps=100,
        checkpoint_every_epochs=10,
        study="ablation",
    )
    base.update(fields)
    if as_published_code:
        base["weight_decay"] = 0.0
    return TrainConfig(**base)
