"""No-reference sharpness: one number per image, comparable within a camera.

The score is the *smallest* of four directional second-derivative energies
(horizontal, vertical and both diagonals) of the grey image, computed on the
image area-downscaled to at most :data:`ANALYSIS_WIDTH` pixels wide, divided by
the squared mean grey level::

    sharpness = min_d mean((D_dd g)^2) / (mean(g)^2 + eps)

Why this form (measured on the synthetic sequences of
:mod:`sirdiff_ros.data.synth`, see ``bench/core.py``):

* Motion blur removes high spatial frequencies *along the motion* only. The
  variance of the Laplacian (the classical focus measure) sums both axes, so
  a horizontally smeared, finely textured wall keeps its vertical detail
  and can score as sharp as a still frame; the minimum over directions sees
  the smeared direction.
* Dividing by the squared mean makes the score invariant to exposure and
  gain (both scale by gain^2). Dividing by the grey *variance* instead is
  not robust: blur removes most of the variance of fine textures too, and
  a blurred frame then scores as sharp as a still one.
* Area-downscaling first (to ~320 px wide) averages sensor noise down (noise
  otherwise inflates the derivatives of a blurred, noisy frame) while blur of
  more than ~2 px still shows; it also makes scores of one scene at
  different resolutions comparable and keeps the cost well under 1 ms at
  640x480.

Scores are dimensionless and depend on scene content; compare them only
between frames of one camera and nearby in time (the pipeline's gate compares
a keyframe with its recent peers).
"""

from __future__ import annotations

import cv2
import numpy as np


__all__ = ["ANALYSIS_WIDTH", "to_grey", "sharpness", "local_sharpness"]

# Width the score is computed at (images narrower than this are used as is).
ANALYSIS_WIDTH = 320
# Guards the division for black images (mean grey in [0, 255]).
_EPS = 1.0
# Second derivatives along x, y and the two diagonals.
_DIRECTIONAL_KERNELS = (
    np.array([[1, -2, 1]], np.float32),
    np.array([[1], [-2], [1]], np.float32),
    np.array([[1, 0, 0], [0, -2, 0], [0, 0, 1]], np.float32),
    np.array([[0, 0, 1], [0, -2, 0], [1, 0, 0]], np.float32),
)

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
    h, w = image.shape[:2]
    if h < 3 or w < 3:
        raise ValueError(f"image too small for a sharpness score: {w}x{h}")
    if w > ANALYSIS_WIDTH:
        # Downscale before the colour conversion: 4x fewer pixels to convert.
        f = ANALYSIS_WIDTH / w
        image = cv2.resize(image, (ANALYSIS_WIDTH, max(3, int(round(h * f)))), interpolation=cv2.INTER_AREA)
    g = to_grey(image)
    # Second differences of uint8 pixels are integers within +-1020: int16 holds
    # them exactly, with half the memory traffic of float32 (the same score).
    # Interior pixels only: the borders would add replicated-edge artefacts.
    energy = min(
        cv2.norm(cv2.filter2D(g, cv2.CV_16S, k)[1:-1, 1:-1], cv2.NORM_L2SQR) for k in _DIRECTIONAL_KERNELS
    ) / ((g.shape[0] - 2) * (g.shape[1] - 2))
    return float(energy / (cv2.mean(g)[0] ** 2 + _EPS))


def local_sharpness(grey: np.ndarray, sigma: float) -> np.ndarray:
    """Per-pixel gradient energy ``G_sigma * |grad g|^2`` of a float32 grey image.

    Used by the fusion restorer to decide, per pixel, which aligned view is
    locally sharper; ``sigma`` (pixels) sets the neighbourhood it averages.
    """
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.GaussianBlur(gx * gx + gy * gy, (0, 0), sigma)
