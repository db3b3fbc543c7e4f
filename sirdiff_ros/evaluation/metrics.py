"""Image-quality, cross-view-consistency and feature-matching metrics.

Everything here works on plain numpy images (``uint8``, ``(H, W)`` mono or
``(H, W, 3)`` RGB) and :mod:`sirdiff_ros.core.geometry` poses/intrinsics, so
each number can be checked on a hand-made case without a bag.

* :func:`psnr`, :func:`ssim`: full-reference quality against a sharp image.
* :func:`sharpness` (re-exported from :mod:`sirdiff_ros.core.blur`): the
  no-reference score the pipeline itself gates on, for bags without ground truth.
* :func:`reprojection_consistency` (our VConsis): mean absolute grey-level
  difference between views after warping one into the other with known
  poses and depth, over co-visible pixels only.
* :func:`match_features`: ORB or SIFT matches between two images, RANSAC
  inliers of a fundamental matrix, and (with known poses) the symmetric
  epipolar distance of those inliers — the consistency measure where no
  depth is available.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from ..core.blur import sharpness, to_grey
from ..core.geometry import CameraIntrinsics, Pose

__all__ = [
    "MetricError",
    "psnr",
    "ssim",
    "sharpness",
    "ConsistencyResult",
    "reprojection_consistency",
    "fundamental_from_poses",
    "symmetric_epipolar_distance",
    "MatchResult",
    "Features",
    "detect_features",
    "match_features",
    "MATCH_METHODS",
]

MATCH_METHODS = ("orb", "sift")


class MetricError(ValueError):
    """Inputs a metric cannot be computed on (shape mismatch, wrong dtype)."""


def _check_pair(image: np.ndarray, reference: np.ndarray) -> None:
    if image.shape != reference.shape:
        raise MetricError(f"image shape {image.shape} differs from reference shape {reference.shape}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise MetricError(f"expected (H, W) or (H, W, 3) images, got {image.shape}")


def psnr(image: np.ndarray, reference: np.ndarray, *, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)``.

    Computed in float64 over all pixels and channels; ``inf`` for identical
    images (the report writes non-finite numbers as ``null``).
    """
    _check_pair(image, reference)
    diff = image.astype(np.float64) - reference.astype(np.float64)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range * data_range / mse)


def ssim(image: np.ndarray, reference: np.ndarray, *, data_range: float = 255.0) -> float:
    """Structural similarity (Wang et al. 2004, 7x7 uniform window), averaged
    over channels for RGB; 1.0 for identical images."""
    _check_pair(image, reference)
    if min(image.shape[:2]) < 7:
        raise MetricError(f"SSIM needs images of at least 7x7 pixels, got {image.shape[:2]}")
    channel_axis = 2 if image.ndim == 3 else None
    return float(
        structural_similarity(
            image.astype(np.float64),
            reference.astype(np.float64),
            data_range=data_range,
            channel_axis=channel_axis,
        )
    )


# --------------------------------------------------------------------------
# Cross-view consistency
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsistencyResult:
    """Photometric agreement of views after reprojection.

    ``mean_abs_diff``: mean |I_i(p) - I_j(w_ij(p))| in grey levels (0..255)
    over all co-visible pixels of all evaluated pairs (pixel-weighted), NaN
    when no pixel is co-visible. Lower is more consistent; 0 for identical
    views of the same pose.
    """

    mean_abs_diff: float
    covisible_pixels: int
    pairs: int


