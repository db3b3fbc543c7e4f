"""Single-view deblurring from the camera's own motion (the data term of every restorer).

A SLAM stream gives the blur kernel for free: the camera's velocity at an
image's stamp (from its pose stream) times the exposure time is the motion
during the exposure, and projecting the scene through the poses along that
motion gives every pixel's blur path, spatially varying with rotation, roll
and depth. Blurring is then a known linear operator in linear light,

    y = A x,   A x = mean_k  x(warp_k(u)),

the mean of ``samples`` sub-frame images warped from mid-exposure (the same
physics as :mod:`sirdiff_ros.data.degrade`), and Richardson-Lucy iterations
``x <- x * A^T(y / A x) / A^T 1`` invert it while keeping the image positive
and never inventing structure the observation does not support (``A x``
reproduces ``y``). The number of iterations grows with the blur length:
short blur needs few (more would amplify noise), long blur more.

The velocity comes from the last posed frames (:func:`exposure_motion`): a
quadratic through up to three poses, differentiated at the newest stamp, so
a camera that accelerates through a pan is not assumed to move at the
previous interval's mean rate. Depth: the frame's depth image when it has
one, else one plane at the geometric middle of ``depth_range``
(rotation blur does not depend on depth; translation blur scales with 1 / depth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import cv2
import numpy as np

from .color import linear_to_srgb, srgb_to_linear
from .frame import Frame
from .geometry import CameraIntrinsics, Pose, _rotation_exp, _rotation_log
from .remap import remap_linear

__all__ = [
    "EXPOSURE_MOTION_KEY",
    "ExposureMotion",
    "exposure_motion",
    "MotionBlurOperator",
    "richardson_lucy",
    "relative_noise",
    "tv_weight_for",
    "deblur_image",
    "frame_depth",
    "deblurred_view",
    "evidence_guard",
]

# Frame.extras key under which the pipeline attaches a frame's ExposureMotion.
EXPOSURE_MOTION_KEY = "exposure_motion"
_CACHE_KEY = "deblurred_view"
# Below this predicted blur (px) a frame is left alone: nothing to invert.
MIN_BLUR_PX = 1.5


@dataclass(frozen=True)
class ExposureMotion:
    """Camera motion during one exposure, constant velocity around mid-exposure.

    Velocities are in the camera frame at mid-exposure: the pose at time
    ``tau`` from mid-exposure is ``T_mid @ Pose(exp(omega tau), v tau)``.
    """

    exposure_s: float
    angular_velocity: np.ndarray  # (3,) rad/s
    linear_velocity: np.ndarray  # (3,) m/s
    depth_m: float = 2.0  # scene depth assumed where the frame has no depth image

    def relative_poses(self, samples: int) -> list[Pose]:
        """T_mid_sub at the centres of ``samples`` equal slices of the exposure."""
        taus = ((np.arange(samples) + 0.5) / samples - 0.5) * self.exposure_s
        return [Pose(_rotation_exp(self.angular_velocity * t), self.linear_velocity * t) for t in taus]

    def blur_px(self, intrinsics: CameraIntrinsics, depth_m: float) -> float:
        """Mean image displacement (px) of a 5x4 grid at ``depth_m`` between exposure start and end."""
        ends = self.relative_poses(2) if self.exposure_s > 0 else []
        if not ends:
            return 0.0
        w, h = intrinsics.width, intrinsics.height
        uv = np.stack(np.meshgrid(np.linspace(0.1, 0.9, 5) * w, np.linspace(0.1, 0.9, 4) * h), -1).reshape(-1, 2)
        pts = intrinsics.unproject(uv, np.full(len(uv), depth_m))
        # The two slice centres sit at +-exposure/4; scale to the full exposure.
        a, za = intrinsics.project(ends[0].inverse().transform_points(pts))
        b, zb = intrinsics.project(ends[1].inverse().transform_points(pts))
        ok = (za > 1e-6) & (zb > 1e-6)
        return float(2.0 * np.linalg.norm(a[ok] - b[ok], axis=-1).mean()) if ok.any() else 0.0


def exposure_motion(history: Sequence[tuple[int, Pose]], exposure_s: float, max_gap_s: float = 0.5,
                    depth_m: float = 2.0) -> ExposureMotion | None:
    """Motion during the exposure of the newest entry of ``history`` ((stamp_ns, T_world_cam), oldest first).

    Uses the newest three poses (a quadratic in time, differentiated at the
    newest stamp) or two (constant velocity). None without two poses within
    ``max_gap_s`` of each other, or without a positive exposure.
    """
    if exposure_s <= 0 or len(history) < 2:
        return None
    pts = list(history[-3:])
    if (pts[-1][0] - pts[-2][0]) * 1e-9 > max_gap_s:
        return None
    if len(pts) == 3 and (pts[1][0] - pts[0][0]) * 1e-9 > max_gap_s:
        pts = pts[1:]
    t_now, T_now = pts[-1]
    times, rots, trans = [], [], []
    for stamp, pose in pts[:-1]:
        dt = (stamp - t_now) * 1e-9
        if dt >= 0:
            return None  # not strictly increasing: no velocity
        rel = T_now.inverse() @ pose  # T_now_then, in the newest camera frame
        times.append(dt)
        rots.append(_rotation_log(rel.rotation))
        trans.append(rel.translation)
    # f(t) = a t + b t^2 through (0, 0) and the older samples; f'(0) = a.
    ts = np.asarray(times)
    M = np.stack([ts, ts**2], 1) if len(ts) == 2 else ts[:, None]
    omega = np.linalg.lstsq(M, np.asarray(rots), rcond=None)[0][0]
    vel = np.linalg.lstsq(M, np.asarray(trans), rcond=None)[0][0]
    if not (np.all(np.isfinite(omega)) and np.all(np.isfinite(vel))):
        return None
    return ExposureMotion(float(exposure_s), omega.astype(np.float64), vel.astype(np.float64), float(depth_m))


class MotionBlurOperator:
    """The blur ``A`` of one exposure on an (H, W[, C]) float32 linear image, and its adjoint.

    ``depth`` is metres: a scalar plane or an (H, W) map (zeros / non-finite
    values take the median of the valid ones). ``samples`` sub-frames
    (default: one per ~1.5 px of blur, 2 to 32).
    """

    def __init__(self, motion: ExposureMotion, intrinsics: CameraIntrinsics, depth: float | np.ndarray,
                 samples: int | None = None) -> None:
        w, h = intrinsics.width, intrinsics.height
        depth_arr = np.asarray(depth, np.float32)
        if depth_arr.ndim:
            if depth_arr.shape != (h, w):
                raise ValueError(f"depth map {depth_arr.shape} does not match the image {(h, w)}")
            good = np.isfinite(depth_arr) & (depth_arr > 0)
            if not good.any():
                raise ValueError("depth map has no valid values")
            plane = float(np.median(depth_arr[good]))
            inv_d = np.where(good, 1.0 / np.where(good, depth_arr, 1.0), 1.0 / plane).astype(np.float32)
        else:
            plane = float(depth_arr)
            if not (math.isfinite(plane) and plane > 0):
                raise ValueError(f"depth must be positive, got {plane}")
            inv_d = np.float32(1.0 / plane)
        self.blur_px = motion.blur_px(intrinsics, plane)
        n = samples if samples is not None else int(np.clip(math.ceil(self.blur_px / 1.5), 2, 32))
        self.samples = max(1, n)
        K = intrinsics.K
        K_inv = np.linalg.inv(K)
        gu, gv = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        self._forward: list[tuple[np.ndarray, np.ndarray]] = []  # sub-frame pixel -> mid-exposure pixel
        self._adjoint: list[tuple[np.ndarray, np.ndarray]] = []  # mid-exposure pixel -> sub-frame pixel
        for rel in motion.relative_poses(self.samples):
            T = rel.inverse()  # T_sub_mid
            H = (K @ T.rotation @ K_inv).astype(np.float32)
            e = (K @ T.translation).astype(np.float32)
            # Mid pixel x at depth z -> sub-frame: H x + e / z (per pixel: parallax).
            num = [H[r, 0] * gu + H[r, 1] * gv + H[r, 2] + e[r] * inv_d for r in range(3)]
            fu, fv = num[0] / num[2], num[1] / num[2]
            self._adjoint.append((fu, fv))
            # Inverse map by one fixed-point step (exact to second order in the small motion).
            du, dv = fu - gu, fv - gv
            su, sv = gu - du, gv - dv
            du2 = remap_linear(du, su, sv)
            dv2 = remap_linear(dv, su, sv)
            self._forward.append((gu - du2, gv - dv2))

    def _mean_warp(self, x: np.ndarray, maps: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        acc = np.zeros_like(x)
        for mu, mv in maps:
            acc += remap_linear(x, mu, mv)
        acc *= np.float32(1.0 / len(maps))
        return acc

    def blur(self, x: np.ndarray) -> np.ndarray:
        """``A x``: the exposure of a sharp (mid-exposure) linear image."""
        return self._mean_warp(x, self._forward)

    def adjoint(self, y: np.ndarray) -> np.ndarray:
        """``A^T y`` (to interpolation accuracy): each sub-frame pushed back to mid-exposure."""
        return self._mean_warp(y, self._adjoint)


def default_iterations(blur_px: float) -> int:
    """Iterations for a blur of ``blur_px``: few for short blur (noise), more for long (chosen on training photos)."""
    return int(np.clip(round(5 + blur_px), 5, 30))


# Weight of the total-variation prior at the typical noise of a training photo
# (relative noise NOISE_REF). Plain Richardson-Lucy amplifies sensor noise: on
# real photographs with a few pixels of blur it lost 1.5-2 dB; with this prior
# every tried frame gained (the measurement is in docs/real_images.md).
TV_WEIGHT = 0.015
NOISE_REF = 0.025
# The weight follows the frame's own noise: darker frames carry more shot noise
# per unit of signal and need a stronger prior. Fitted on 46 frames (train
# photos at 320x240, val at 640x480): a fixed weight gained +2.20 dB on average
# and lost up to 1.37 dB on dark frames; weight x (noise / NOISE_REF)^1.5
# gained +2.37 dB (docs/real_images.md).
TV_NOISE_EXPONENT = 1.5
TV_WEIGHT_RANGE = (0.004, 0.09)


def relative_noise(y: np.ndarray) -> float:
    """Sensor noise of linear float ``y`` (H, W[, C]), of its channel mean, relative to its mean level.

    The fast estimator of Immerkaer (1996): a Laplacian-difference mask that
    cancels smooth image structure, its mean absolute response scaled to a
    standard deviation. Motion blur removes most of the texture that would
    otherwise leak into it.
    """
    g = y.mean(axis=2) if y.ndim == 3 else y
    g = np.ascontiguousarray(g, dtype=np.float32)
    if min(g.shape) < 3:
        return NOISE_REF
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    response = cv2.filter2D(g, -1, mask, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1]
    sigma = math.sqrt(math.pi / 2) * float(np.abs(response).mean()) / 6
    return sigma / max(float(g.mean()), 1e-4)


def tv_weight_for(y: np.ndarray) -> float:
    """The total-variation weight for linear ``y``: :data:`TV_WEIGHT` scaled by its relative noise."""
    scale = (relative_noise(y) / NOISE_REF) ** TV_NOISE_EXPONENT
    return float(np.clip(TV_WEIGHT * scale, *TV_WEIGHT_RANGE))


def _tv_divergence(x: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """div(grad x / |grad x|) per channel of (H, W[, C]) float32 ``x`` (forward differences)."""
    gx = np.diff(x, axis=1, append=x[:, -1:])
    gy = np.diff(x, axis=0, append=x[-1:])
    mag = np.sqrt(gx * gx + gy * gy + np.float32(eps * eps))
    px, py = gx / mag, gy / mag
    px[:, 1:] -= px[:, :-1].copy()
    py[1:] -= py[:-1].copy()
    return px + py


def richardson_lucy(y: np.ndarray, op: MotionBlurOperator, iterations: int, tv_weight: float | None = None,
                    start: np.ndarray | None = None) -> np.ndarray:
    """Richardson-Lucy deconvolution of linear float32 ``y`` under ``op``, with a total-variation prior.

    ``x <- x A^T(y / A x) / (A^T 1 - tv_weight div(grad x / |grad x|))`` from
    ``start`` (default ``y``); the denominator is floored so that a strong
    edge never divides by ~0. ``tv_weight`` None: :func:`tv_weight_for` ``y``.
    """
    if tv_weight is None:
        tv_weight = tv_weight_for(y)
    eps = np.float32(1e-4)
    y = np.maximum(y, 0).astype(np.float32)
    norm = np.maximum(op.adjoint(np.ones_like(y)), eps)
    x = (y if start is None else np.clip(start, 0.0, 1.5)).astype(np.float32, copy=True)
    for _ in range(iterations):
        ratio = y / np.maximum(op.blur(x), eps)
        den = norm if tv_weight <= 0 else np.maximum(norm - np.float32(tv_weight) * _tv_divergence(x), 0.2)
        x *= op.adjoint(ratio) / den
        np.clip(x, 0.0, 1.5, out=x)  # highlights may exceed 1 before clipping by the sensor
    return x


# Blur from which the deconvolution runs at half resolution first, and the
# full-resolution iterations that then restore the finest detail. On training
# photos at 640x480: 2.8x faster than full resolution throughout, 0.2 dB lower.
COARSE_FROM_PX = 8.0
REFINE_ITERATIONS = 4


def deblur_image(image: np.ndarray, motion: ExposureMotion, intrinsics: CameraIntrinsics,
                 depth: float | np.ndarray, iterations: int | None = None) -> tuple[np.ndarray, float]:
    """(deblurred uint8 sRGB or mono ``image``, its predicted blur px) under ``motion``; the input is untouched.

    Blur of :data:`COARSE_FROM_PX` or more is first inverted at half
    resolution (a quarter of the pixels, half the blur), its correction
    upsampled onto the observation, then refined by
    :data:`REFINE_ITERATIONS` full-resolution iterations.
    """
    if image.dtype != np.uint8:
        raise ValueError(f"deblur_image expects uint8, got {image.dtype}")
    y = srgb_to_linear(image)
    op = MotionBlurOperator(motion, intrinsics, depth)
    if op.blur_px < COARSE_FROM_PX or iterations is not None:
        n = default_iterations(op.blur_px) if iterations is None else int(iterations)
        return linear_to_srgb(np.clip(richardson_lucy(y, op, n), 0.0, 1.0)), op.blur_px
    half = intrinsics.scaled(0.5)
    y_half = cv2.resize(y, (half.width, half.height), interpolation=cv2.INTER_AREA)
    depth_half = depth if not np.ndim(depth) else cv2.resize(np.asarray(depth, np.float32), (half.width, half.height),
                                                             interpolation=cv2.INTER_NEAREST)
    op_half = MotionBlurOperator(motion, half, depth_half)
    x_half = richardson_lucy(y_half, op_half, default_iterations(op_half.blur_px))
    start = y + cv2.resize(x_half - y_half, (intrinsics.width, intrinsics.height), interpolation=cv2.INTER_LINEAR)
    x = richardson_lucy(y, op, REFINE_ITERATIONS, start=start)
    return linear_to_srgb(np.clip(x, 0.0, 1.0)), op.blur_px


def frame_depth(frame: Frame, plane_m: float) -> float | np.ndarray:
    """The frame's depth image where it has a usable one (its size, some positive values), else ``plane_m``."""
    d = frame.depth
    if d is not None and d.shape == frame.image.shape[:2] and np.any(d > 0):
        return d
    return plane_m


