"""The five BatchNorm variants on MNIST-1D ("Scaling Down Deep Learning with MNIST-1D",
Greydanus & Kobak, ICML 2024): the offline problem where the variants can differ.

On the 8x8 digits almost any network reaches ~99% and the variants differ by a few
thousandths of loss; MNIST-1D separates models (the paper's CNN 94%, MLP 68%) and a deep
plain network trained by SGD does not fit it easily, so normalization has room to matter.
The network: the zoo's ``'convnet'`` on the 1-D sequences (``(b, 40, 1)``; kernels of 3,
average pooling by 2 between stages, BatchNorm over batch and length), 8 weight layers of
width 32 in 3 stages, He-normal initialization; plain SGD at a constant lr 0.1 (the digits
config's), batch 64, 20 epochs of the 3,200 training sequences (1,000 steps), no
augmentation (a translated or flipped signal can change its class in MNIST-1D's
construction, so none is applied). The loss on ``train_eval`` (800 of the training
sequences) and on ``test`` is recorded after every epoch.

Launch: ``python -m experiments.ablation --config mnist1d`` (three seeds; add
``--lr-scale 0.1 1 10`` for the learning-rate test, ``--positions default first
penultimate`` for placement presets).
"""

from jaxnorm.train import TrainConfig


def get_config():
    return TrainConfig(
        dataset="mnist1d",
        model="convnet",
        model_kwargs={"depth": 8, "width": 32, "stages": 3},
        batch_size=64,
        learning_rate=0.1,
        momentum=0.0,
        epochs=20,
        weight_decay=0.0,
        augment=None,
        eval_batch_size=800,
        log_every_steps=50,
        record_every_steps=10,
        checkpoint_every_epochs=5,
        study="ablation",
        name="mnist1d",
    )
