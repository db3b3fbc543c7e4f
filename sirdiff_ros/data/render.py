"""Exact z-buffer rendering of planar textured scenes at any resolution.

Every surface is a planar quad, which makes two things exact and cheap:

* the map from texture pixels to image pixels is a homography, so a quad's
  texture is drawn with one ``cv2.warpPerspective`` limited to the screen box
  where the quad is visible (borders wrap, which tiles the texture);
* inverse depth ``1/z`` is an affine function of the pixel ``(u, v)`` on a
  plane, so per-pixel depth and the z-test cost three multiply-adds.

Rendering is deferred: pass 1 rasterises every quad's polygon (clipped at the
near plane) into an inverse-depth and quad-id buffer; pass 2 warps each
visible quad's texture only where it won. The texture mip level is chosen per
depth band (a level per octave of depth), so far floor tiles do not alias.

Pixel centres are at integer coordinates (OpenCV), matching
:class:`~sirdiff_ros.core.geometry.CameraIntrinsics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..core.geometry import CameraIntrinsics, Pose
from .scene import Quad, Scene

__all__ = ["RenderResult", "Renderer", "render_view", "NEAR_PLANE_M"]

NEAR_PLANE_M = 0.05
_SUBPIXEL_BITS = 4


@dataclass
class RenderResult:
    """``image`` uint8 sRGB (H, W, 3); ``depth`` float32 metric z (0 = nothing); ``valid`` bool."""

    image: np.ndarray
    depth: np.ndarray
    valid: np.ndarray
    quad_id: np.ndarray  # int16 (H, W), -1 where nothing was hit


def _clip_near(points_cam: np.ndarray, near: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a convex polygon (k, 3) to ``z >= near``."""
    out = []
    k = len(points_cam)
    for i in range(k):
        p, q = points_cam[i], points_cam[(i + 1) % k]
        pin, qin = p[2] >= near, q[2] >= near
        if pin:
            out.append(p)
        if pin != qin:
            s = (near - p[2]) / (q[2] - p[2])
            out.append(p + s * (q - p))
    return np.array(out) if out else np.zeros((0, 3))


