"""How much of a target camera's image another camera also sees.

The estimate samples a coarse grid of the target's pixels, lifts each to 3D
at a few depths (or at the target's measured depth when a depth image is
given), reprojects the points into the other camera and counts the fraction
that land inside its image and in front of it. Occlusion is ignored: the
question is whether the other view *can* show the same scene, which is what
view selection needs, and it keeps the estimate a pure function of poses.

Depth prior: without a depth image the scene is assumed to lie between
``depth_range = (near, far)`` metres; depths are sampled uniformly in
*inverse* depth, where parallax is linear, and a grid cell's visibility is
the fraction of its depth samples that project inside. Views facing away
score 0 (every point is behind them).

Everything is vectorised over many candidate cameras so that view selection
over a large keyframe buffer stays linear and cheap.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .geometry import CameraIntrinsics, GeometryError, Pose

__all__ = [
    "OverlapGrid",
    "CameraStack",
    "target_grid",
    "visibility",
    "overlap_fraction",
    "inverse_depth_samples",
]

DEFAULT_DEPTH_RANGE = (0.5, 10.0)


def inverse_depth_samples(depth_range: tuple[float, float], n: int) -> np.ndarray:
    """``n`` depths between near and far, uniform in inverse depth (cell centres)."""
    near, far = float(depth_range[0]), float(depth_range[1])
    if not (0.0 < near <= far and np.isfinite(far)):
        raise GeometryError(f"depth_range must satisfy 0 < near <= far < inf, got {depth_range}")
    if n < 1:
        raise ValueError(f"need at least one depth sample, got {n}")
    u = (np.arange(n) + 0.5) / n
    return 1.0 / ((1.0 - u) / near + u / far)


@dataclass(frozen=True)
class OverlapGrid:
    """World points sampled from the target's image.

    ``points`` is (D, G, 3): D depth samples of G grid cells (row-major over
    the ``grid`` of (cols, rows)); ``valid`` (D, G) marks samples with a
    usable depth (all True with a depth range; with a depth image only the
    cells whose depth is valid). ``grid`` is (cols, rows).
    """

    points: np.ndarray
    valid: np.ndarray
    grid: tuple[int, int]

    @property
    def cell_valid(self) -> np.ndarray:
        """(G,) cells with at least one valid sample."""
        return np.asarray(self.valid.any(axis=0))


def target_grid(
    pose: Pose,
    intrinsics: CameraIntrinsics,
    grid: tuple[int, int] = (16, 12),
    depth_range: tuple[float, float] = DEFAULT_DEPTH_RANGE,
    n_depths: int = 3,
    depth: np.ndarray | None = None,
) -> OverlapGrid:
    """Sample the target's view as world points (see :class:`OverlapGrid`).

    With ``depth`` (metres, (H, W), 0/NaN invalid) each cell is lifted once at
    the median valid depth of its pixels; cells without valid depth fall back
    to the ``depth_range`` samples so that a sparse depth image still gives an
    estimate for the whole image.
    """
    gw, gh = int(grid[0]), int(grid[1])
    if gw < 1 or gh < 1:
        raise ValueError(f"grid must be at least 1x1, got {grid}")
    w, h = intrinsics.width, intrinsics.height
    if depth is None:
        pts_cam, valid = _prior_grid(intrinsics, gw, gh, float(depth_range[0]), float(depth_range[1]), n_depths)
        return OverlapGrid(pose.transform_points(pts_cam), valid, (gw, gh))
    if depth.shape != (h, w):
        raise GeometryError(f"depth shape {depth.shape} does not match intrinsics {w}x{h}")
    uv = _cell_centres(w, h, gw, gh)  # (G, 2)
    prior = inverse_depth_samples(depth_range, n_depths)  # (D,)
    z = np.broadcast_to(prior[:, None], (n_depths, uv.shape[0])).copy()  # (D, G)
    valid = np.ones_like(z, dtype=bool)
    cell_depth = _cell_medians(depth, gw, gh)  # (G,)
    measured = np.isfinite(cell_depth) & (cell_depth > 0)
    # Measured cells use one sample (repeated across D, marked valid once).
    z[:, measured] = cell_depth[measured]
    valid[1:, measured] = False
    pts_cam = intrinsics.unproject(np.broadcast_to(uv, (n_depths,) + uv.shape), z)  # (D, G, 3)
    return OverlapGrid(pose.transform_points(pts_cam), valid, (gw, gh))


def _cell_centres(w: int, h: int, gw: int, gh: int) -> np.ndarray:
    """(G, 2) pixel coordinates of the grid cells' centres (pixel centres at integers)."""
    us = (np.arange(gw) + 0.5) * w / gw - 0.5
    vs = (np.arange(gh) + 0.5) * h / gh - 0.5
    uu, vv = np.meshgrid(us, vs)
    return np.stack([uu.ravel(), vv.ravel()], axis=-1)


