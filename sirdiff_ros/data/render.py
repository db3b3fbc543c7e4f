"""Exact z-buffer rendering of planar textured scenes at any resolution.

Every surface is a planar quad, which makes two things exact and cheap:

* the map from texture pixels to image pixels is a homography, so a quad's
  texture is drawn with one ``cv2.warpPerspective`` limited to the screen box
  where the quad is visible, from a crop of the tiled texture that covers
  exactly the visible part of the quad (no border wrapping: OpenCV's wrap
  mode is ~10x slower than its in-bounds path);
* inverse depth ``1/z`` is an affine function of the pixel ``(u, v)`` on a
  plane, so per-pixel depth and the z-test cost three multiply-adds.

Rendering is deferred: pass 1 rasterises every quad's polygon (clipped at the
frustum) into an inverse-depth and quad-id buffer; pass 2 warps each
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
from .scene import Scene

__all__ = ["RenderResult", "Renderer", "render_view", "NEAR_PLANE_M"]

NEAR_PLANE_M = 0.05
_SUBPIXEL_BITS = 4
# Rows per warp strip for tall visible regions (see Renderer._warp_into).
_STRIP_ROWS = 48


@dataclass
class RenderResult:
    """``image`` uint8 sRGB (H, W, 3); ``depth`` float32 metric z (0 = nothing); ``valid`` bool."""

    image: np.ndarray
    depth: np.ndarray
    valid: np.ndarray
    quad_id: np.ndarray  # int16 (H, W), -1 where nothing was hit


def _clip(poly: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of a convex polygon (k, 3) to ``plane[:3] . p >= plane[3]``."""
    if len(poly) == 0:
        return poly
    nx, ny, nz, off = (float(v) for v in plane)
    pts = poly.tolist()  # plain floats: ~10x faster than numpy on a handful of vertices
    side = [nx * x + ny * y + nz * z - off for x, y, z in pts]
    if min(side) >= 0:
        return poly
    out = []
    k = len(pts)
    for i in range(k):
        j = (i + 1) % k
        if side[i] >= 0:
            out.append(pts[i])
        if (side[i] >= 0) != (side[j] >= 0):
            s = side[i] / (side[i] - side[j])
            p, q = pts[i], pts[j]
            out.append([p[0] + s * (q[0] - p[0]), p[1] + s * (q[1] - p[1]), p[2] + s * (q[2] - p[2])])
    return np.array(out) if out else np.zeros((0, 3))


