"""The no-reference sharpness score and the relative blur kernel."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sirdiff_ros.core.blur import sharpness
from sirdiff_ros.core.reblur import estimate_kernel, reblur
from sirdiff_ros.data.synth import generate_sequence


def line_kernel(length: int, angle_deg: float) -> np.ndarray:
    k = np.zeros((length, length), np.float32)
    c = length // 2
    dx, dy = np.cos(np.radians(angle_deg)) * c, np.sin(np.radians(angle_deg)) * c
    cv2.line(k, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1)
    return k / k.sum()


@pytest.fixture(scope="module")
def sharp_frames():
    # Still camera exposure (exposure 0): sharp renders of textured rooms.
    return [f.extras["sharp"] for f in generate_sequence(3, 4, 320, 240, subframes=1, exposure_s=0.0)]


@pytest.mark.parametrize("angle", [0.0, 90.0, 30.0])
def test_score_falls_with_motion_blur_in_any_direction(sharp_frames, angle):
    for img in sharp_frames:
        scores = [sharpness(img)] + [sharpness(cv2.filter2D(img, -1, line_kernel(n, angle))) for n in (3, 7, 15)]
        assert all(a > b for a, b in zip(scores, scores[1:])), scores
        assert scores[-1] < 0.5 * scores[0], scores


def test_score_is_exposure_invariant_and_resolution_consistent(sharp_frames):
    img = sharp_frames[0]
    s = sharpness(img)
    darker = np.clip(img.astype(np.float32) * 0.6, 0, 255).astype(np.uint8)
    assert sharpness(darker) == pytest.approx(s, rel=0.1)
    bigger = cv2.resize(img, (640, 480), interpolation=cv2.INTER_LINEAR)
    assert sharpness(bigger) == pytest.approx(sharpness(cv2.resize(bigger, (320, 240), interpolation=cv2.INTER_AREA)))
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    assert sharpness(grey) == pytest.approx(s, rel=0.02)


def _score_by_definition(image: np.ndarray) -> float:
    """The module docstring's formula in float64 numpy: area-downscale to 320 px wide,
    grey, smallest mean squared directional second difference over the squared mean."""
    h, w = image.shape[:2]
    if w > 320:
        image = cv2.resize(image, (320, round(h * 320 / w)), interpolation=cv2.INTER_AREA)
    g = (cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image).astype(np.float64)
    c = g[1:-1, 1:-1]
    pairs = [(g[1:-1, :-2], g[1:-1, 2:]), (g[:-2, 1:-1], g[2:, 1:-1]), (g[:-2, :-2], g[2:, 2:]), (g[:-2, 2:], g[2:, :-2])]
    energy = min(float(np.mean((a - 2 * c + b) ** 2)) for a, b in pairs)
    return energy / (g.mean() ** 2 + 1.0)


def test_score_is_its_definition_on_real_renders_and_extreme_patterns(sharp_frames):
    rng = np.random.default_rng(5)
    checker = np.zeros((97, 130), np.uint8)
    checker[::2, ::2] = 255  # second differences of +-1020: the largest a uint8 image has
    images = [*sharp_frames, cv2.resize(sharp_frames[1], (640, 480)), cv2.cvtColor(sharp_frames[2], cv2.COLOR_RGB2GRAY),
              rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), rng.integers(0, 256, (5, 7), dtype=np.uint8), checker]
    for img in images:
        assert sharpness(img) == pytest.approx(_score_by_definition(img), rel=1e-9, abs=1e-12), img.shape


def test_score_rejects_bad_images():
    with pytest.raises(ValueError, match="uint8"):
        sharpness(np.zeros((10, 10), np.float32))
    with pytest.raises(ValueError, match="too small"):
        sharpness(np.zeros((2, 10), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        sharpness(np.zeros((10, 10, 4), np.uint8))


def test_estimated_kernel_reproduces_a_directional_blur(sharp_frames):
    g = cv2.cvtColor(sharp_frames[1], cv2.COLOR_RGB2GRAY).astype(np.float32)
    k_true = line_kernel(11, 30.0)
    blurred = cv2.filter2D(g, -1, k_true) + np.random.default_rng(0).normal(0, 2.0, g.shape).astype(np.float32)
    mask = np.ones(g.shape, bool)
    mask[:60, :80] = False  # e.g. occluded: excluded from the estimate
    k = estimate_kernel(g, blurred, mask, 15)
    assert k.shape == (15, 15) and k.min() >= 0 and k.sum() == pytest.approx(1.0, abs=1e-5)
    res_est = np.abs(reblur(g, k) - blurred)[mask].mean()
    res_gauss = min(np.abs(cv2.GaussianBlur(g, (0, 0), s) - blurred)[mask].mean() for s in (1.0, 1.5, 2.0, 3.0))
    print(f"\nre-blur residual: estimated kernel {res_est:.2f}, best Gaussian {res_gauss:.2f} grey levels")
    assert res_est < 0.7 * res_gauss
    with pytest.raises(ValueError, match="odd"):
        estimate_kernel(g, blurred, mask, 4)


def test_reblur_equals_full_kernel_convolution():
    """reblur filters with the kernel's bounding box only; the result must not change."""
    rng = np.random.default_rng(0)
    img = rng.random((60, 80, 3)).astype(np.float32)
    for _ in range(20):
        k = np.zeros((11, 11), np.float32)
        k[rng.integers(0, 11, 4), rng.integers(0, 11, 4)] = rng.random(4)
        k /= k.sum()
        # Convolution = correlation with the flipped kernel.
        full = cv2.filter2D(img, -1, np.ascontiguousarray(k[::-1, ::-1]), borderType=cv2.BORDER_REPLICATE)
        assert np.abs(reblur(img, k) - full).max() < 1e-5
    assert np.array_equal(reblur(img, np.zeros((5, 5), np.float32)), img)


def test_kernel_extent_measures_motion_length():
    from sirdiff_ros.core.reblur import kernel_extent

    for length, angle in ((5, 0.0), (11, 30.0), (21, 90.0)):
        k = line_kernel(length if length % 2 else length + 1, angle)
        assert kernel_extent(np.pad(k, 4)) == pytest.approx(length, rel=0.15)
    delta = np.zeros((9, 9), np.float32)
    delta[4, 4] = 1.0
    assert kernel_extent(delta) == 0.0
