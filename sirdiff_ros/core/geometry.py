"""Rigid-body geometry and pinhole cameras.

Conventions (used everywhere in the package):

* Camera axes follow OpenCV / ROS optical frames: x right, y down, z forward.
* A :class:`Pose` is ``T_world_cam``: it maps points from the camera frame into
  the world frame (``p_world = R @ p_cam + t``). This is what a SLAM stack
  publishes as the camera pose and what ``groundtruth.txt`` stores.
* Quaternions are ``(x, y, z, w)``, the order of ``geometry_msgs/Quaternion``
  and TUM files, Hamilton convention.
* Timestamps are integer nanoseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "GeometryError",
    "CameraIntrinsics",
    "Pose",
    "interpolate_pose",
    "normalize_quaternion",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "slerp",
]


class GeometryError(ValueError):
    """Invalid geometric input (NaN pose, non-unit quaternion, bad intrinsics)."""


# A quaternion whose norm is this far from 1 is rejected rather than silently
# renormalised: it usually means a corrupt message, not rounding.
QUATERNION_NORM_TOLERANCE = 1e-3


def normalize_quaternion(q: npt.ArrayLike, tolerance: float | None = QUATERNION_NORM_TOLERANCE) -> np.ndarray:
    """Return ``q`` (x, y, z, w) as a unit float64 array with ``w >= 0``.

    Raises :class:`GeometryError` for non-finite values, a zero quaternion, or
    (when ``tolerance`` is not None) a norm further than ``tolerance`` from 1.
    """
    v = np.asarray(q, dtype=np.float64).reshape(-1)
    if v.shape != (4,):
        raise GeometryError(f"quaternion must have 4 components, got {v.shape[0]}")
    if not np.all(np.isfinite(v)):
        raise GeometryError(f"quaternion has non-finite components: {v.tolist()}")
    norm = float(np.linalg.norm(v))
    if norm < 1e-12:
        raise GeometryError("quaternion has zero norm")
    if tolerance is not None and abs(norm - 1.0) > tolerance:
        raise GeometryError(f"quaternion is not unit length (norm {norm:.6f})")
    v = v / norm
    # One canonical sign so equal rotations compare equal.
    return -v if v[3] < 0 else v


def quaternion_to_matrix(q: npt.ArrayLike) -> np.ndarray:
    """Rotation matrix (3x3) of a unit quaternion (x, y, z, w)."""
    x, y, z, w = normalize_quaternion(q, tolerance=None)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), ``w >= 0``, of a rotation matrix."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    # Shepperd's method: branch on the largest diagonal term for stability.
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = math.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2]) * 2
        q = [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif R[1, 1] > R[2, 2]:
        s = math.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2]) * 2
        q = [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = math.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1]) * 2
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]
    return normalize_quaternion(q, tolerance=None)


def slerp(q0: npt.ArrayLike, q1: npt.ArrayLike, u: float) -> np.ndarray:
    """Spherical linear interpolation between unit quaternions, ``u`` in [0, 1]."""
    a = normalize_quaternion(q0, tolerance=None)
    b = normalize_quaternion(q1, tolerance=None)
    dot = float(np.dot(a, b))
    if dot < 0.0:  # take the short way round
        b, dot = -b, -dot
    if dot > 0.9995:  # nearly parallel: lerp is exact enough and stable
        q = a + u * (b - a)
    else:
        theta = math.acos(min(dot, 1.0))
        q = (math.sin((1 - u) * theta) * a + math.sin(u * theta) * b) / math.sin(theta)
    return normalize_quaternion(q, tolerance=None)


@dataclass(frozen=True)
class Pose:
    """Rigid transform ``T_world_cam`` (see module docstring)."""

    rotation: np.ndarray  # (3, 3) float64
    translation: np.ndarray  # (3,) float64

    def __post_init__(self) -> None:
        R = np.asarray(self.rotation, dtype=np.float64).reshape(3, 3)
        t = np.asarray(self.translation, dtype=np.float64).reshape(3)
        if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
            raise GeometryError("pose has non-finite values")
        if np.abs(R @ R.T - np.eye(3)).max() > 1e-4 or np.linalg.det(R) < 0:
            raise GeometryError("pose rotation is not a proper rotation matrix")
        object.__setattr__(self, "rotation", R)
        object.__setattr__(self, "translation", t)

    @classmethod
    def _proper(cls, rotation: np.ndarray, translation: np.ndarray) -> Pose:
        """A pose whose float64 rotation is proper by construction (from a unit quaternion,
        or the product or transpose of such) and whose translation is finite: the
        checks of ``__post_init__`` would cost more than the pose itself (the node builds
        one per pose message)."""
        pose = object.__new__(cls)
        object.__setattr__(pose, "rotation", rotation)
        object.__setattr__(pose, "translation", translation)
        return pose

    # -- constructors -----------------------------------------------------
    @classmethod
    def identity(cls) -> Pose:
        return cls(np.eye(3), np.zeros(3))

    @classmethod
    def from_quaternion(cls, translation: Sequence[float], quaternion_xyzw: Sequence[float]) -> Pose:
        """Build from ``t`` and a unit quaternion; rejects NaN and non-unit input."""
        t = np.asarray(translation, dtype=np.float64).reshape(3)
        if not np.isfinite(t).all():
            raise GeometryError("pose has non-finite values")
        return cls._proper(quaternion_to_matrix(normalize_quaternion(quaternion_xyzw)), t)

    @classmethod
    def from_matrix(cls, T: np.ndarray) -> Pose:
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4):
            raise GeometryError(f"expected a 4x4 matrix, got {T.shape}")
        return cls(T[:3, :3], T[:3, 3])

    # -- views --------------------------------------------------------------
    @property
    def quaternion(self) -> np.ndarray:
        """(x, y, z, w) with w >= 0."""
        return matrix_to_quaternion(self.rotation)

    def matrix(self) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3] = self.rotation
        T[:3, 3] = self.translation
        return T

    # -- algebra ------------------------------------------------------------
    def inverse(self) -> Pose:
        Rt = self.rotation.T
        return Pose._proper(Rt, -Rt @ self.translation)

    def __matmul__(self, other: Pose) -> Pose:
        return Pose._proper(self.rotation @ other.rotation, self.rotation @ other.translation + self.translation)

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        """Apply to points of shape (..., 3)."""
        return points @ self.rotation.T + self.translation

    def relative_to(self, other: Pose) -> Pose:
        """``T_other_self``: maps points of this camera into ``other``'s frame."""
        return other.inverse() @ self

    def rotation_angle_to(self, other: Pose) -> float:
        """Angle (radians) of the relative rotation between two poses."""
        c = (np.trace(self.rotation.T @ other.rotation) - 1.0) / 2.0
        return float(math.acos(max(-1.0, min(1.0, c))))

    def distance_to(self, other: Pose) -> float:
        return float(np.linalg.norm(self.translation - other.translation))


