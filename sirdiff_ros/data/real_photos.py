"""Real photographs as scenes: hand-held sequences whose every frame is a real image.

A real photograph (``../shared/data/real_images`` or any folder of images) is
hung as a flat picture in front of a camera that shakes and pans like a hand-held or
robot-mounted one. A plane seen from any pose is an exact homography of the
photo, so every rendered frame is real image content with exact geometry,
and the motion blur is physical: the exposure integrates the *same*
trajectory the pose stream reports, exactly as :mod:`~sirdiff_ros.data.synth`
does for its rooms (linear light, sub-frames, Poisson-Gaussian noise).

Split (fixed before any training): folders of the real-image corpus belong to
``train`` or ``val`` (:data:`REAL_SPLITS`); a folder is never in both, and
stills taken from a video are kept with the video.

Each sequence draws its exposure time (log-uniform in ``exposure_range_s``),
its frame rate (30 Hz, slower for long exposures) and an angular-rate scale
that makes a typical frame blur by ``blur_px_range`` pixels; the shake is a
sum of sinusoids per axis (pan and tilt dominant, some roll), so the blur of
consecutive frames differs in length and direction, and some frames are
sharp (the rate passes through zero) while during fast stretches none are.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..core.frame import Frame
from ..core.geometry import Pose
from .scene import Scene, single_quad_scene
from .synth import SynthConfig, _make_frame, _renderers
from .textures import Texture, TextureError, _pyramid
from .trajectory import look_rotation

__all__ = [
    "REAL_SPLITS",
    "default_real_images_dir",
    "real_photo_paths",
    "image_texture",
    "ShakeConfig",
    "ShakeTrajectory",
    "photo_plane_sequence",
]

# Folder -> split. Decided before training; a folder is in exactly one split.
REAL_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "sam2_bedroom_video",
        "udacity_lane_lines_video",
        "udacity_highway_calibrated/video_frames",
        "udacity_highway_calibrated/stills",
        "rtabmap_stereo_rgbd_pairs",
    ),
    "val": (
        "opensfm_lund_street",
        "rtabmap_hallway_seq",
        "sam2_gallery_videos/stills",
        "opensfm_berlin_cathedral",
    ),
}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# A source frame blurrier than this (sharpness of :func:`sirdiff_ros.core.blur.sharpness`)
# is not a sharp ground truth: the hallway sequence holds real motion-blurred frames.
MIN_SOURCE_SHARPNESS = 2e-3


def default_real_images_dir() -> Path:
    """``$SIRDIFF_REAL_IMAGES``, else ``../shared/data/real_images`` beside the checkout."""
    env = os.environ.get("SIRDIFF_REAL_IMAGES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "real_images"


def real_photo_paths(split: str, root: str | Path | None = None, min_sharpness: float = MIN_SOURCE_SHARPNESS) -> list[Path]:
    """Sorted image files of ``split`` ('train' or 'val') under ``root``, sharp sources only.

    Raises FileNotFoundError when ``root`` does not exist (the corpus is not
    part of a clone; tests skip on it).
    """
    from ..core.blur import sharpness

    if split not in REAL_SPLITS:
        raise ValueError(f"split must be one of {sorted(REAL_SPLITS)}, got {split!r}")
    base = Path(root) if root is not None else default_real_images_dir()
    if not base.is_dir():
        raise FileNotFoundError(f"real image corpus not found at {base}")
    paths: list[Path] = []
    for folder in REAL_SPLITS[split]:
        d = base / folder
        if not d.is_dir():
            continue
        for p in sorted(d.rglob("*")):
            if p.suffix.lower() not in _IMAGE_SUFFIXES or "depth" in p.parts:
                continue
            if "calibration_chessboard" in p.parts:
                continue
            img = cv2.imread(str(p), cv2.IMREAD_REDUCED_COLOR_2)
            if img is None or img.ndim != 3:
                continue
            if sharpness(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)) >= min_sharpness:
                paths.append(p)
    return paths


@lru_cache(maxsize=32)
def image_texture(path: str, width: int, aspect: float = 4 / 3) -> Texture:
    """The photo at ``path`` centre-cropped to ``aspect`` (w/h) and resized to ``width`` px wide."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise TextureError(f"cannot read image {path}")
    h, w = bgr.shape[:2]
    if w / h > aspect:
        cw = int(round(h * aspect))
        bgr = bgr[:, (w - cw) // 2:(w - cw) // 2 + cw]
    else:
        ch = int(round(w / aspect))
        bgr = bgr[(h - ch) // 2:(h - ch) // 2 + ch]
    height = int(round(width / aspect))
    interp = cv2.INTER_AREA if width <= bgr.shape[1] else cv2.INTER_CUBIC
    rgb = cv2.cvtColor(cv2.resize(bgr, (width, height), interpolation=interp), cv2.COLOR_BGR2RGB)
    return Texture(Path(path).name, _pyramid(rgb))


@dataclass(frozen=True)
class ShakeConfig:
    """Per-sequence ranges of :func:`photo_plane_sequence` (drawn from its seed)."""

    exposure_range_s: tuple[float, float] = (0.005, 0.1)
    blur_px_range: tuple[float, float] = (6.0, 40.0)  # typical (RMS-rate) blur of a frame
    max_rate: float = 8.0  # rad/s cap on the RMS angular rate
    coverage: float = 2.0  # photo width / view width at the photo's distance
    distance_m: float = 2.0

    def __post_init__(self) -> None:
        lo, hi = self.exposure_range_s
        if not 0 < lo <= hi <= 0.5:
            raise ValueError(f"exposure_range_s must satisfy 0 < lo <= hi <= 0.5, got {self.exposure_range_s}")
        if not 0 <= self.blur_px_range[0] <= self.blur_px_range[1]:
            raise ValueError(f"bad blur_px_range {self.blur_px_range}")
        if self.coverage < 1.1 or self.distance_m <= 0 or self.max_rate <= 0:
            raise ValueError("coverage must be >= 1.1, distance_m and max_rate positive")


class ShakeTrajectory:
    """Hand-held rotation: yaw / pitch / roll as sums of slow sinusoids around a fixed look direction.

    ``rms_rate`` (rad/s) is the RMS angular rate; frequencies stay at or
    below ``max_hz`` (a camera's poses sample its motion: a real pan changes
    its rate smoothly from frame to frame), and amplitudes are capped at
    ``max_angle`` (rad) per axis, by lowering the rate where needed. A few
    millimetres of translation ride along.
    """

    def __init__(self, seed: int, rms_rate: float, max_angle: tuple[float, float, float], max_hz: float = 1.5) -> None:
        rng = np.random.default_rng([seed, 0x5A4E])
        self._f = rng.uniform(0.1, max(0.15, max_hz), size=(3, 3))  # (axis, k) Hz
        self._p = rng.uniform(0, 2 * np.pi, size=(3, 3))
        shares = np.array([0.55, 0.35, 0.10])  # of the squared rate: pan, tilt, roll
        w = rng.uniform(0.2, 1.0, size=(3, 3))
        w = w / np.sqrt((w**2).sum(axis=1, keepdims=True))
        rate_amp = rms_rate * np.sqrt(2 * shares)[:, None] * w  # per-sinusoid peak rate
        amp = rate_amp / (2 * np.pi * self._f)
        self._a = np.minimum(amp, np.asarray(max_angle)[:, None] / 3.0)
        self._tf = rng.uniform(0.2, 1.0, size=3)
        self._tp = rng.uniform(0, 2 * np.pi, size=3)

    def pose(self, t: float) -> Pose:
        yaw, pitch, roll = (self._a * np.sin(2 * np.pi * self._f * t + self._p)).sum(axis=1)
        position = 0.004 * np.sin(2 * np.pi * self._tf * t + self._tp)
        return Pose(look_rotation(float(yaw), float(pitch), float(roll)), position)


def _plane_scene(path: str | Path, cfg: SynthConfig, shake: ShakeConfig) -> tuple[Scene, tuple[float, float, float]]:
    """The photo as a quad filling ``coverage`` x the view, and the pan / tilt / roll limits keeping it in view."""
    K = cfg.intrinsics()
    half_w = cfg.width / 2 / K.fx  # tan of the half field of view
    half_h = cfg.height / 2 / K.fy
    d = shake.distance_m
    quad_w = 2 * half_w * d * shake.coverage
    quad_h = quad_w * 3 / 4
    # Photo texels: about one per image pixel at the photo's distance (the sharp truth stays sharp).
    tex = image_texture(str(path), int(round(cfg.width * shake.coverage / 32)) * 32)
    scene = single_quad_scene(tex, np.array([d, 0.0, 0.0]), np.array([-1.0, 0.0, 0.0]), quad_w, quad_h)
    yaw_max = math.atan(quad_w / 2 / d) - math.atan(half_w)
    pitch_max = math.atan(quad_h / 2 / d) - math.atan(half_h)
    return scene, (0.9 * yaw_max, 0.9 * max(pitch_max, 0.01), 0.06)


def photo_plane_sequence(path: str | Path, seed: int, n_frames: int, width: int = 640, height: int = 480,
                         shake: ShakeConfig | None = None, **options: object) -> Iterator[Frame]:
    """Yield ``n_frames`` physically blurred frames of the photo at ``path`` (deterministic for ``seed``).

    ``options`` are :class:`~sirdiff_ros.data.synth.SynthConfig` fields;
    ``exposure_s`` and ``fps`` are drawn per sequence unless given. Frames
    carry the extras of :mod:`~sirdiff_ros.data.synth` plus ``source``
    (the photo's path) and ``rms_rate``.
    """
    shake = shake or ShakeConfig()
    rng = np.random.default_rng([seed, 0x9E41])
    lo, hi = shake.exposure_range_s
    exposure = float(options.pop("exposure_s", math.exp(rng.uniform(math.log(lo), math.log(hi)))))  # type: ignore[arg-type]
    fps = float(options.pop("fps", min(30.0, 0.9 / exposure) if exposure > 0 else 30.0))  # type: ignore[arg-type]
    subframes = int(options.pop("subframes", 24))  # type: ignore[arg-type]
    cfg = SynthConfig.from_kwargs(width=width, height=height, exposure_s=exposure, fps=fps,
                                  subframes=subframes, **options)
    scene, limits = _plane_scene(path, cfg, shake)
    K = cfg.intrinsics()
    blur = rng.uniform(*shake.blur_px_range)
    rate = min(shake.max_rate, blur / max(exposure * K.fx, 1e-9))
    traj = ShakeTrajectory(seed, rate, limits, max_hz=cfg.fps / 20)
    renderer, low = _renderers(cfg, scene)
    t0 = float(rng.uniform(0, 10))
    for i in range(n_frames):
        t = t0 + i / cfg.fps
        noise = np.random.default_rng([seed, i, 0xF7A3E])
        yield _make_frame(cfg, renderer, low, lambda tau, t=t: traj.pose(t + tau), noise,
                          int(round(t * 1e9)), i, seed, {"source": str(path), "rms_rate": rate})
