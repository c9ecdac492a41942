"""Augmentation against NumPy references and invariants, eager and under jit.

Tolerances: the colour-jitter reference runs in float64 on the float32 factors the key drew;
float32 rounding of three blend+clip steps stays below ~1e-6, so atol=1e-5 (abs, values in
[0, 1]). Crop, flip and normalization are exact or one rounding (atol 1e-6).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.data import (
    DEEPOBS_AUGMENT,
    AugmentConfig,
    apply_color_jitter,
    augment,
    color_jitter,
    crop_offsets,
    deepobs_augment,
    default_augment_config,
    eval_preprocess,
    flip_mask,
    jitter_params,
    normalize,
    random_crop,
    random_flip,
)

KEY = jax.random.PRNGKey(42)
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _images(b=16, h=8, w=8, c=3, seed=0, low=0.0):
    return np.random.default_rng(seed).uniform(low, 1.0, (b, h, w, c)).astype(np.float32)


# --------------------------------------------------------------------------- crop


def test_crop_is_a_window_of_the_zero_padded_image_at_the_sampled_offset():
    x = _images(b=32, low=0.01)  # strictly positive, so the zero border is unambiguous
    p = 2
    out = np.asarray(random_crop(KEY, x, padding=p))
    assert out.shape == x.shape and out.dtype == np.float32
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    found = []
    for i in range(len(x)):  # exhaustive search over every possible window
        windows = [(r, c) for r in range(2 * p + 1) for c in range(2 * p + 1)]
        matches = [(r, c) for r, c in windows if np.array_equal(out[i], padded[i, r : r + 8, c : c + 8])]
        assert len(matches) == 1, f"image {i}: {matches}"
        found.append(matches[0])
    np.testing.assert_array_equal(np.array(found), np.asarray(crop_offsets(KEY, len(x), p)))
    assert len(set(found)) > 5  # 25 possible windows, 32 images: offsets really vary


def test_crop_padding_zero_is_identity_and_jit_matches_eager():
    x = _images()
    np.testing.assert_array_equal(random_crop(KEY, x, padding=0), x)
    jitted = jax.jit(random_crop, static_argnames="padding")
    np.testing.assert_array_equal(jitted(KEY, x, padding=3), random_crop(KEY, x, padding=3))
    with pytest.raises(ValueError, match="padding"):
        random_crop(KEY, x, padding=-1)
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        random_crop(KEY, x[0])


# --------------------------------------------------------------------------- flip


def test_flip_reverses_width_exactly_for_the_masked_images():
    x = _images(b=64)
    out = np.asarray(jax.jit(random_flip)(KEY, x))
    mask = np.asarray(flip_mask(KEY, 64))
    assert 0 < mask.sum() < 64  # fails with probability 2**-63
    np.testing.assert_array_equal(out[mask], x[mask][:, :, ::-1, :])
    np.testing.assert_array_equal(out[~mask], x[~mask])


# --------------------------------------------------------------------------- colour jitter


def _np_grey(img):
    return img @ np.array([0.299, 0.587, 0.114])


def _np_jitter(images, params):
    """float64 reference of torchvision's float ColorJitter formulas (PIL luma weights)."""
    images = images.astype(np.float64)
    b, c, s, order = (np.asarray(a, np.float64 if a.dtype != np.int32 else np.int32) for a in params)
    out = []
    for i, img in enumerate(images):
        for op in order[i]:
            if op == 0:
                img = np.clip(b[i] * img, 0, 1)
            elif op == 1:
                m = _np_grey(img).mean() if img.shape[-1] == 3 else img.mean()
                img = np.clip(c[i] * img + (1 - c[i]) * m, 0, 1)
            elif img.shape[-1] == 3:
                img = np.clip(s[i] * img + (1 - s[i]) * _np_grey(img)[..., None], 0, 1)
        out.append(img)
    return np.stack(out)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("random_order", [True, False])
def test_color_jitter_matches_numpy_reference(channels, random_order):
    x = _images(b=24, c=channels)
    params = jitter_params(KEY, 24, random_order=random_order)
    out = np.asarray(jax.jit(color_jitter, static_argnames="random_order")(KEY, x, random_order=random_order))
    np.testing.assert_allclose(out, _np_jitter(x, params), atol=1e-5, rtol=0)
    # jit may fuse into FMAs: the same formulas can differ from the unfused path by an ulp.
    np.testing.assert_allclose(out, np.asarray(apply_color_jitter(x, params)), atol=1e-6, rtol=0)
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert not np.allclose(out, x, atol=1e-3)  # it did something


