"""``jaxnorm.data.corrupt``: against independent references (scipy, PIL, colorsys), noise
statistics, determinism, range/shape, the severity ladder, bad input."""

from __future__ import annotations

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.data import CORRUPTIONS, corrupt, corrupt_jit, load, psnr

KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def digits():
    return jnp.asarray(load("digits", "test").images[:64])


def test_every_kind_keeps_shape_dtype_range_is_deterministic_and_grows_with_severity(digits):
    """On 64 test digits (8x8), for every kind but pixelate (whose 8x8 sizes 7, 7, 6, 6, 5
    are no ladder, see the module docstring): the PSNR to the clean images falls strictly
    from severity to severity, with one key for all five. Pixelate on random 32x32x3
    images (not digits32: its 4x4 blocks survive 32 -> 24 -> 32 exactly)."""
    big = jnp.asarray(np.random.default_rng(0).random((4, 32, 32, 3)), jnp.float32)
    for kind, spec in CORRUPTIONS.items():
        x = big if kind == "pixelate" else digits
        outs = [corrupt_jit(x, kind, s, key=KEY) for s in range(1, 6)]
        for out in outs:
            assert out.shape == x.shape and out.dtype == x.dtype
            assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        np.testing.assert_array_equal(corrupt_jit(x, kind, 3, key=KEY), outs[2])
        other = corrupt_jit(x, kind, 3, key=jax.random.PRNGKey(1))
        assert (not np.array_equal(other, outs[2])) == spec.random, kind
        quality = [float(psnr(x, o)) for o in outs]
        assert all(a > b for a, b in zip(quality, quality[1:])), (kind, quality)
    # The eager and the compiled path agree (float32 rounding of the fused programs).
    np.testing.assert_allclose(corrupt(digits, "gaussian_blur", 2), corrupt_jit(digits, "gaussian_blur", 2), atol=1e-6)


def test_blur_and_pixelate_match_scipy_and_pil():
    """gaussian_blur = scipy.ndimage.gaussian_filter(σ, mode='nearest', truncate=4) per
    channel (what skimage's ``gaussian`` calls); pixelate = PIL BOX resize down and up,
    on float ('F') images. Tolerance 1e-6: float32 sums of <= 9 terms of values <= 1."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    for s, sigma in enumerate(CORRUPTIONS["gaussian_blur"].params, 1):
        want = np.stack([gaussian_filter(img, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0) for img in x])
        np.testing.assert_allclose(corrupt_jit(x, "gaussian_blur", s), np.clip(want, 0, 1), atol=1e-6)
    for s, c in enumerate(CORRUPTIONS["pixelate"].params, 1):
        n = int(32 * c)

        def pil(channel):
            return np.asarray(Image.fromarray(channel, mode="F").resize((n, n), Image.BOX).resize((32, 32), Image.BOX))

        want = np.stack([np.stack([pil(img[..., ch]) for ch in range(3)], -1) for img in x])
        np.testing.assert_allclose(corrupt_jit(x, "pixelate", s), np.clip(want, 0, 1), atol=1e-6)


def test_contrast_and_brightness_closed_forms():
    """contrast: (x − m)·c + m with m each image's per-channel mean; brightness: the HSV
    value + c through Python's colorsys (rgb_to_hsv, clip V, hsv_to_rgb), black pixels
    included; one channel: x + c."""
    rng = np.random.default_rng(1)
    x = rng.random((2, 4, 4, 3)).astype(np.float32)
    x[0, 0, 0] = 0.0  # black: hue and saturation undefined, becomes grey
    c = CORRUPTIONS["contrast"].params[1]
    m = x.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(corrupt_jit(x, "contrast", 2), np.clip((x - m) * c + m, 0, 1), atol=1e-6)
    c = CORRUPTIONS["brightness"].params[4]

    def hsv(p):
        h, s, v = colorsys.rgb_to_hsv(*p)
        return colorsys.hsv_to_rgb(h, s, min(v + c, 1.0))

    want = np.apply_along_axis(hsv, -1, x.astype(np.float64))
    np.testing.assert_allclose(corrupt_jit(x, "brightness", 5), want, atol=1e-6)
    gray = x[..., :1]
    np.testing.assert_allclose(corrupt_jit(gray, "brightness", 5), np.clip(gray + c, 0, 1), atol=1e-6)


def test_noise_statistics():
    """On a constant 0.5 image of 2·10⁵ values (well inside [0, 1], so clipping is rare):
    gaussian σ and speckle σ·x within 2% (the standard error of a std estimate is
    1/√(2n) ≈ 0.16%); shot noise mean 0.5 and variance 0.5/λ within 3%; impulse: the
    changed fraction within 5% of ``amount``, every changed value 0 or 1, about half each."""
    x = jnp.full((50, 40, 50, 2), 0.5, jnp.float32)
    for kind, scale in (("gaussian_noise", 1.0), ("speckle_noise", 0.5)):
        sigma = CORRUPTIONS[kind].params[4]
        d = np.asarray(corrupt_jit(x, kind, 5, key=KEY)) - 0.5
        assert abs(d.mean()) < 1e-3 and d.std() == pytest.approx(sigma * scale, rel=0.02)
    lam = CORRUPTIONS["shot_noise"].params[4]
    y = np.asarray(corrupt_jit(x, "shot_noise", 5, key=KEY))
    assert y.mean() == pytest.approx(0.5, rel=0.01) and y.var() == pytest.approx(0.5 / lam, rel=0.03)
    assert np.allclose(y * lam, np.round(y * lam), atol=1e-3)  # counts / λ
    amount = CORRUPTIONS["impulse_noise"].params[4]
    y = np.asarray(corrupt_jit(x, "impulse_noise", 5, key=KEY))
    changed = y != 0.5
    assert changed.mean() == pytest.approx(amount, rel=0.05)
    assert set(np.unique(y[changed])) == {0.0, 1.0} and (y[changed] == 1.0).mean() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((np.zeros((1, 8, 8, 1), np.float32), "fog", 1), {}, ValueError, "unknown corruption 'fog'"),
        ((np.zeros((1, 8, 8, 1), np.float32), "contrast", 0), {}, ValueError, "severity"),
        ((np.zeros((1, 8, 8, 1), np.float32), "contrast", 6), {}, ValueError, "severity"),
        ((np.zeros((1, 8, 8, 1), np.float32), "contrast", 2.0), {}, ValueError, "severity"),
        ((np.zeros((1, 8, 8, 1), np.float32), "contrast", True), {}, ValueError, "severity"),
        ((np.zeros((8, 8, 1), np.float32), "contrast", 1), {}, ValueError, r"\(B, H, W, C\)"),
        ((np.zeros((1, 8, 8, 1), np.uint8), "contrast", 1), {}, TypeError, "floating-point"),
        ((np.zeros((1, 8, 8, 1), np.float32), "shot_noise", 1), {}, ValueError, "needs a key"),
    ],
)
def test_bad_input_is_refused(args, kwargs, error, match):
    for fn in (corrupt, corrupt_jit):
        with pytest.raises(error, match=match):
            fn(*args, **kwargs)
