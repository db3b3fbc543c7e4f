"""No-reference sharpness: one number per image, comparable within a camera.

The score is the variance of the 4-neighbour Laplacian of the grey image,
computed on the image downscaled to at most :data:`ANALYSIS_WIDTH` pixels
wide, and divided by the variance of that grey image::

    sharpness = var(Laplacian(g)) / (var(g) + eps)

Why this form:

* Motion blur removes high spatial frequencies; the Laplacian variance is
  the energy of those frequencies (the classical focus/blur measure).
* Dividing by the grey variance (the image's total contrast energy) makes
  the score invariant to exposure and gain changes (both scale by gain^2),
  which auto-exposure cameras produce between neighbouring frames. What is
  left is the *fraction* of the image's energy at high frequency, which
  changes far more with blur than with the moderate content changes
  between neighbouring keyframes of one camera.
* Area-downscaling first (to ~320 px wide) averages sensor noise down (noise
  otherwise inflates the Laplacian of a blurred, noisy frame) while blur of
  more than ~2 px still shows, and it makes the score cost ~0.3 ms at
  640x480 (measured in ``bench/core.py``). It also makes scores of the same
  scene at different resolutions comparable.

Scores are dimensionless; typical sharp natural images score ~0.2-2,
strongly blurred ones a few times less. Compare scores only between frames
of one camera (the pipeline's gate compares a keyframe with its recent peers).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["ANALYSIS_WIDTH", "to_grey", "sharpness", "local_sharpness"]

# Width the score is computed at (images narrower than this are used as is).
ANALYSIS_WIDTH = 320
# Guards the division for flat images (grey variance in [0, 255]^2 units).
_EPS = 1.0


def to_grey(image: np.ndarray) -> np.ndarray:
    """uint8 grey (H, W) from a uint8 RGB (H, W, 3) or mono (H, W) image."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")


def sharpness(image: np.ndarray) -> float:
    """Sharpness score of a uint8 RGB or mono image (see module docstring)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"sharpness expects a uint8 image, got {getattr(image, 'dtype', type(image))}")
    grey = to_grey(image)
    h, w = grey.shape
    if h < 3 or w < 3:
        raise ValueError(f"image too small for a sharpness score: {w}x{h}")
    if w > ANALYSIS_WIDTH:
        f = ANALYSIS_WIDTH / w
        grey = cv2.resize(grey, (ANALYSIS_WIDTH, max(3, int(round(h * f)))), interpolation=cv2.INTER_AREA)
    g = grey.astype(np.float32)
    lap = cv2.Laplacian(g, cv2.CV_32F, ksize=1)
    _, lap_std = cv2.meanStdDev(lap)
    _, g_std = cv2.meanStdDev(g)
    return float(lap_std[0, 0] ** 2 / (g_std[0, 0] ** 2 + _EPS))


def local_sharpness(grey: np.ndarray, sigma: float) -> np.ndarray:
    """Per-pixel gradient energy ``G_sigma * |grad g|^2`` of a float32 grey image.

    Used by the fusion restorer to decide, per pixel, which aligned view is
    locally sharper; ``sigma`` (pixels) sets the neighbourhood it averages.
    """
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.GaussianBlur(gx * gx + gy * gy, (0, 0), sigma)