def test_jitter_factors_lie_in_the_deepobs_ranges_and_orders_are_permutations():
    params = jitter_params(KEY, 512)
    b, c, s, order = (np.asarray(a) for a in params)
    assert 1 - 63 / 255 <= b.min() and b.max() <= 1 + 63 / 255
    assert 0.2 <= c.min() and c.max() <= 1.8
    assert 0.5 <= s.min() and s.max() <= 1.5
    assert b.std() > 0.1 and c.std() > 0.3  # spread over the range (uniform: 0.14, 0.46)
    np.testing.assert_array_equal(np.sort(order, axis=1), np.tile([0, 1, 2], (512, 1)))
    assert len({tuple(r) for r in order}) == 6  # all 3! orders occur
    fixed = np.asarray(jitter_params(KEY, 4, random_order=False).order)
    np.testing.assert_array_equal(fixed, np.tile([0, 1, 2], (4, 1)))


def test_unit_factors_are_the_identity_and_saturation_is_a_noop_on_grey():
    x = _images()
    np.testing.assert_array_equal(color_jitter(KEY, x, brightness=0, saturation=None, contrast=None), x)
    np.testing.assert_array_equal(color_jitter(KEY, x, brightness=0.0, saturation=(1, 1), contrast=(1, 1)), x)
    grey = _images(c=1)
    np.testing.assert_array_equal(color_jitter(KEY, grey, brightness=None, saturation=(0.0, 0.1), contrast=None), grey)


def test_brightness_only_scales_and_clips():
    x = _images()
    out = np.asarray(color_jitter(KEY, x, brightness=1.0, saturation=None, contrast=None))
    f = np.asarray(jitter_params(KEY, len(x), brightness=1.0, saturation=None, contrast=None).brightness)
    np.testing.assert_allclose(out, np.clip(f[:, None, None, None] * x, 0, 1), atol=1e-6, rtol=0)
    assert out.max() == 1.0  # factors up to 2 saturate some pixels at 1


def test_bad_jitter_arguments_are_errors():
    with pytest.raises(ValueError, match="lo <= hi"):
        color_jitter(KEY, _images(), contrast=(1.5, 0.5))
    with pytest.raises(ValueError, match=">= 0"):
        color_jitter(KEY, _images(), brightness=-0.1)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        color_jitter(KEY, _images(c=2))


# --------------------------------------------------------------------------- normalize + pipeline


def test_normalize_matches_numpy_and_checks_channels():
    x = _images()
    ref = (x.astype(np.float64) - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(normalize(x, MEAN, STD), ref, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(eval_preprocess(x, MEAN, STD), normalize(x, MEAN, STD))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        normalize(x, (0.5,), (0.2,))


def test_pipeline_is_deterministic_per_key_and_varies_across_keys():
    x = _images()
    a = deepobs_augment(KEY, x, MEAN, STD)
    np.testing.assert_array_equal(a, deepobs_augment(KEY, x, MEAN, STD))
    np.testing.assert_array_equal(a, augment(KEY, x, DEEPOBS_AUGMENT, MEAN, STD))
    assert not np.allclose(a, deepobs_augment(jax.random.PRNGKey(43), x, MEAN, STD), atol=1e-3)
    jitted = jax.jit(augment, static_argnames="config")
    np.testing.assert_allclose(jitted(KEY, x, DEEPOBS_AUGMENT, jnp.array(MEAN), jnp.array(STD)), a, atol=1e-6, rtol=0)


def test_pipeline_stays_in_unit_range_before_normalization():
    x = _images(b=64)
    x[:8] = 1.0  # saturated and black images: the extremes
    x[8:16] = 0.0
    out = np.asarray(augment(KEY, x, dataclasses.replace(DEEPOBS_AUGMENT, normalize=False)))
    assert out.shape == x.shape and 0.0 <= out.min() and out.max() <= 1.0


def test_config_switches_pieces_off_without_changing_the_others_randomness():
    x = _images()
    k_crop, k_flip, _ = jax.random.split(KEY, 3)
    crop_only = AugmentConfig(flip=False, color_jitter=False, normalize=False)
    np.testing.assert_array_equal(augment(KEY, x, crop_only), random_crop(k_crop, x, 2))
    crop_flip = AugmentConfig(color_jitter=False, normalize=False)
    np.testing.assert_array_equal(augment(KEY, x, crop_flip), random_flip(k_flip, random_crop(k_crop, x, 2)))
    nothing = AugmentConfig(crop_padding=0, flip=False, color_jitter=False, normalize=True)
    np.testing.assert_array_equal(augment(KEY, x, nothing, MEAN, STD), eval_preprocess(x, MEAN, STD))
    with pytest.raises(ValueError, match="mean and std"):
        augment(KEY, x, DEEPOBS_AUGMENT)
    with pytest.raises(ValueError, match=">= 0"):
        AugmentConfig(crop_padding=-2)


def test_default_configs_never_flip_digits():
    for name in ("digits", "digits32", "mnist"):
        assert default_augment_config(name).flip is False
    assert default_augment_config("cifar10") == DEEPOBS_AUGMENT == AugmentConfig()
    assert default_augment_config("cifar10_corrupted/fog_1") == DEEPOBS_AUGMENT
    assert default_augment_config("digits").crop_padding == 1
    with pytest.raises(ValueError, match="known"):
        default_augment_config("imagenet")