def deblurred_view(frame: Frame) -> Frame:
    """``frame`` with its image deblurred by its attached :class:`ExposureMotion` (cached on the frame).

    Frames without one, or predicted to blur less than :data:`MIN_BLUR_PX`,
    come back as they are. The result's ``extras['deblur_px']`` is the blur
    that was inverted (0 when none).
    """
    motion = frame.extras.get(EXPOSURE_MOTION_KEY)
    if not isinstance(motion, ExposureMotion):
        return frame
    cached = frame.extras.get(_CACHE_KEY)
    if isinstance(cached, Frame):
        return cached
    depth = frame_depth(frame, motion.depth_m)
    if motion.blur_px(frame.intrinsics, motion.depth_m) < MIN_BLUR_PX:
        out = frame
    else:
        image, blur_px = deblur_image(frame.image, motion, frame.intrinsics, depth)
        # The new image is no longer blurred by the motion: drop it, so deblurring is idempotent.
        extras = {k: v for k, v in frame.extras.items() if k not in (_CACHE_KEY, EXPOSURE_MOTION_KEY)}
        out = replace(frame, image=image, extras={**extras, "deblur_px": blur_px})
    # One deblurring per frame: a keyframe serves as partner of several targets.
    frame.extras[_CACHE_KEY] = out
    return out