def interpolate_pose(stamp_a_ns: int, pose_a: Pose, stamp_b_ns: int, pose_b: Pose, stamp_ns: int) -> Pose:
    """Pose at ``stamp_ns`` by SLERP on rotation and linear translation.

    ``stamp_ns`` outside [a, b] extrapolates with the same constant-velocity
    model; callers bound how far they allow that.
    """
    if stamp_b_ns == stamp_a_ns:
        return pose_a
    u = (stamp_ns - stamp_a_ns) / (stamp_b_ns - stamp_a_ns)
    t = pose_a.translation + u * (pose_b.translation - pose_a.translation)
    if 0.0 <= u <= 1.0:
        q = slerp(pose_a.quaternion, pose_b.quaternion, u)
        return Pose(quaternion_to_matrix(q), t)
    # Extrapolate rotation with the relative rotation scaled by u (axis-angle).
    R_rel = pose_a.rotation.T @ pose_b.rotation
    rvec = _rotation_log(R_rel) * u
    return Pose(pose_a.rotation @ _rotation_exp(rvec), t)


def _rotation_log(R: np.ndarray) -> np.ndarray:
    c = max(-1.0, min(1.0, (np.trace(R) - 1.0) / 2.0))
    theta = math.acos(c)
    if theta < 1e-9:
        return np.zeros(3)
    w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if math.pi - theta < 1e-6:
        # Near 180 degrees the antisymmetric part vanishes; use the diagonal.
        axis = np.sqrt(np.maximum((np.diag(R) + 1.0) / 2.0, 0.0))
        return axis * theta
    return w * theta / (2.0 * math.sin(theta))


