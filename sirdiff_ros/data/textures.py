"""Textures for synthetic scenes, and the train / held-out split convention.

Two sources, both available offline:

* real photographs shipped inside scikit-image's ``data`` folder (read with
  OpenCV from the installed package; nothing is downloaded), and
* procedural families (checker, stripes, fractal noise, bricks, dots, marble,
  plaid) with colours and scales drawn per seed.

Split convention (the evaluation never sees what training saw):

* seeds ``>= HELDOUT_SEED_START`` are *held-out* seeds; smaller non-negative
  seeds are *training* seeds (:func:`is_heldout_seed`);
* a held-out seed's scene uses **only** ``HELDOUT_PHOTOS`` and
  ``HELDOUT_PROCEDURAL`` textures, a training seed's scene **only** the
  ``TRAIN_*`` ones. The scene generator enforces this (see
  :func:`texture_pool`); the two lists are disjoint.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "HELDOUT_SEED_START",
    "TRAIN_PHOTOS",
    "HELDOUT_PHOTOS",
    "TRAIN_PROCEDURAL",
    "HELDOUT_PROCEDURAL",
    "Texture",
    "TextureError",
    "is_heldout_seed",
    "training_seeds",
    "heldout_seeds",
    "texture_pool",
    "photo_texture",
    "procedural_texture",
    "skimage_data_dir",
]

HELDOUT_SEED_START = 1_000_000

# File names in skimage/data. motorcycle_right is left out on purpose: it is
# the stereo twin of motorcycle_left and would leak across the split.
TRAIN_PHOTOS: tuple[str, ...] = (
    "astronaut.png",
    "coffee.png",
    "brick.png",
    "grass.png",
    "camera.png",
    "coins.png",
    "moon.png",
    "text.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
    "motorcycle_left.png",
    "cell.png",
)
HELDOUT_PHOTOS: tuple[str, ...] = ("chelsea.png", "rocket.jpg", "gravel.png", "page.png")

TRAIN_PROCEDURAL: tuple[str, ...] = ("checker", "stripes", "noise", "bricks", "dots")
HELDOUT_PROCEDURAL: tuple[str, ...] = ("marble", "plaid")


class TextureError(RuntimeError):
    """A texture that cannot be built (missing photo file, unknown family)."""


def is_heldout_seed(seed: int) -> bool:
    """True for seeds reserved for evaluation (``seed >= HELDOUT_SEED_START``)."""
    if seed < 0:
        raise ValueError(f"seeds are non-negative integers, got {seed}")
    return seed >= HELDOUT_SEED_START


def training_seeds(count: int, start: int = 0) -> range:
    """``count`` consecutive training seeds from ``start``; never reaches the held-out range."""
    if start < 0 or start + count > HELDOUT_SEED_START:
        raise ValueError(f"training seeds must lie in [0, {HELDOUT_SEED_START}), got [{start}, {start + count})")
    return range(start, start + count)


def heldout_seeds(count: int, start: int = 0) -> range:
    """``count`` held-out seeds: ``HELDOUT_SEED_START + start`` onwards."""
    if start < 0 or count < 0:
        raise ValueError("start and count must be non-negative")
    return range(HELDOUT_SEED_START + start, HELDOUT_SEED_START + start + count)


def texture_pool(seed: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(photos, procedural families) a scene of ``seed`` may use."""
    if is_heldout_seed(seed):
        return HELDOUT_PHOTOS, HELDOUT_PROCEDURAL
    return TRAIN_PHOTOS, TRAIN_PROCEDURAL


@dataclass(frozen=True)
class Texture:
    """An sRGB uint8 texture with its mip pyramid (level 0 = full size)."""

    name: str
    levels: tuple[np.ndarray, ...]  # each (h, w, 3) uint8, halving in size

    @property
    def width(self) -> int:
        return int(self.levels[0].shape[1])

    @property
    def height(self) -> int:
        return int(self.levels[0].shape[0])


