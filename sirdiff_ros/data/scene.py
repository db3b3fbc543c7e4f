"""Random indoor scenes made of textured planar quads.

A scene is a closed room (floor, four walls, ceiling) with boxes standing on
the floor, free-standing tilted panels and posters on the walls, so views
have real parallax and occlusions. Every surface is a planar quad, which
keeps rendering exact and cheap (see :mod:`sirdiff_ros.data.render`).

World frame: z up, floor at z = 0, room centred on the origin. Cameras move
inside ``Scene.camera_region`` (an axis-aligned box kept free of objects).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .textures import Texture, photo_texture, procedural_texture, texture_pool

__all__ = ["PHOTO_SHARE", "Quad", "Scene", "build_scene", "single_quad_scene"]

UP = np.array([0.0, 0.0, 1.0])
# Chance that a room surface or box gets a photograph rather than a procedural
# pattern, by default (the mix every cached sequence and view set was made with).
PHOTO_SHARE = 0.55


@dataclass(frozen=True)
class Quad:
    """A textured parallelogram ``origin + a*edge_u + b*edge_v``, ``a, b`` in [0, 1].

    ``edge_u`` runs along texture columns (viewer's right), ``edge_v`` along
    rows (viewer's down); the face is visible from the side of
    ``normal = -cross(edge_u, edge_v)``. The texture repeats every
    ``tile_m = (tile_u, tile_v)`` metres along the two edges.
    """

    origin: np.ndarray
    edge_u: np.ndarray
    edge_v: np.ndarray
    texture: Texture
    tile_m: tuple[float, float]
    name: str = ""

    @property
    def normal(self) -> np.ndarray:
        n = -np.cross(self.edge_u, self.edge_v)
        return n / np.linalg.norm(n)

    def corners(self) -> np.ndarray:
        """(4, 3) world corners in order origin, +u, +u+v, +v."""
        o, u, v = self.origin, self.edge_u, self.edge_v
        return np.stack([o, o + u, o + u + v, o + v])

    def point(self, a: float, b: float) -> np.ndarray:
        """World point at fractional quad coordinates (a, b)."""
        return self.origin + a * self.edge_u + b * self.edge_v


@dataclass
class Scene:
    quads: list[Quad]
    room_size: tuple[float, float, float]  # (Lx, Ly, Lz) metres
    camera_region: tuple[np.ndarray, np.ndarray]  # (min xyz, max xyz) kept free of objects
    seed: int = 0
    texture_names: set[str] = field(default_factory=set)


def _face(center: np.ndarray, normal: np.ndarray, down: np.ndarray, width: float, height: float,
          texture: Texture, tile_m: tuple[float, float], name: str) -> Quad:
    """Quad centred at ``center`` facing ``normal``; ``down`` is the viewer's down direction."""
    n = normal / np.linalg.norm(normal)
    d = down - np.dot(down, n) * n
    d /= np.linalg.norm(d)
    right = np.cross(d, -n)  # camera convention: x = y cross z, with z = -normal
    eu, ev = right * width, d * height
    return Quad(center - eu / 2 - ev / 2, eu, ev, texture, tile_m, name)


class _TexturePicker:
    """Draws textures for one scene from the split's pool (enforces the split)."""

    def __init__(self, seed: int, rng: np.random.Generator, texture_size: int, tile_scale: float,
                 photo_share: float) -> None:
        self.photos, self.families = texture_pool(seed)
        self.photo_share = photo_share
        self.rng = rng
        self.size = texture_size
        self.tile_scale = tile_scale
        self.used: set[str] = set()

    def photo(self) -> Texture:
        tex = photo_texture(str(self.rng.choice(self.photos)), self.size)
        self.used.add(tex.name)
        return tex

    def any(self) -> Texture:
        if self.rng.random() < self.photo_share:
            return self.photo()
        tex = procedural_texture(str(self.rng.choice(self.families)), self.rng, max(64, self.size // 2))
        self.used.add(tex.name)
        return tex

    def tile(self, tex: Texture, lo: float = 0.6, hi: float = 2.2) -> tuple[float, float]:
        w = float(self.rng.uniform(lo, hi)) * self.tile_scale
        return (w, w * tex.height / tex.width)


def _footprint_ok(center: np.ndarray, radius: float, room: np.ndarray, region: tuple[np.ndarray, np.ndarray],
                  margin: float) -> bool:
    lo, hi = region
    inside_room = np.all(np.abs(center[:2]) + radius <= room[:2] / 2 - 0.02)
    # Distance from the footprint circle to the camera region's rectangle.
    dx = max(lo[0] - center[0], 0.0, center[0] - hi[0])
    dy = max(lo[1] - center[1], 0.0, center[1] - hi[1])
    return bool(inside_room and np.hypot(dx, dy) > radius + margin)


def build_scene(seed: int, texture_size: int = 512, tile_scale: float = 1.0, photo_share: float = PHOTO_SHARE) -> Scene:
    """A random room for ``seed`` (deterministic), textured from the seed's split.

    ``tile_scale`` multiplies the size at which textures repeat on walls,
    floor, boxes and panels: larger tiles repeat less often in view, which
    feature-based SLAM needs (identical copies of a texture are ambiguous
    matches), at the cost of fewer texels per metre. ``photo_share`` is the
    chance that a floor, ceiling, wall or box gets a photograph rather than a
    procedural pattern (posters are always photographs): the held-out
    procedural families are smooth and periodic, and monocular SLAM cannot
    start a map in front of them.
    """
    if not tile_scale > 0:
        raise ValueError(f"tile_scale must be positive, got {tile_scale}")
    if not 0.0 <= photo_share <= 1.0:
        raise ValueError(f"photo_share must lie in [0, 1], got {photo_share}")
    rng = np.random.default_rng([seed, 0x5CE7E])
    pick = _TexturePicker(seed, rng, texture_size, tile_scale, photo_share)
    L = np.array([rng.uniform(4.5, 9.0), rng.uniform(4.5, 9.0), rng.uniform(2.5, 3.4)])
    region = (np.array([-0.2 * L[0], -0.2 * L[1], 0.9]), np.array([0.2 * L[0], 0.2 * L[1], min(1.9, L[2] - 0.5)]))
    quads: list[Quad] = []
    hx, hy, hz = L / 2
    ex, ey = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])

    # Room: inward-facing floor, ceiling and walls.
    t = pick.any()
    quads.append(_face(np.array([0, 0, 0.0]), UP, ex, L[1], L[0], t, pick.tile(t), "floor"))
    t = pick.any()
    quads.append(_face(np.array([0, 0, L[2]]), -UP, ex, L[1], L[0], t, pick.tile(t), "ceiling"))
    for name, c, n, w in (
        ("wall+x", [hx, 0, hz], -ex, L[1]),
        ("wall-x", [-hx, 0, hz], ex, L[1]),
        ("wall+y", [0, hy, hz], -ey, L[0]),
        ("wall-y", [0, -hy, hz], ey, L[0]),
    ):
        t = pick.any()
        quads.append(_face(np.array(c, float), n, -UP, w, L[2], t, pick.tile(t), name))
        # Posters a centimetre off the wall: real photographs, one tile each.
        for k in range(int(rng.integers(0, 3))):
            p = pick.photo()
            pw = float(rng.uniform(0.6, 1.6))
            ph = pw * p.height / p.width
            along = np.cross(UP, n)
            off = float(rng.uniform(-(w - pw) / 2, (w - pw) / 2))
            z = float(rng.uniform(ph / 2 + 0.3, L[2] - ph / 2 - 0.1))
            centre = np.array([c[0], c[1], 0.0]) + n * 0.01 + along * off + UP * z
            quads.append(_face(centre, n, -UP, pw, ph, p, (pw, ph), f"{name}/poster{k}"))

    # Boxes on the floor, outside the camera region; bottom faces are never seen.
    for k in range(int(rng.integers(3, 8))):
        for _ in range(50):
            size = np.array([rng.uniform(0.3, 1.4), rng.uniform(0.3, 1.4), rng.uniform(0.3, 1.8)])
            centre = np.array([rng.uniform(-hx, hx), rng.uniform(-hy, hy), 0.0])
            if _footprint_ok(centre, float(np.hypot(*size[:2]) / 2), L, region, 0.35):
                break
        else:
            continue
        yaw = rng.uniform(0, np.pi)
        a = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        b = np.cross(UP, a)
        t = pick.any()
        tile = pick.tile(t, 0.4, 1.2)
        mid = centre + UP * size[2] / 2
        # (outward normal, half-depth along it, face width)
        for n, half, w in ((a, size[0] / 2, size[1]), (-a, size[0] / 2, size[1]),
                           (b, size[1] / 2, size[0]), (-b, size[1] / 2, size[0])):
            quads.append(_face(mid + n * half, n, -UP, w, size[2], t, tile, f"box{k}"))
        quads.append(_face(centre + UP * size[2], UP, a, size[1], size[0], t, tile, f"box{k}/top"))

    # Free-standing panels, tilted, visible from both sides.
    for k in range(int(rng.integers(2, 5))):
        for _ in range(50):
            w, h = float(rng.uniform(0.5, 1.8)), float(rng.uniform(0.4, 1.4))
            yaw, tilt = rng.uniform(0, 2 * np.pi), rng.uniform(-0.5, 0.5)
            centre = np.array([rng.uniform(-hx, hx), rng.uniform(-hy, hy), 0.0])
            # Footprint radius: half the width plus how far the tilt leans the panel out.
            if _footprint_ok(centre, w / 2 + h / 2 * abs(np.sin(tilt)), L, region, 0.3):
                break
        else:
            continue
        n = np.array([np.cos(yaw) * np.cos(tilt), np.sin(yaw) * np.cos(tilt), np.sin(tilt)])
        centre[2] = float(rng.uniform(h / 2 + 0.1, L[2] - h / 2 - 0.1))
        for side, tex in ((1.0, pick.any()), (-1.0, pick.any())):
            quads.append(_face(centre + side * 0.005 * n, side * n, -UP, w, h, tex, pick.tile(tex, 0.4, 1.5),
                               f"panel{k}"))
    return Scene(quads, (float(L[0]), float(L[1]), float(L[2])), region, seed, pick.used)


def single_quad_scene(texture: Texture, center: np.ndarray, normal: np.ndarray, width: float, height: float,
                      down: np.ndarray | None = None) -> Scene:
    """A scene of one quad showing ``texture`` once (tests and calibration targets)."""
    down = -UP if down is None else down
    q = _face(np.asarray(center, float), np.asarray(normal, float), np.asarray(down, float), width, height,
              texture, (width, height), "quad")
    big = np.full(3, 1e3)
    return Scene([q], (1e3, 1e3, 1e3), (-big, big), 0, {texture.name})