def _rotation_exp(rvec: np.ndarray) -> np.ndarray:
    theta = float(np.linalg.norm(rvec))
    if theta < 1e-12:
        return np.eye(3)
    k = rvec / theta
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(theta) * K + (1 - math.cos(theta)) * (K @ K)


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics for an image of ``width`` x ``height`` pixels.

    Pixel centres are at integer coordinates (OpenCV convention): the pixel
    in column ``u`` covers ``[u - 0.5, u + 0.5)``.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        vals = (self.fx, self.fy, self.cx, self.cy)
        if not all(math.isfinite(v) for v in vals):
            raise GeometryError(f"intrinsics have non-finite values: {vals}")
        if self.fx <= 0 or self.fy <= 0:
            raise GeometryError(f"focal lengths must be positive, got fx={self.fx} fy={self.fy}")
        if self.width <= 0 or self.height <= 0:
            raise GeometryError(f"image size must be positive, got {self.width}x{self.height}")

    @classmethod
    def from_matrix(cls, K: np.ndarray, width: int, height: int) -> CameraIntrinsics:
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        return cls(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), int(width), int(height))

    @classmethod
    def from_camera_info(cls, k: Sequence[float], width: int, height: int) -> CameraIntrinsics:
        """From the row-major 9-vector ``k`` of ``sensor_msgs/CameraInfo``."""
        return cls.from_matrix(np.asarray(k, dtype=np.float64), width, height)

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled(self, factor: float) -> CameraIntrinsics:
        """Intrinsics of the image resized by ``factor`` (pixel-centre aware)."""
        return CameraIntrinsics(
            self.fx * factor,
            self.fy * factor,
            (self.cx + 0.5) * factor - 0.5,
            (self.cy + 0.5) * factor - 0.5,
            int(round(self.width * factor)),
            int(round(self.height * factor)),
        )

    def project(self, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project camera-frame points (..., 3) to pixels (..., 2) and depth (...)."""
        z = points_cam[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.fx * points_cam[..., 0] / z + self.cx
            v = self.fy * points_cam[..., 1] / z + self.cy
        return np.stack([u, v], axis=-1), z

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Pixels (..., 2) with metric z-depth (...) to camera-frame points (..., 3)."""
        x = (uv[..., 0] - self.cx) / self.fx * depth
        y = (uv[..., 1] - self.cy) / self.fy * depth
        return np.stack([x, y, depth], axis=-1)

    def pixel_grid(self, step: int = 1) -> np.ndarray:
        """Pixel-centre coordinates (H/step, W/step, 2) as float64 (u, v)."""
        us = np.arange(0, self.width, step, dtype=np.float64)
        vs = np.arange(0, self.height, step, dtype=np.float64)
        uu, vv = np.meshgrid(us, vs)
        return np.stack([uu, vv], axis=-1)

    def in_image(self, uv: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Boolean mask of pixels that land inside the image."""
        return (
            (uv[..., 0] >= -0.5 + margin)
            & (uv[..., 0] < self.width - 0.5 - margin)
            & (uv[..., 1] >= -0.5 + margin)
            & (uv[..., 1] < self.height - 0.5 - margin)
        )