def _bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample a float (H, W) image at sub-pixel (u, v); callers keep (u, v)
    inside [0, W-1] x [0, H-1]."""
    h, w = image.shape
    u0 = np.clip(np.floor(u).astype(np.int64), 0, w - 1)
    v0 = np.clip(np.floor(v).astype(np.int64), 0, h - 1)
    u1 = np.minimum(u0 + 1, w - 1)
    v1 = np.minimum(v0 + 1, h - 1)
    a = u - u0
    b = v - v0
    top = image[v0, u0] * (1 - a) + image[v0, u1] * a
    bottom = image[v1, u0] * (1 - a) + image[v1, u1] * a
    return top * (1 - b) + bottom * b


def _valid_depth(depth: np.ndarray | None) -> np.ndarray | None:
    if depth is None:
        return None
    d = np.asarray(depth, dtype=np.float64)
    return np.where(np.isfinite(d) & (d > 0), d, 0.0)


def reprojection_consistency(
    images: Sequence[np.ndarray],
    poses: Sequence[Pose],
    intrinsics: Sequence[CameraIntrinsics],
    depths: Sequence[np.ndarray | None],
    *,
    pairs: Sequence[tuple[int, int]] | None = None,
    depth_tolerance: float = 0.05,
    step: int = 2,
) -> ConsistencyResult:
    """Warp view i into view j with i's depth and both poses; compare grey levels.

    A pixel of i counts as co-visible in j when its depth is valid, it lands
    in front of camera j inside j's image, and — where j has depth — its
    depth in j agrees with j's depth within ``depth_tolerance`` (relative),
    which rejects occluded points. ``pairs`` are ordered (i, j); default all
    ordered pairs where i has depth. ``step`` subsamples i's pixel grid.
    """
    n = len(images)
    if not (len(poses) == len(intrinsics) == len(depths) == n):
        raise MetricError("images, poses, intrinsics and depths must have the same length")
    if step < 1:
        raise MetricError(f"step must be >= 1, got {step}")
    grey = [to_grey(im).astype(np.float64) for im in images]
    valid_depths = [_valid_depth(d) for d in depths]
    for k, (g, K, d) in enumerate(zip(grey, intrinsics, valid_depths)):
        if g.shape != (K.height, K.width):
            raise MetricError(f"view {k}: image {g.shape[::-1]} does not match intrinsics {K.width}x{K.height}")
        if d is not None and d.shape != g.shape:
            raise MetricError(f"view {k}: depth shape {d.shape} does not match image {g.shape}")
    if pairs is None:
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j and valid_depths[i] is not None]

    total_diff = 0.0
    total_pixels = 0
    for i, j in pairs:
        d_i = valid_depths[i]
        if d_i is None:
            raise MetricError(f"view {i} has no depth; cannot warp it into view {j}")
        Ki, Kj = intrinsics[i], intrinsics[j]
        grid = Ki.pixel_grid(step)  # (H/step, W/step, 2)
        z = d_i[::step, ::step]
        ok = z > 0
        uv_i = grid[ok]  # (M, 2)
        pts_i = Ki.unproject(uv_i, z[ok])  # (M, 3) in camera i
        pts_j = poses[j].inverse().transform_points(poses[i].transform_points(pts_i))
        uv_j, z_j = Kj.project(pts_j)
        inside = (z_j > 1e-6) & np.all(np.isfinite(uv_j), axis=1)
        # Bilinear sampling needs both neighbours inside the image.
        inside &= (uv_j[:, 0] >= 0) & (uv_j[:, 0] <= Kj.width - 1) & (uv_j[:, 1] >= 0) & (uv_j[:, 1] <= Kj.height - 1)
        d_j = valid_depths[j]
        if d_j is not None and np.any(inside):
            # Occlusion test against j's own depth at the nearest pixel.
            ui = np.rint(uv_j[inside, 0]).astype(np.int64)
            vi = np.rint(uv_j[inside, 1]).astype(np.int64)
            dj = d_j[vi, ui]
            visible = (dj > 0) & (np.abs(dj - z_j[inside]) <= depth_tolerance * dj)
            idx = np.flatnonzero(inside)
            inside[idx[~visible]] = False
        if not np.any(inside):
            continue
        src = grey[i][np.rint(uv_i[inside, 1]).astype(np.int64), np.rint(uv_i[inside, 0]).astype(np.int64)]
        dst = _bilinear(grey[j], uv_j[inside, 0], uv_j[inside, 1])
        total_diff += float(np.abs(src - dst).sum())
        total_pixels += int(inside.sum())
    mad = total_diff / total_pixels if total_pixels else math.nan
    return ConsistencyResult(mean_abs_diff=mad, covisible_pixels=total_pixels, pairs=len(pairs))


# --------------------------------------------------------------------------
# Epipolar geometry from known poses
# --------------------------------------------------------------------------


def _skew(t: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]])


def fundamental_from_poses(pose_a: Pose, pose_b: Pose, K_a: CameraIntrinsics, K_b: CameraIntrinsics) -> np.ndarray:
    """F with ``x_b^T F x_a = 0`` for pixels (homogeneous) of the same point.

    Undefined (raises) when the camera centres coincide: a pure rotation has
    no epipolar geometry.
    """
    T_b_a = pose_a.relative_to(pose_b)  # maps camera-a points into camera b
    t = T_b_a.translation
    if np.linalg.norm(t) < 1e-9:
        raise MetricError("camera centres coincide; the epipolar geometry is undefined")
    E = _skew(t) @ T_b_a.rotation
    return np.linalg.inv(K_b.K).T @ E @ np.linalg.inv(K_a.K)


def symmetric_epipolar_distance(F: np.ndarray, pts_a: np.ndarray, pts_b: np.ndarray) -> np.ndarray:
    """Per match, the mean of the distances (pixels) of b to a's epipolar line
    and of a to b's epipolar line. ``pts_*``: (M, 2)."""
    pts_a = np.asarray(pts_a, dtype=np.float64).reshape(-1, 2)
    pts_b = np.asarray(pts_b, dtype=np.float64).reshape(-1, 2)
    ha = np.hstack([pts_a, np.ones((len(pts_a), 1))])  # (M, 3)
    hb = np.hstack([pts_b, np.ones((len(pts_b), 1))])
    lines_b = ha @ F.T  # epipolar lines in b, (M, 3)
    lines_a = hb @ F  # epipolar lines in a
    num = np.abs(np.sum(hb * lines_b, axis=1))
    d_b = num / np.maximum(np.hypot(lines_b[:, 0], lines_b[:, 1]), 1e-12)
    d_a = num / np.maximum(np.hypot(lines_a[:, 0], lines_a[:, 1]), 1e-12)
    return 0.5 * (d_a + d_b)


