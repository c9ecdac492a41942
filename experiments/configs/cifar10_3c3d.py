"""CIFAR-10 3C3D (thesis Table 3.1): batch 128, lr 0.022, 100 epochs, L2 0.002.

Launch (GPU/TPU; the five variants train as one vmapped program):

    python -m experiments.ablation --config cifar10_3c3d
    python -m experiments.ablation --config cifar10_3c3d --lr-scale 0.1 1 10 --shard $SLURM_ARRAY_TASK_ID/3

Expected runtime: not yet measured on a GPU here (none was lent). Estimate: 3C3D at batch
128 is ~0.6 GFLOP per step (fwd+bwd); the five variants x 312 steps x 100 epochs are
~10^5 GFLOP, minutes of pure compute on an H100, so expect 5-15 min per lr scale, data
and evaluation included. On a 2-core CPU: about 1.5 s per step for the five variants
(BENCHMARKS.md), i.e. ~13 h: use ``--quick``.
"""

from experiments.configs._deepobs import deepobs_config


def get_config(as_published_code: bool = False):
    return deepobs_config(
        as_published_code=as_published_code,
        dataset="cifar10",
        model="3c3d",
        batch_size=128,
        learning_rate=0.022,
        epochs=100,
        weight_decay=0.002,
        name="cifar10_3c3d",
    )