def _pyramid(image: np.ndarray, min_size: int = 8) -> tuple[np.ndarray, ...]:
    """Mip levels by exact 2x2 area halving (after a light blur against aliasing).

    Area halving keeps texel centres where the renderer's mapping expects them
    (level-L texel i is centred on level-0 coordinate 2^L (i + 0.5) - 0.5);
    ``cv2.pyrDown`` centres its kernel on even pixels and would shift each
    level by half a texel. Halving stops at an odd side.
    """
    levels = [np.ascontiguousarray(image)]
    while True:
        h, w = levels[-1].shape[:2]
        if min(h, w) < 2 * min_size or h % 2 or w % 2:
            break
        soft = cv2.GaussianBlur(levels[-1], (0, 0), 0.5)
        levels.append(cv2.resize(soft, (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    for lv in levels:
        lv.setflags(write=False)
    return tuple(levels)


def skimage_data_dir() -> Path:
    """scikit-image's bundled ``data`` folder (located without importing skimage.data)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise TextureError("scikit-image is not installed: its bundled photographs are the synthetic textures")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@lru_cache(maxsize=64)
def photo_texture(name: str, max_size: int = 512) -> Texture:
    """A bundled photograph as a texture, its long side resized to at most ``max_size``."""
    if name not in TRAIN_PHOTOS + HELDOUT_PHOTOS:
        raise TextureError(f"unknown photo texture {name!r}")
    path = skimage_data_dir() / name
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise TextureError(f"cannot read bundled photograph {path}")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    # Long side at most max_size, both sides multiples of 32 so 5 mip levels halve exactly.
    scale = min(1.0, max_size / max(rgb.shape[:2]))
    h, w = (max(32, int(round(d * scale / 32)) * 32) for d in rgb.shape[:2])
    rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    return Texture(name, _pyramid(rgb))


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random distinct-ish sRGB colours, float32 in [0, 255]."""
    base = rng.uniform(20, 235, size=(n, 3))
    return base.astype(np.float32)


def _fractal_noise(rng: np.random.Generator, size: int, octaves: int = 5) -> np.ndarray:
    """Tileable value noise in [0, 1], (size, size) float32."""
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = 4 * 2**o
        if cells > size:
            break
        grid = rng.random((cells, cells)).astype(np.float32)
        # Wrap-pad so the upsampled noise tiles seamlessly.
        grid = np.pad(grid, 1, mode="wrap")
        up = cv2.resize(grid, (size + 2 * size // cells, size + 2 * size // cells), interpolation=cv2.INTER_CUBIC)
        off = size // cells
        out += amp * up[off : off + size, off : off + size]
        total += amp
        amp *= 0.55
    out /= total
    return (out - out.min()) / max(float(out.max() - out.min()), 1e-6)


def procedural_texture(family: str, rng: np.random.Generator, size: int = 256) -> Texture:
    """A procedural texture of ``family`` with colours and scale drawn from ``rng``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if family == "checker":
        n = int(rng.integers(2, 9))
        c = _palette(rng, 2)
        sel = ((xx * n // size).astype(int) + (yy * n // size).astype(int)) % 2
        img = c[sel]
    elif family == "stripes":
        n = int(rng.integers(3, 16))
        c = _palette(rng, 3)
        sel = (xx * n // size).astype(int) % 3
        img = c[sel]
    elif family == "noise":
        c = _palette(rng, 2)
        t = _fractal_noise(rng, size)[..., None]
        img = c[0] * (1 - t) + c[1] * t
    elif family == "bricks":
        rows = int(rng.integers(4, 12))
        bh = size / rows
        c = _palette(rng, 2)
        row = (yy // bh).astype(int)
        xs = xx + (row % 2) * (size / 4)
        mortar = ((yy % bh) < 0.12 * bh) | ((xs % (size / 2)) < 0.06 * size)
        shade = _fractal_noise(rng, size, 4)[..., None] * 0.4 + 0.8
        img = np.where(mortar[..., None], c[1], c[0] * shade)
    elif family == "dots":
        n = int(rng.integers(3, 10))
        c = _palette(rng, 2)
        cell = size / n
        d = np.hypot((xx % cell) - cell / 2, (yy % cell) - cell / 2)
        img = np.where((d < cell * rng.uniform(0.15, 0.4))[..., None], c[1], c[0])
    elif family == "marble":
        c = _palette(rng, 2)
        warp = _fractal_noise(rng, size)
        k = int(rng.integers(2, 7))
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (k * xx / size + 3.0 * warp))
        img = c[0] * (1 - t[..., None]) + c[1] * t[..., None]
    elif family == "plaid":
        c = _palette(rng, 3)
        n = int(rng.integers(3, 10))
        a = 0.5 + 0.5 * np.sin(2 * np.pi * n * xx / size)
        b = 0.5 + 0.5 * np.sin(2 * np.pi * n * yy / size)
        img = c[0] * (a * b)[..., None] + c[1] * (a * (1 - b))[..., None] + c[2] * (1 - a)[..., None]
    else:
        raise TextureError(f"unknown procedural texture family {family!r}")
    img = np.clip(img, 0, 255).astype(np.uint8)
    return Texture(f"{family}", _pyramid(img))