def evidence_guard(restored: np.ndarray, fallback: np.ndarray, observed: np.ndarray, motion: ExposureMotion,
                   intrinsics: CameraIntrinsics, tile: int = 32, margin: float = 2.0,
                   relative_margin: float = 0.5) -> tuple[np.ndarray, float]:
    """Keep ``restored`` only where it explains the ``observed`` blurred image as well as ``fallback`` does.

    Both candidates are re-blurred by the frame's own motion and compared with
    the observation tile by tile (mean absolute error in 8-bit sRGB units); a
    tile where ``restored`` is worse than ``fallback`` by more than
    ``margin + relative_margin * error(fallback)`` takes ``fallback``, with a
    feathered seam. (The deblurred fallback fits the observation's noise too:
    on real photos the truth itself re-blurs ~25 % worse than it, a shift of
    20 px 5-7x worse.) This catches
    structure that is sharp but in the wrong place (a misaligned partner, a
    hallucinated edge): it cannot blur into what the camera saw. Returns the
    image and the fraction of its area replaced.
    """
    if restored.shape != observed.shape or fallback.shape != observed.shape:
        raise ValueError("restored, fallback and observed must have one shape")
    op = MotionBlurOperator(motion, intrinsics, motion.depth_m)
    y = observed.astype(np.float32)
    err = []
    for img in (restored, fallback):
        reblurred = linear_to_srgb(op.blur(srgb_to_linear(img))).astype(np.float32)
        e = np.abs(reblurred - y)
        err.append(cv2.resize(e.mean(axis=2) if e.ndim == 3 else e, None, fx=1 / tile, fy=1 / tile,
                              interpolation=cv2.INTER_AREA))
    bad = (err[0] > err[1] * (1 + relative_margin) + margin).astype(np.float32)
    if not bad.any():
        return restored, 0.0
    h, w = observed.shape[:2]
    mask = cv2.GaussianBlur(cv2.resize(bad, (w, h), interpolation=cv2.INTER_NEAREST), (0, 0), tile / 4)
    if restored.ndim == 3:
        mask = mask[..., None]
    out = restored.astype(np.float32) * (1 - mask) + fallback.astype(np.float32) * mask
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), float(bad.mean())