@functools.lru_cache(maxsize=32)
def _prior_grid(
    intrinsics: CameraIntrinsics, gw: int, gh: int, near: float, far: float, n_depths: int
) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame points (D, G, 3) of the depth-prior grid and its all-True mask;
    cached: selection asks for the same grid for every target of a camera."""
    uv = _cell_centres(intrinsics.width, intrinsics.height, gw, gh)
    prior = inverse_depth_samples((near, far), n_depths)
    z = np.broadcast_to(prior[:, None], (n_depths, uv.shape[0]))
    pts = intrinsics.unproject(np.broadcast_to(uv, (n_depths,) + uv.shape), z)
    valid = np.ones(z.shape, dtype=bool)
    pts.flags.writeable = False
    valid.flags.writeable = False
    return pts, valid


def _cell_medians(depth: np.ndarray, gw: int, gh: int) -> np.ndarray:
    """Median valid depth per grid cell, NaN where a cell has none. (G,)

    The value is numpy's ``nanmedian`` of the cell in float64, bit for bit."""
    h, w = depth.shape
    d = np.where(np.isfinite(depth) & (depth > 0), depth, np.nan)
    if h % gh == 0 and w % gw == 0:
        # Float32 depth stays float32 for the sort (half the memory; the order is the same).
        d = d if d.dtype == np.float32 else d.astype(np.float64)
        # (H, W) -> (gh, H/gh, gw, W/gw) -> (gh, gw, cell pixels)
        blocks = d.reshape(gh, h // gh, gw, w // gw).transpose(0, 2, 1, 3).reshape(gh * gw, -1)
        n = blocks.shape[1] - np.isnan(blocks).sum(axis=1)  # valid pixels per cell
        out = np.full(gh * gw, np.nan)
        cells = np.flatnonzero(n)
        if cells.size:
            s = np.sort(blocks[cells], axis=1)  # NaN last: a cell's valid depths come first
            k, rows = n[cells], np.arange(cells.size)
            # The mean of the two middle values (one value twice for an odd count), in float64.
            out[cells] = (s[rows, (k - 1) // 2].astype(np.float64) + s[rows, k // 2].astype(np.float64)) / 2
        return out
    d = d.astype(np.float64)
    with warnings.catch_warnings():
        # nanmedian warns on all-NaN cells; those are expected (no depth) and give NaN.
        warnings.simplefilter("ignore", RuntimeWarning)
        ys = np.linspace(0, h, gh + 1).astype(int)
        xs = np.linspace(0, w, gw + 1).astype(int)
        return np.array(
            [np.nanmedian(d[ys[r] : ys[r + 1], xs[c] : xs[c + 1]]) for r in range(gh) for c in range(gw)]
        )


@dataclass(frozen=True)
class CameraStack:
    """Many cameras as arrays, for vectorised reprojection.

    ``R_cw`` (M, 3, 3) and ``t_cw`` (M, 3) map world points into each camera
    (the inverse of each ``T_world_cam``); ``k`` (M, 6) holds
    fx, fy, cx, cy, width, height.
    """

    R_cw: np.ndarray
    t_cw: np.ndarray
    k: np.ndarray

    @classmethod
    def from_cameras(cls, cameras: Sequence[tuple[Pose, CameraIntrinsics]]) -> CameraStack:
        if len(cameras) == 0:
            return cls(np.zeros((0, 3, 3)), np.zeros((0, 3)), np.zeros((0, 6)))
        R = np.stack([p.rotation.T for p, _ in cameras])
        t = np.stack([-(p.rotation.T @ p.translation) for p, _ in cameras])
        k = np.array([[K.fx, K.fy, K.cx, K.cy, K.width, K.height] for _, K in cameras], dtype=np.float64)
        return cls(R, t, k)

    def __len__(self) -> int:
        return int(self.R_cw.shape[0])

    def subset(self, index: np.ndarray) -> CameraStack:
        return CameraStack(self.R_cw[index], self.t_cw[index], self.k[index])


def visibility(grid: OverlapGrid, cameras: CameraStack) -> np.ndarray:
    """Per camera and grid cell, the fraction of valid depth samples it sees.

    Returns (M, G) float64 in [0, 1]; cells without any valid sample are 0.
    """
    D, G, _ = grid.points.shape
    if len(cameras) == 0:
        return np.zeros((0, G))
    M = len(cameras)
    pts = grid.points.reshape(-1, 3).T  # (3, D*G)
    # One GEMM: (M*3, 3) @ (3, D*G) -> (M, 3, D*G), the points in each candidate camera
    pc = (cameras.R_cw.reshape(M * 3, 3) @ pts).reshape(M, 3, -1) + cameras.t_cw[:, :, None]
    z = pc[:, 2]
    fx, fy, cx, cy, w, h = (cameras.k[:, i : i + 1] for i in range(6))
    in_front = z > 1e-6
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_z = 1.0 / z
        u = fx * pc[:, 0] * inv_z + cx
        v = fy * pc[:, 1] * inv_z + cy
    inside = in_front & (u >= -0.5) & (u < w - 0.5) & (v >= -0.5) & (v < h - 0.5)
    inside = inside.reshape(len(cameras), D, G) & grid.valid[None]
    n_valid = grid.valid.sum(axis=0)  # (G,)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = inside.sum(axis=1) / n_valid[None, :]
    return np.where(n_valid[None, :] > 0, frac, 0.0)


def overlap_fraction(
    target_pose: Pose,
    target_intrinsics: CameraIntrinsics,
    other_pose: Pose,
    other_intrinsics: CameraIntrinsics,
    depth_range: tuple[float, float] = DEFAULT_DEPTH_RANGE,
    target_depth: np.ndarray | None = None,
    grid: tuple[int, int] = (16, 12),
    n_depths: int = 3,
) -> float:
    """Estimated fraction (0..1) of the target image that the other camera sees.

    See the module docstring for the depth prior. Cells of a depth image
    without valid depth use ``depth_range``.
    """
    g = target_grid(target_pose, target_intrinsics, grid, depth_range, n_depths, target_depth)
    vis = visibility(g, CameraStack.from_cameras([(other_pose, other_intrinsics)]))[0]
    return float(vis.mean())
