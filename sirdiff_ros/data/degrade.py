"""Physically plausible motion blur for real sharp frames with pose, K and depth.

The camera is given a small constant-velocity motion around the frame's pose
during the exposure (angular velocity ``omega`` and linear velocity ``v`` in
the camera frame, random directions from a seed unless given). Each of
``subframes`` sub-frame images is the sharp image re-projected through the
depth into the sub-frame camera; their linear-light average is the blurred
exposure, so blur depends on depth (parallax) and on rotation like a real
one. ``extras['valid']`` marks pixels whose every sub-frame sample came from
inside the sharp image with a known depth.

Re-projection is a backward warp: the flow ``F`` from a sharp pixel to the
sub-frame is computed exactly from its depth (rotation homography plus
translation parallax ``K t / z``); the sub-frame pixel ``x`` samples the
sharp image at ``x - F(x - F(x))`` (one fixed-point step of the inverse
flow, exact up to second order in the motion, which is small within an
exposure).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..core.frame import Frame
from ..core.geometry import Pose, _rotation_exp
from ..core.color import linear_to_srgb, srgb_to_linear
from ..core.remap import remap_linear
from .synth import add_sensor_noise, blur_extent_px

__all__ = ["BlurTrajectory", "blur_frame"]


@dataclass(frozen=True)
class BlurTrajectory:
    """The exposure motion used by :func:`blur_frame`.

    ``offsets_s[k]`` is sub-frame ``k``'s time from mid-exposure;
    ``poses[k]`` its T_world_cam (``None`` entries when the frame had no
    pose: then ``relative[k]`` = T_mid_sub is still exact).
    """

    exposure_s: float
    offsets_s: np.ndarray
    angular_velocity: np.ndarray  # rad/s, camera frame
    linear_velocity: np.ndarray  # m/s, camera frame
    relative: list[Pose]  # T_mid_sub per sub-frame
    poses: list[Pose | None]


def _random_direction(rng: np.random.Generator, weights: tuple[float, float, float]) -> np.ndarray:
    d = rng.normal(size=3) * np.asarray(weights)
    return d / max(float(np.linalg.norm(d)), 1e-12)


def _depth_map(frame: Frame, depth_prior: float | np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Depth used for re-projection (invalid pixels filled) and the mask of measured depth."""
    if frame.depth is not None:
        d = np.nan_to_num(frame.depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    elif depth_prior is not None:
        prior = np.asarray(depth_prior, np.float32)
        if prior.ndim and prior.shape != frame.image.shape[:2]:
            raise ValueError(f"depth prior shape {prior.shape} does not match the image {frame.image.shape[:2]}")
        d = np.broadcast_to(prior, frame.image.shape[:2]).copy()
    else:
        raise ValueError("blur_frame needs depth: the frame has none and no depth_prior was given")
    known = d > 0
    if not known.any():
        raise ValueError("depth has no valid (positive) values")
    # Holes take the median depth: a plausible plane, flagged invalid in the output.
    filled = np.where(known, d, np.float32(np.median(d[known])))
    return filled, known


def blur_frame(
    frame: Frame,
    seed: int,
    *,
    exposure_s: float = 0.03,
    subframes: int = 16,
    angular_speed: float = 1.5,
    speed: float = 0.3,
    angular_velocity: np.ndarray | None = None,
    linear_velocity: np.ndarray | None = None,
    depth_prior: float | np.ndarray | None = None,
    noise_std: float = 0.0,
    shot_noise: float = 0.0,
) -> tuple[Frame, BlurTrajectory]:
    """Motion-blurred copy of ``frame`` and the blur trajectory (deterministic for ``seed``).

    ``angular_speed`` (rad/s) and ``speed`` (m/s) set the magnitudes of
    random-direction velocities (rotation mostly pan/tilt); explicit
    ``angular_velocity`` / ``linear_velocity`` vectors (camera frame)
    override them. Depth comes from ``frame.depth`` or ``depth_prior`` (metres:
    a scalar plane or an (H, W) map). The result keeps stamp, pose (mid-
    exposure), intrinsics and depth; ``extras`` gain ``sharp`` (the input
    image), ``valid``, ``blur_px``, ``exposure_s``, ``subframes``.
    """
    if exposure_s < 0 or subframes < 1:
        raise ValueError(f"need exposure_s >= 0 and subframes >= 1, got {exposure_s}, {subframes}")
    rng = np.random.default_rng([seed, 0xB10E])
    omega = (np.asarray(angular_velocity, float) if angular_velocity is not None
             else _random_direction(rng, (1.0, 1.0, 0.3)) * angular_speed)
    vel = (np.asarray(linear_velocity, float) if linear_velocity is not None
           else _random_direction(rng, (1.0, 1.0, 1.0)) * speed)
    if omega.shape != (3,) or vel.shape != (3,):
        raise ValueError("angular_velocity and linear_velocity must be 3-vectors")
    K = frame.intrinsics
    depth, known = _depth_map(frame, depth_prior)
    offsets = (np.arange(subframes) + 0.5) / subframes * exposure_s - exposure_s / 2
    relative = [Pose(_rotation_exp(omega * tau), vel * tau) for tau in offsets]

    h, w = depth.shape
    u = np.arange(w, dtype=np.float32)
    v = np.arange(h, dtype=np.float32)
    inv_d = (1.0 / depth).astype(np.float32)
    sharp_lin = srgb_to_linear(frame.image)
    acc = np.zeros_like(sharp_lin)
    valid = known.copy()
    grid_u, grid_v = np.meshgrid(u, v)
    for rel in relative:
        # Sharp pixel x with depth z -> sub-frame: K (R_sub_mid (z K^-1 x) + t_sub_mid) / z.
        T = rel.inverse()
        H = K.K @ T.rotation @ np.linalg.inv(K.K)
        e = K.K @ T.translation
        num = [np.add.outer(np.float32(H[r, 1]) * v + np.float32(H[r, 2]), np.float32(H[r, 0]) * u)
               + np.float32(e[r]) * inv_d for r in range(3)]
        flow = np.stack([num[0] / num[2] - grid_u, num[1] / num[2] - grid_v], axis=-1)  # (H, W, 2) float32
        # One fixed-point step of the inverse flow: x_sharp = x - F(x - F(x)).
        fu, fv = grid_u - flow[..., 0], grid_v - flow[..., 1]
        f2 = remap_linear(flow, fu, fv)
        su, sv = grid_u - f2[..., 0], grid_v - f2[..., 1]
        acc += remap_linear(sharp_lin, su, sv)
        inside = (su >= -0.5) & (su <= w - 0.5) & (sv >= -0.5) & (sv <= h - 0.5)
        src_known = cv2.remap(known.view(np.uint8), su, sv, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT) > 0
        valid &= inside & src_known
    acc /= np.float32(len(relative))
    noisy = add_sensor_noise(acc, np.random.default_rng([seed, 0x9015E]), noise_std, shot_noise)
    image = linear_to_srgb(noisy)

    poses = [None if frame.pose is None else frame.pose @ r for r in relative]
    ref = frame.pose or Pose.identity()
    blur_px = blur_extent_px(K, np.where(known, depth, 0).astype(np.float32), ref, ref @ relative[0],
                             ref @ relative[-1])
    traj = BlurTrajectory(exposure_s, offsets, omega, vel, relative, poses)
    extras = {**frame.extras, "sharp": frame.image, "valid": valid, "blur_px": blur_px, "exposure_s": exposure_s,
              "subframes": subframes}
    out = Frame(image=image, stamp_ns=frame.stamp_ns, intrinsics=K, pose=frame.pose, depth=frame.depth,
                frame_id=frame.frame_id, seq=frame.seq, extras=extras)
    return out, traj