class Renderer:
    """Renders one :class:`Scene` with fixed intrinsics; reuse it for many poses."""

    def __init__(self, scene: Scene, intrinsics: CameraIntrinsics) -> None:
        self.scene = scene
        self.K = intrinsics
        h, w = intrinsics.height, intrinsics.width
        # Pixel-centre grids, shared by every inverse-depth evaluation.
        self._u = np.broadcast_to(np.arange(w, dtype=np.float32)[None, :], (h, w))
        self._v = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w))
        self._Kinv = np.linalg.inv(intrinsics.K)
        self._focal = math.sqrt(intrinsics.fx * intrinsics.fy)

    def render(self, pose: Pose) -> RenderResult:
        """Sharp image, depth, validity and quad ids seen from ``pose`` (T_world_cam)."""
        h, w = self.K.height, self.K.width
        inv_z = np.zeros((h, w), np.float32)
        qid = np.full((h, w), -1, np.int16)
        R_cw = pose.rotation.T
        t_cw = -R_cw @ pose.translation
        cam_centre = pose.translation
        drawn: list[tuple[int, tuple[int, int, int, int], np.ndarray]] = []

        # Pass 1: polygons into the inverse-depth / id buffers.
        for i, q in enumerate(self.scene.quads):
            n_w = q.normal
            if np.dot(n_w, cam_centre - q.origin) <= 1e-9:  # back face (or edge-on)
                continue
            pc = q.corners() @ R_cw.T + t_cw  # (4, 3) camera frame
            if np.all(pc[:, 2] < NEAR_PLANE_M):
                continue
            if np.any(pc[:, 2] < NEAR_PLANE_M):
                pc = _clip_near(pc, NEAR_PLANE_M)
            uv = pc[:, :2] / pc[:, 2:3] * [self.K.fx, self.K.fy] + [self.K.cx, self.K.cy]
            x0 = max(int(math.floor(uv[:, 0].min())), 0)
            y0 = max(int(math.floor(uv[:, 1].min())), 0)
            x1 = min(int(math.ceil(uv[:, 0].max())) + 1, w)
            y1 = min(int(math.ceil(uv[:, 1].max())) + 1, h)
            if x0 >= x1 or y0 >= y1:
                continue
            # Plane n.X = d in camera coordinates: 1/z = (n^T K^-1 [u v 1]) / d.
            n_c = R_cw @ n_w
            d = float(n_c @ (R_cw @ q.origin + t_cw))
            coef = (n_c @ self._Kinv) / d  # (a, b, c)
            inv = (coef[0] * self._u[y0:y1, x0:x1] + coef[1] * self._v[y0:y1, x0:x1] + coef[2]).astype(np.float32)
            mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
            pts = np.round((uv - [x0, y0]) * (1 << _SUBPIXEL_BITS)).astype(np.int32)
            cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
            win = inv > inv_z[y0:y1, x0:x1]
            win &= mask.view(bool)
            np.copyto(inv_z[y0:y1, x0:x1], inv, where=win)
            np.copyto(qid[y0:y1, x0:x1], np.int16(i), where=win)
            drawn.append((i, (x0, y0, x1, y1), coef))

        # Pass 2: textures where each quad won the z-test.
        image = np.zeros((h, w, 3), np.uint8)
        for i, (x0, y0, x1, y1), coef in drawn:
            sel = qid[y0:y1, x0:x1] == i
            rows, cols = np.flatnonzero(sel.any(axis=1)), np.flatnonzero(sel.any(axis=0))
            if rows.size == 0:
                continue
            # Shrink to the visible box.
            y0, y1, x0, x1 = y0 + rows[0], y0 + rows[-1] + 1, x0 + cols[0], x0 + cols[-1] + 1
            sel = sel[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            self._shade(self.scene.quads[i], pose, coef, (x0, y0, x1, y1), sel, inv_z, image)

        valid = inv_z > 0
        depth = np.zeros((h, w), np.float32)
        np.divide(1.0, inv_z, out=depth, where=valid)
        return RenderResult(image, depth, valid, qid)

    def _level_of_inv_depth(self, q: Quad, inv: float, nlevels: int) -> float:
        """Continuous mip level for a pixel at inverse depth ``inv``: log2(pixel footprint / texel)."""
        texel0 = q.tile_m[0] / q.texture.width
        return math.log2(max(1.0 / (max(inv, 1e-9) * self._focal * texel0), 1e-9))

    def _shade(self, q: Quad, pose: Pose, coef: np.ndarray, box: tuple[int, int, int, int], sel: np.ndarray,
               inv_z: np.ndarray, image: np.ndarray) -> None:
        x0, y0, x1, y1 = box
        nlev = len(q.texture.levels)
        # Inverse depth is affine, so its range over the box is at the corners.
        corners = [coef[0] * x + coef[1] * y + coef[2] for x in (x0, x1 - 1) for y in (y0, y1 - 1)]
        lv_near = self._level_of_inv_depth(q, max(corners), nlev)
        lv_far = self._level_of_inv_depth(q, min(corners), nlev)
        l_lo = int(min(max(round(lv_near), 0), nlev - 1))
        l_hi = int(min(max(round(lv_far), 0), nlev - 1))
        if l_lo == l_hi:
            self._warp_into(q, pose, l_lo, box, sel, image)
            return
        inv = inv_z[y0:y1, x0:x1]
        for lv in range(l_lo, l_hi + 1):
            # Inverse-depth interval where round(level) == lv.
            lo = 0.0 if lv == l_hi else self._inv_at_level(q, lv + 0.5)
            hi = np.inf if lv == l_lo else self._inv_at_level(q, lv - 0.5)
            band = sel & (inv > lo) & (inv <= hi)
            rows, cols = np.flatnonzero(band.any(axis=1)), np.flatnonzero(band.any(axis=0))
            if rows.size == 0:
                continue
            sub = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)
            self._warp_into(q, pose, lv, sub, band[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], image)

    def _inv_at_level(self, q: Quad, level: float) -> float:
        texel0 = q.tile_m[0] / q.texture.width
        return 1.0 / (2.0**level * self._focal * texel0)

    def _warp_into(self, q: Quad, pose: Pose, level: int, box: tuple[int, int, int, int], sel: np.ndarray,
                   image: np.ndarray) -> None:
        x0, y0, x1, y1 = box
        tex = q.texture.levels[level]
        th, tw = tex.shape[:2]
        # Texture pixel (s, t) of this level -> world point -> image pixel (shifted to the box).
        ru = np.linalg.norm(q.edge_u) / q.tile_m[0]
        rv = np.linalg.norm(q.edge_v) / q.tile_m[1]
        a = q.edge_u / (tw * ru)
        b = q.edge_v / (th * rv)
        R_cw = pose.rotation.T
        M = np.column_stack([a, b, q.origin + 0.5 * a + 0.5 * b - pose.translation])
        H = self.K.K @ R_cw @ M
        H = np.array([[1.0, 0, -x0], [0, 1.0, -y0], [0, 0, 1.0]]) @ H
        warped = cv2.warpPerspective(tex, H, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
        np.copyto(image[y0:y1, x0:x1], warped, where=sel[..., None])


def render_view(scene: Scene, intrinsics: CameraIntrinsics, pose: Pose) -> RenderResult:
    """One-shot :meth:`Renderer.render`."""
    return Renderer(scene, intrinsics).render(pose)
