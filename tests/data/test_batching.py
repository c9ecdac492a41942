"""Batching: pure functions of (seed, epoch, step); permutations, coverage, jit, padded eval batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.data import batch_indices, epoch_permutation, get_batch, iterate_eval, step_key, steps_per_epoch
from jaxnorm.data.batching import SHUFFLE_STEP


def test_step_key_is_the_documented_fold_in_and_works_traced():
    ref = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(7), 3), 11)
    np.testing.assert_array_equal(step_key(7, 3, 11), ref)
    np.testing.assert_array_equal(jax.jit(step_key, static_argnums=0)(7, jnp.int32(3), jnp.int32(11)), ref)
    keys = {tuple(np.asarray(step_key(0, e, s)).tolist()) for e in range(3) for s in range(5)}
    keys.add(tuple(np.asarray(step_key(1, 0, 0)).tolist()))
    keys.add(tuple(np.asarray(step_key(0, 0, SHUFFLE_STEP)).tolist()))
    assert len(keys) == 17  # distinct across epochs, steps, seeds and the shuffle stream


def test_epoch_permutation_is_a_seeded_permutation():
    n = 1000
    p = np.asarray(epoch_permutation(0, 0, n))
    assert p.shape == (n,) and p.dtype == np.int32
    np.testing.assert_array_equal(np.sort(p), np.arange(n))
    np.testing.assert_array_equal(epoch_permutation(0, 0, n), p)  # same (seed, epoch): same order
    assert not np.array_equal(epoch_permutation(0, 1, n), p)  # next epoch: new order
    assert not np.array_equal(epoch_permutation(1, 0, n), p)  # other seed: new order
    assert not np.array_equal(p, np.arange(n))
    jitted = jax.jit(epoch_permutation, static_argnums=(0, 2))
    np.testing.assert_array_equal(jitted(0, jnp.int32(1), n), epoch_permutation(0, 1, n))


def test_epoch_permutation_and_step_key_vmap_over_seeds():
    # Many runs at once (jaxnorm.train vmaps over seeds): row r equals the unbatched call.
    seeds = jnp.arange(3)
    perms = jax.jit(jax.vmap(epoch_permutation, in_axes=(0, None, None)), static_argnums=2)(seeds, 2, 64)
    keys = jax.vmap(step_key, in_axes=(0, None, None))(seeds, 2, 5)
    for r in range(3):
        np.testing.assert_array_equal(perms[r], epoch_permutation(r, 2, 64))
        np.testing.assert_array_equal(keys[r], step_key(r, 2, 5))


def test_steps_per_epoch():
    assert steps_per_epoch(1000, 128) == 7
    assert steps_per_epoch(1000, 128, drop_remainder=False) == 8
    assert steps_per_epoch(1024, 128, drop_remainder=False) == 8
    assert steps_per_epoch(40_000, 128) == 312
    with pytest.raises(ValueError, match="larger than the dataset"):
        steps_per_epoch(10, 11)
    with pytest.raises(ValueError, match="batch_size >= 1"):
        steps_per_epoch(10, 0)


def test_batches_of_an_epoch_are_distinct_and_follow_the_permutation():
    n, bs = 1000, 128
    steps = steps_per_epoch(n, bs)
    perm = epoch_permutation(3, 2, n)
    traces = []

    @jax.jit
    def indices(perm, s):
        traces.append(1)  # runs only while tracing
        return batch_indices(perm, s, bs)

    batches = [np.asarray(indices(perm, jnp.int32(s))) for s in range(steps)]
    assert len(traces) == 1  # traced step: one compilation for the whole epoch
    flat = np.concatenate(batches)
    assert all(b.shape == (bs,) for b in batches)
    assert len(np.unique(flat)) == steps * bs == 896
    np.testing.assert_array_equal(flat, np.asarray(perm)[: steps * bs])
    np.testing.assert_array_equal(batch_indices(perm, 2, bs), batches[2])  # eager = jitted


def test_same_seed_same_batches_whatever_ran_before():
    # A resumed run recomputes (epoch 4, step 5) from scratch and gets the same examples.
    n, bs = 500, 32
    fresh = batch_indices(epoch_permutation(9, 4, n), 5, bs)
    _ = [epoch_permutation(9, e, n) for e in range(4)]  # "history" has no effect
    np.testing.assert_array_equal(batch_indices(epoch_permutation(9, 4, n), 5, bs), fresh)


def test_get_batch_gathers_on_host_device_and_under_jit():
    images = np.random.default_rng(0).random((50, 4, 4, 3)).astype(np.float32)
    labels = np.arange(50, dtype=np.int32) % 10
    idx = jnp.array([3, 1, 49, 3], jnp.int32)
    for x, y in (
        get_batch(images, labels, idx),
        get_batch(jnp.asarray(images), jnp.asarray(labels), idx),
        jax.jit(get_batch)(images, labels, idx),
    ):
        assert isinstance(x, jax.Array) and x.shape == (4, 4, 4, 3)
        np.testing.assert_array_equal(x, images[[3, 1, 49, 3]])
        np.testing.assert_array_equal(y, labels[[3, 1, 49, 3]])


@pytest.mark.parametrize("n, bs, batches", [(10, 4, 3), (12, 4, 3), (3, 8, 1), (1, 1, 1)])
def test_iterate_eval_covers_every_example_once_with_fixed_shapes(n, bs, batches):
    indices, mask = iterate_eval(n, bs)
    assert indices.shape == mask.shape == (batches, bs)
    assert indices.dtype == np.int32 and mask.dtype == bool
    np.testing.assert_array_equal(indices[mask], np.arange(n))  # each example once, in order
    assert mask.sum() == n
    assert (indices[~mask] == 0).all()  # padding points at a valid example
    assert mask[:-1].all()  # only the last batch is padded
    with pytest.raises(ValueError):
        iterate_eval(0, bs)
