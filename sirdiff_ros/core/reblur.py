"""Relative blur between two aligned images: estimate it and apply it.

Given a sharp view ``s`` already aligned to a blurred one ``b``, the blur
kernel ``k`` with ``k * s ~= b`` is estimated in the Fourier domain from image
gradients (regularised least squares, the standard kernel step of blind
deblurring)::

    K = (conj(Sx) Bx + conj(Sy) By) / (|Sx|^2 + |Sy|^2 + lambda)

then cropped, made non-negative and normalised. Re-blurring the sharp view
with ``k`` makes it directly comparable with the blurred one: the fusion
restorer uses that to check alignment photometrically, where a plain
Gaussian would leave large residuals along a directional motion blur.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import scipy.fft

__all__ = ["estimate_kernel", "kernel_centroid", "kernel_extent", "center_kernel", "reblur"]


def estimate_kernel(sharp: np.ndarray, blurred: np.ndarray, mask: np.ndarray, size: int, reg: float = 1e-2) -> np.ndarray:
    """Kernel (size, size), non-negative, summing to 1, with ``kernel * sharp ~= blurred``.

    ``sharp`` and ``blurred`` are aligned float32 grey images (H, W); only
    pixels where ``mask`` is True inform the estimate (others are set to the
    masked mean and tapered so they add no edges). ``size`` is odd.
    ``reg`` is relative to the mean gradient power. Returns the identity
    (delta) kernel when too few pixels are usable.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and positive, got {size}")
    if sharp.shape != blurred.shape or mask.shape != sharp.shape:
        raise ValueError(f"shapes differ: {sharp.shape}, {blurred.shape}, {mask.shape}")
    delta = np.zeros((size, size), np.float32)
    delta[size // 2, size // 2] = 1.0
    m = mask.astype(np.float32)
    if m.sum() < 2 * size * size:
        return delta
    h, w = sharp.shape
    r = size // 2
    if h // 2 - r < 0 or w // 2 - r < 0:
        return delta
    # Soft mask: masked-out pixels contribute no gradients, including at the border.
    soft = cv2.GaussianBlur(cv2.erode(m, np.ones((3, 3), np.uint8)), (0, 0), 2.0)
    win = _hanning_window(h, w) * soft
    # Flush the taper's far tails to zero: denormal floats there make the FFTs
    # several times slower and weigh nothing (< 1e-6 of the centre).
    win[win < 1e-6] = 0.0
    num: np.ndarray = np.zeros((h, w // 2 + 1), np.complex64)
    den: np.ndarray = np.zeros((h, w // 2 + 1), np.float32)
    for dx, dy in ((1, 0), (0, 1)):
        gs = cv2.Sobel(sharp, cv2.CV_32F, dx, dy, ksize=3) * win
        gb = cv2.Sobel(blurred, cv2.CV_32F, dx, dy, ksize=3) * win
        # Real input: half the spectrum suffices (scipy's FFT: ~5x numpy's on float32).
        S = scipy.fft.rfft2(gs, workers=1)
        B = scipy.fft.rfft2(gb, workers=1)
        num += np.conj(S) * B
        den += (S * np.conj(S)).real
    K = num / (den + reg * float(den.mean()) + 1e-12)
    k = scipy.fft.irfft2(K, s=(h, w), workers=1)
    # The kernel's centre is at (0, 0) of the circular result: take the
    # (size, size) window around it (what fftshift then a central crop gives).
    rows = np.arange(-r, r + 1) % h
    cols = np.arange(-r, r + 1) % w
    k = k[np.ix_(rows, cols)]
    # Small negative lobes and a faint floor are estimation noise.
    k = np.maximum(k - 0.1 * k.max(), 0.0)
    total = float(k.sum())
    return (k / total).astype(np.float32) if total > 1e-6 else delta


@functools.lru_cache(maxsize=8)
def _hanning_window(h: int, w: int) -> np.ndarray:
    """(h, w) float32 separable Hann taper; cached per size (read-only)."""
    win = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    win.flags.writeable = False
    return win


def reblur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve a float32 image (H, W) or (H, W, C) with ``kernel`` (replicated borders)."""
    # filter2D correlates; the estimated kernel is a convolution kernel: flip it.
    k = kernel[::-1, ::-1]
    # Motion kernels are thin: filter with their bounding box only (same result,
    # several times faster than the full square), anchored at the centre.
    rows = np.flatnonzero(k.any(axis=1))
    cols = np.flatnonzero(k.any(axis=0))
    if rows.size == 0:
        return image.copy()
    r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
    anchor = (k.shape[1] // 2 - c0, k.shape[0] // 2 - r0)
    if not (0 <= anchor[0] <= c1 - c0 and 0 <= anchor[1] <= r1 - r0):
        # The centre lies outside the support's box: keep the full kernel.
        return cv2.filter2D(image, -1, np.ascontiguousarray(k), borderType=cv2.BORDER_REPLICATE)
    sub = np.ascontiguousarray(k[r0 : r1 + 1, c0 : c1 + 1])
    return cv2.filter2D(image, -1, sub, anchor=(int(anchor[0]), int(anchor[1])), borderType=cv2.BORDER_REPLICATE)


def kernel_centroid(kernel: np.ndarray) -> np.ndarray:
    """(dx, dy) of the kernel's centre of mass relative to its central pixel."""
    h, w = kernel.shape
    total = float(kernel.sum())
    if total <= 0:
        return np.zeros(2)
    ys, xs = np.mgrid[0:h, 0:w]
    return np.array([(kernel * xs).sum() / total - w // 2, (kernel * ys).sum() / total - h // 2])


def center_kernel(kernel: np.ndarray) -> np.ndarray:
    """The kernel shifted (sub-pixel) so that its centre of mass is its central pixel."""
    c = kernel_centroid(kernel)
    if np.abs(c).max() < 1e-3:
        return kernel
    # k'(u) = k(u + c): warpAffine's dst(x) = src(x - t) with t = -c.
    M = np.array([[1.0, 0.0, -c[0]], [0.0, 1.0, -c[1]]], np.float32)
    k = cv2.warpAffine(kernel, M, (kernel.shape[1], kernel.shape[0]), flags=cv2.INTER_LINEAR)
    k = np.maximum(k, 0.0)
    total = float(k.sum())
    return (k / total).astype(np.float32) if total > 1e-6 else kernel


def kernel_extent(kernel: np.ndarray) -> float:
    """Length (px) of the equivalent linear motion along the kernel's main axis:
    ``sqrt(12 * largest eigenvalue of its second-moment matrix)`` (a box of
    length L has variance L^2 / 12)."""
    total = float(kernel.sum())
    if total <= 0:
        return 0.0
    h, w = kernel.shape
    ys, xs = np.mgrid[0:h, 0:w]
    k = kernel / total
    cx, cy = float((k * xs).sum()), float((k * ys).sum())
    dx, dy = xs - cx, ys - cy
    cov = np.array([[(k * dx * dx).sum(), (k * dx * dy).sum()], [(k * dx * dy).sum(), (k * dy * dy).sum()]])
    return float(np.sqrt(12.0 * max(np.linalg.eigvalsh(cov)[-1], 0.0)))
