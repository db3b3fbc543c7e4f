"""Similarity (Sim3) alignment of trajectories and pose errors after it.

Structure-from-motion recovers camera poses only up to a similarity
(rotation, translation and scale of the whole map), so estimated poses are
compared with the bag's poses after the least-squares similarity that maps
the estimated camera centres onto the reference ones (Umeyama 1991).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..core.geometry import Pose

__all__ = ["AlignmentError", "Similarity", "umeyama", "PoseErrors", "aligned_pose_errors"]


class AlignmentError(ValueError):
    """Too few or degenerate correspondences to align."""


@dataclass(frozen=True)
class Similarity:
    """``x -> scale * rotation @ x + translation``."""

    scale: float
    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform points of shape (..., 3)."""
        return self.scale * points @ self.rotation.T + self.translation

    def apply_pose(self, pose: Pose) -> Pose:
        """The camera pose (T_world_cam) expressed in the aligned world."""
        return Pose(self.rotation @ pose.rotation, self.apply(pose.translation))


def umeyama(source: np.ndarray, target: np.ndarray, *, with_scale: bool = True) -> Similarity:
    """Least-squares similarity with ``target ≈ s R source + t``.

    ``source``/``target``: (M, 3) corresponding points, M >= 3 and not all
    collinear (else the rotation is not determined: :class:`AlignmentError`).
    """
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise AlignmentError(f"expected two (M, 3) arrays of the same shape, got {src.shape} and {dst.shape}")
    if len(src) < 3:
        raise AlignmentError(f"need at least 3 correspondences to align, got {len(src)}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = float(np.mean(np.sum(xs * xs, axis=1)))
    if var_s < 1e-18:
        raise AlignmentError("source points coincide")
    cov = xd.T @ xs / len(src)  # (3, 3)
    U, D, Vt = np.linalg.svd(cov)
    if D[1] < 1e-12 * max(D[0], 1e-300):
        raise AlignmentError("points are collinear; the rotation about their line is undetermined")
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0  # reflection guard
    R = U @ S @ Vt
    s = float(np.trace(np.diag(D) @ S) / var_s) if with_scale else 1.0
    t = mu_d - s * R @ mu_s
    return Similarity(s, R, t)


@dataclass(frozen=True)
class PoseErrors:
    """Errors of estimated poses against reference poses after Sim3 alignment.

    ``ate_rmse``: RMSE of camera-centre distances (reference units, metres in
    a bag); ``rotation_deg_mean``: mean angle of the relative rotation;
    ``scale``: the alignment's scale (estimated-map units to metres).
    """

    count: int
    ate_rmse: float
    ate_max: float
    rotation_deg_mean: float
    scale: float


def aligned_pose_errors(estimated: Sequence[Pose], reference: Sequence[Pose]) -> PoseErrors:
    """Align ``estimated`` camera centres onto ``reference`` ones (Sim3), then
    measure position and rotation errors per camera."""
    if len(estimated) != len(reference):
        raise AlignmentError(f"{len(estimated)} estimated poses vs {len(reference)} reference poses")
    src = np.array([p.translation for p in estimated])
    dst = np.array([p.translation for p in reference])
    sim = umeyama(src, dst)
    aligned = [sim.apply_pose(p) for p in estimated]
    d = np.array([a.distance_to(r) for a, r in zip(aligned, reference)])
    rot = [math.degrees(a.rotation_angle_to(r)) for a, r in zip(aligned, reference)]
    return PoseErrors(
        count=len(d),
        ate_rmse=float(np.sqrt(np.mean(d * d))),
        ate_max=float(d.max()),
        rotation_deg_mean=float(np.mean(rot)),
        scale=sim.scale,
    )