# --------------------------------------------------------------------------
# Feature matching
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchResult:
    """ORB/SIFT matching between two images.

    ``matches``: ratio-test matches; ``inliers``: those consistent with the
    RANSAC fundamental matrix (0 with fewer than 8 matches).
    ``epipolar_px``: median symmetric epipolar distance of the inliers under
    the *known* poses (NaN without poses or inliers) — how well matched
    features agree with the true geometry.
    """

    method: str
    keypoints_a: int
    keypoints_b: int
    matches: int
    inliers: int
    epipolar_px: float
    inlier_points_a: np.ndarray  # (inliers, 2)
    inlier_points_b: np.ndarray


_DETECTORS: dict[str, cv2.Feature2D] = {}


def _detector(method: str) -> cv2.Feature2D:
    # Created once: SIFT/ORB construction is not free and they are stateless.
    if method not in _DETECTORS:
        if method == "orb":
            _DETECTORS[method] = cv2.ORB_create(nfeatures=1000)
        elif method == "sift":
            _DETECTORS[method] = cv2.SIFT_create(nfeatures=2000)
        else:
            raise MetricError(f"unknown feature method {method!r}; choose from {', '.join(MATCH_METHODS)}")
    return _DETECTORS[method]


@dataclass(frozen=True)
class Features:
    """Keypoints (pixel positions, (N, 2)) and descriptors of one image."""

    method: str
    points: np.ndarray
    descriptors: np.ndarray | None


def detect_features(image: np.ndarray, method: str = "orb") -> Features:
    """ORB (1000) or SIFT (2000) keypoints and descriptors of a uint8 image."""
    det = _detector(method)
    kps, des = det.detectAndCompute(to_grey(image), None)
    pts = np.array([k.pt for k in kps], dtype=np.float64).reshape(-1, 2)
    return Features(method, pts, des)


def match_features(
    image_a: np.ndarray | Features,
    image_b: np.ndarray | Features,
    method: str = "orb",
    *,
    ratio: float = 0.8,
    ransac_px: float = 1.0,
    poses: tuple[Pose, Pose] | None = None,
    intrinsics: tuple[CameraIntrinsics, CameraIntrinsics] | None = None,
) -> MatchResult:
    """Detect (unless given :class:`Features`), match (Lowe ratio test and
    mutual nearest neighbours) and verify with a RANSAC fundamental matrix
    (MAGSAC++, ``ransac_px`` threshold).

    Deterministic: OpenCV's RNG is re-seeded before RANSAC.
    """
    fa = image_a if isinstance(image_a, Features) else detect_features(image_a, method)
    fb = image_b if isinstance(image_b, Features) else detect_features(image_b, method)
    if fa.method != method or fb.method != method:
        raise MetricError(f"features of {fa.method!r}/{fb.method!r} given for {method!r} matching")
    des_a, des_b = fa.descriptors, fb.descriptors
    empty = np.zeros((0, 2))
    if des_a is None or des_b is None or len(des_a) < 2 or len(des_b) < 2:
        return MatchResult(method, len(fa.points), len(fb.points), 0, 0, math.nan, empty, empty)
    norm = cv2.NORM_HAMMING if method == "orb" else cv2.NORM_L2
    matcher = cv2.BFMatcher(norm)
    forward = matcher.knnMatch(des_a, des_b, k=2)
    backward = {m.queryIdx: m.trainIdx for m in matcher.match(des_b, des_a)}
    good = [
        pair[0]
        for pair in forward
        if len(pair) == 2 and pair[0].distance < ratio * pair[1].distance and backward.get(pair[0].trainIdx) == pair[0].queryIdx
    ]
    pts_a = fa.points[[m.queryIdx for m in good]].reshape(-1, 2)
    pts_b = fb.points[[m.trainIdx for m in good]].reshape(-1, 2)
    inl_a, inl_b = empty, empty
    if len(good) >= 8:
        cv2.setRNGSeed(0)
        try:
            _, mask = cv2.findFundamentalMat(pts_a, pts_b, cv2.USAC_MAGSAC, ransac_px, 0.999, 10000)
        except cv2.error:
            # MAGSAC++ asserts on some degenerate samples; plain RANSAC does not.
            cv2.setRNGSeed(0)
            _, mask = cv2.findFundamentalMat(pts_a, pts_b, cv2.FM_RANSAC, ransac_px, 0.999, 10000)
        if mask is not None:
            keep = mask.ravel().astype(bool)
            inl_a, inl_b = pts_a[keep], pts_b[keep]
    epi = math.nan
    if poses is not None and intrinsics is not None and len(inl_a):
        try:
            F = fundamental_from_poses(poses[0], poses[1], intrinsics[0], intrinsics[1])
        except MetricError:
            F = None  # pure rotation: no epipolar error to report
        if F is not None:
            epi = float(np.median(symmetric_epipolar_distance(F, inl_a, inl_b)))
    return MatchResult(method, len(fa.points), len(fb.points), len(good), len(inl_a), epi, inl_a, inl_b)