def _wrapped_pieces(lo: int, hi: int, period: int) -> list[tuple[int, int]]:
    """Split [lo, hi) of an infinitely tiled axis into in-tile [a, b) ranges."""
    out = []
    for k in range(lo // period, (hi - 1) // period + 1):
        out.append((max(lo, k * period) - k * period, min(hi, (k + 1) * period) - k * period))
    return out


def _tiled_crop(tex: np.ndarray, t0: int, t1: int, s0: int, s1: int) -> np.ndarray:
    """Rows [t0, t1) x columns [s0, s1) of ``tex`` repeated forever (a view when no seam is crossed)."""
    h, w = tex.shape[:2]
    rows = _wrapped_pieces(t0, t1, h)
    cols = _wrapped_pieces(s0, s1, w)
    if len(rows) == 1 and len(cols) == 1:
        return tex[rows[0][0] : rows[0][1], cols[0][0] : cols[0][1]]
    strip = np.concatenate([tex[a:b] for a, b in rows], axis=0) if len(rows) > 1 else tex[rows[0][0] : rows[0][1]]
    if len(cols) == 1:
        return strip[:, cols[0][0] : cols[0][1]]
    return np.concatenate([strip[:, a:b] for a, b in cols], axis=1)


class Renderer:
    """Renders one :class:`Scene` with fixed intrinsics; reuse it for many poses."""

    def __init__(self, scene: Scene, intrinsics: CameraIntrinsics) -> None:
        self.scene = scene
        self.K = intrinsics
        h, w = intrinsics.height, intrinsics.width
        fx, fy, cx, cy = intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy
        self._u = np.arange(w, dtype=np.float32)
        self._v = np.arange(h, dtype=np.float32)
        self._Kinv = np.linalg.inv(intrinsics.K)
        self._focal = math.sqrt(fx * fy)
        # Near plane and the four image-border planes through the optical centre
        # (camera frame, keep n.p >= off); a pixel's edge is half a pixel past its centre.
        self._frustum = np.array([
            [0.0, 0.0, 1.0, NEAR_PLANE_M],
            [fx, 0.0, cx + 0.5, 0.0],
            [-fx, 0.0, w - 0.5 - cx, 0.0],
            [0.0, fy, cy + 0.5, 0.0],
            [0.0, -fy, h - 0.5 - cy, 0.0],
        ])
        # Per-quad constants, stacked so culling and transforms are one array op per view.
        quads = scene.quads
        self._corners = np.stack([q.corners() for q in quads]) if quads else np.zeros((0, 4, 3))
        self._normals = np.stack([q.normal for q in quads]) if quads else np.zeros((0, 3))
        self._origins = np.stack([q.origin for q in quads]) if quads else np.zeros((0, 3))
        # Texel size at mip level 0 (metres per texture pixel along edge_u).
        self._texel0 = np.array([q.tile_m[0] / q.texture.width for q in quads])
        # World point -> fractional quad coordinates (a, b): pseudo-inverse of [edge_u edge_v].
        self._to_ab = [np.linalg.pinv(np.column_stack([q.edge_u, q.edge_v])) for q in quads]
        self._level_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def render(self, pose: Pose) -> RenderResult:
        """Sharp image, depth, validity and quad ids seen from ``pose`` (T_world_cam)."""
        h, w = self.K.height, self.K.width
        inv_z = np.zeros((h, w), np.float32)
        qid = np.full((h, w), -1, np.int16)
        R_cw = pose.rotation.T
        t_cw = -R_cw @ pose.translation
        front = np.einsum("qk,qk->q", self._normals, pose.translation - self._origins) > 1e-9  # not back faces
        pc_all = self._corners @ R_cw.T + t_cw  # (Q, 4, 3) camera frame
        n_c_all = self._normals @ R_cw.T  # (Q, 3)
        d_all = np.einsum("qk,qk->q", n_c_all, pc_all[:, 0])  # plane offsets n.X = d
        coef_all = (n_c_all @ self._Kinv) / d_all[:, None]  # (Q, 3): 1/z = a u + b v + c
        drawn: list[tuple[int, tuple[int, int, int, int], np.ndarray]] = []

        # Side of each corner to each frustum plane, all quads at once: (Q, 4 corners, 5 planes).
        side = pc_all @ self._frustum[:, :3].T - self._frustum[:, 3]
        inside_all = side >= 0
        outside_one = (~inside_all).all(axis=1).any(axis=1)  # all corners beyond one plane: culled
        # Pass 1: visible polygons (clipped to the frustum) into the inverse-depth / id buffers.
        for i in np.flatnonzero(front & ~outside_one):
            poly = pc_all[i]
            for k in np.flatnonzero(~inside_all[i].all(axis=0)):  # only the planes it crosses
                poly = _clip(poly, self._frustum[k])
            if len(poly) < 3:
                continue
            uv = self._project(poly)
            x0 = max(int(math.floor(uv[:, 0].min())), 0)
            y0 = max(int(math.floor(uv[:, 1].min())), 0)
            x1 = min(int(math.ceil(uv[:, 0].max())) + 1, w)
            y1 = min(int(math.ceil(uv[:, 1].max())) + 1, h)
            if x0 >= x1 or y0 >= y1:
                continue
            a, b, c = coef_all[i].astype(np.float32)
            inv = np.add.outer(b * self._v[y0:y1] + c, a * self._u[x0:x1])  # (rows, cols) float32
            mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
            pts = np.round((uv - [x0, y0]) * (1 << _SUBPIXEL_BITS)).astype(np.int32)
            cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
            win = inv > inv_z[y0:y1, x0:x1]
            win &= mask.view(bool)
            cv2.copyTo(inv, win.view(np.uint8), inv_z[y0:y1, x0:x1])
            np.copyto(qid[y0:y1, x0:x1], np.int16(i), where=win)
            drawn.append((int(i), (x0, y0, x1, y1), poly))

        # Pass 2: textures where each quad won the z-test, one mip level per depth band.
        image = np.zeros((h, w, 3), np.uint8)
        for i, (x0, y0, x1, y1), poly in drawn:
            sel = qid[y0:y1, x0:x1] == i
            if not sel.any():
                continue
            self._shade(i, pose, poly, (x0, y0, x1, y1), sel, inv_z, image)

        valid = inv_z > 0
        depth = np.zeros((h, w), np.float32)
        np.divide(1.0, inv_z, out=depth, where=valid)
        return RenderResult(image, depth, valid, qid)

    def _project(self, poly: np.ndarray) -> np.ndarray:
        uv = np.empty((len(poly), 2))
        uv[:, 0] = poly[:, 0] / poly[:, 2] * self.K.fx + self.K.cx
        uv[:, 1] = poly[:, 1] / poly[:, 2] * self.K.fy + self.K.cy
        return uv

    def _level_maps(self, i: int, level: int) -> tuple[np.ndarray, np.ndarray]:
        """(world offset -> texel (2, 3), texel -> world [a b origin+a/2+b/2] (3, 3)) of quad ``i`` at ``level``."""
        key = (i, level)
        if key not in self._level_cache:
            q = self.scene.quads[i]
            th, tw = q.texture.levels[level].shape[:2]
            # Texels per quad edge: the texture repeats every tile_m metres.
            nu = tw * np.linalg.norm(q.edge_u) / q.tile_m[0]
            nv = th * np.linalg.norm(q.edge_v) / q.tile_m[1]
            a, b = q.edge_u / nu, q.edge_v / nv
            to_st = self._to_ab[i] * np.array([[nu], [nv]])
            self._level_cache[key] = (to_st, np.column_stack([a, b, q.origin + 0.5 * a + 0.5 * b]))
        return self._level_cache[key]

    def _z_at_level(self, i: int, level: float) -> float:
        """Depth where the pixel footprint equals ``2**level`` texels."""
        return 2.0**level * self._focal * self._texel0[i]

    def _shade(self, i: int, pose: Pose, poly: np.ndarray, box: tuple[int, int, int, int], sel: np.ndarray,
               inv_z: np.ndarray, image: np.ndarray) -> None:
        nlev = len(self.scene.quads[i].texture.levels)
        # Depth is linear along the polygon, so its range is at the vertices.
        z_near, z_far = float(poly[:, 2].min()), float(poly[:, 2].max())
        l_lo = int(min(max(round(math.log2(z_near / self._z_at_level(i, 0))), 0), nlev - 1))
        l_hi = int(min(max(round(math.log2(z_far / self._z_at_level(i, 0))), 0), nlev - 1))
        if l_lo == l_hi:
            self._warp_into(i, pose, l_lo, poly, box, sel, image)
            return
        x0, y0, x1, y1 = box
        inv = inv_z[y0:y1, x0:x1]
        for lv in range(l_lo, l_hi + 1):
            # Depth interval where round(level) == lv, as a band of the polygon and of the pixels.
            z_lo = 0.0 if lv == l_lo else self._z_at_level(i, lv - 0.5)
            z_hi = np.inf if lv == l_hi else self._z_at_level(i, lv + 0.5)
            band_poly = _clip(poly, np.array([0.0, 0.0, 1.0, z_lo]))
            if np.isfinite(z_hi):
                band_poly = _clip(band_poly, np.array([0.0, 0.0, -1.0, -z_hi]))
            if len(band_poly) < 3:
                continue
            band = sel & (inv > (1.0 / z_hi if np.isfinite(z_hi) else 0.0))
            if z_lo > 0:
                band &= inv <= 1.0 / z_lo
            self._warp_into(i, pose, lv, band_poly, box, band, image)

    def _warp_into(self, i: int, pose: Pose, level: int, poly: np.ndarray, box: tuple[int, int, int, int],
                   sel: np.ndarray, image: np.ndarray) -> None:
        """Warp the texture of quad ``i`` (mip ``level``) into ``image`` where ``sel`` (over ``box``) is set."""
        q = self.scene.quads[i]
        bx0, by0, _, _ = box
        rows = np.flatnonzero(sel.any(axis=1))
        if rows.size == 0:
            return
        tex = q.texture.levels[level]
        to_st, M0 = self._level_maps(i, level)
        # Texture pixel of the visible polygon's vertices: the crop of the tiled texture needed.
        world = pose.transform_points(poly)
        st = (world - q.origin) @ to_st.T - 0.5  # (k, 2) texel coordinates at this level
        s0, t0 = int(math.floor(st[:, 0].min())) - 1, int(math.floor(st[:, 1].min())) - 1
        s1, t1 = int(math.ceil(st[:, 0].max())) + 2, int(math.ceil(st[:, 1].max())) + 2
        crop = _tiled_crop(tex, t0, t1, s0, s1)
        # Crop pixel (s', t') -> world point -> image pixel (full image coordinates).
        M = M0.copy()
        M[:, 2] += s0 * M0[:, 0] + t0 * M0[:, 1] - pose.translation
        H = self.K.K @ pose.rotation.T @ M
        # Warp in horizontal strips, each tightened to the columns it owns: occluded
        # or slanted regions leave much of a single bounding box unused.
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        step = _STRIP_ROWS if (r1 - r0) > 2 * _STRIP_ROWS else r1 - r0
        for a in range(r0, r1, step):
            part = sel[a : min(a + step, r1)]
            cols = np.flatnonzero(part.any(axis=0))
            if cols.size == 0:
                continue
            c0, c1 = int(cols[0]), int(cols[-1]) + 1
            x0, y0 = bx0 + c0, by0 + a
            Hs = H.copy()
            Hs[0] -= x0 * Hs[2]
            Hs[1] -= y0 * Hs[2]
            warped = cv2.warpPerspective(crop, Hs, (c1 - c0, part.shape[0]), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_CONSTANT)
            cv2.copyTo(warped, part[:, c0:c1].view(np.uint8), image[y0 : y0 + part.shape[0], x0 : x0 + c1 - c0])


def render_view(scene: Scene, intrinsics: CameraIntrinsics, pose: Pose) -> RenderResult:
    """One-shot :meth:`Renderer.render`."""
    return Renderer(scene, intrinsics).render(pose)
