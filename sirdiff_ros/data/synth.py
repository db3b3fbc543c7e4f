"""Synthetic multi-view motion-blur data with exact ground truth.

Two entry points, both deterministic for a seed and ROS-free:

* :func:`generate_sequence` - a camera video along a smooth 6-DoF trajectory
  (:mod:`~sirdiff_ros.data.trajectory`) through a random room
  (:mod:`~sirdiff_ros.data.scene`), the input of the online pipeline;
* :func:`sample_view_set` - N sparse, overlapping views of one scene with
  blur that varies per view, the unit of training.

Each yielded :class:`~sirdiff_ros.core.frame.Frame` has ``image`` = the
motion-blurred uint8 RGB exposure, ``pose`` = T_world_cam at mid-exposure,
``stamp_ns`` = the mid-exposure time, ``depth`` = metric z-depth at
mid-exposure, ``frame_id = 'camera_optical'``, and ``extras``:
``sharp`` (uint8 RGB at mid-exposure), ``valid`` (bool mask), ``blur_px``
(mean image motion of scene points over the exposure, pixels),
``exposure_s``, ``subframes``, ``heldout`` (seed split), ``scene_seed``.

Blur is physical: ``subframes`` images rendered at poses spread over the
exposure are averaged in linear light, then Poisson-Gaussian sensor noise is
added and the result is encoded to sRGB. With ``downsample = 4`` the blurred
image (and its intrinsics, depth, mask) are 4x smaller while ``sharp`` stays
full size (its intrinsics in ``extras['sharp_intrinsics']``): the paper's
super-resolution degradation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Callable, Iterator

import cv2
import numpy as np

from ..core.frame import Frame
from ..core.geometry import CameraIntrinsics, Pose, _rotation_exp
from ..core.color import linear_to_srgb, srgb_to_linear
from .render import Renderer, RenderResult
from .scene import PHOTO_SHARE, Scene, build_scene
from .textures import is_heldout_seed
from .trajectory import SmoothTrajectory, TrajectoryConfig, look_rotation

__all__ = [
    "FRAME_ID",
    "PRESETS",
    "SynthConfig",
    "default_intrinsics",
    "render_exposure",
    "add_sensor_noise",
    "blur_extent_px",
    "generate_sequence",
    "sample_view_set",
    "is_heldout_seed",
]

FRAME_ID = "camera_optical"

# Named option sets for generate_sequence / sirdiff-synth --preset.
# "slam": sequences where motion blur, not the scene, decides whether a
# feature-based SLAM system keeps track: 30 fps with a 30 ms exposure (blur
# of a fast pan is ~0.9x its frame-to-frame motion, so the sharp renders stay
# trackable through a pan while the exposures smear by tens of pixels),
# walking-pace translation (1.2 m/s: parallax for a monocular map to start
# and to grow into what a pan brings into view) with a slowly wandering
# heading, no pan in the first second (initialisation), textures repeating
# half as often (identical copies of a texture in view are ambiguous feature
# matches) and photographs on every surface (the held-out procedural
# patterns are smooth and periodic: no monocular map starts in front of them).
PRESETS: dict[str, dict[str, float]] = {
    "slam": {
        "fps": 30.0,
        "exposure_s": 0.03,
        "speed": 1.2,
        "angular_speed": 0.25,
        "burst_rate": 0.3,
        "burst_speed": 4.0,
        "burst_angle": 0.8,
        "burst_start_s": 1.0,
        "tile_scale": 1.5,
        "photo_share": 1.0,
    },
}


@dataclass(frozen=True)
class SynthConfig:
    """Camera, exposure and noise settings shared by both generators.

    ``noise_std``: read-noise standard deviation in linear intensity [0, 1];
    ``shot_noise``: Poisson gain (variance = shot_noise * intensity);
    ``downsample``: 1 (none) or an integer factor such as 4;
    ``texture_size``: long side of photo textures (0 = chosen from the image size);
    ``soften_px``: Gaussian sigma (px) that softens the scene itself, sharp
    render and exposure alike, before sensor noise: a world of smooth textures
    whose sharp frames have soft edges (0 = off);
    ``tile_scale``: multiplies the size at which scene textures repeat;
    ``photo_share``: chance that a room surface or box is textured with a
    photograph rather than a procedural pattern (both: see
    :func:`~sirdiff_ros.data.scene.build_scene`).
    """

    width: int = 640
    height: int = 480
    fps: float = 10.0
    exposure_s: float = 0.03
    subframes: int = 8
    hfov_deg: float = 65.0
    noise_std: float = 0.004
    shot_noise: float = 0.001
    downsample: int = 1
    texture_size: int = 0
    soften_px: float = 0.0
    tile_scale: float = 1.0
    photo_share: float = PHOTO_SHARE
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)

    def __post_init__(self) -> None:
        if self.width < 8 or self.height < 8:
            raise ValueError(f"image size must be at least 8x8, got {self.width}x{self.height}")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be positive, got {self.fps}")
        if not (0 <= self.exposure_s <= 1.0 / self.fps):
            raise ValueError(f"exposure_s must lie in [0, 1/fps = {1.0 / self.fps:.4f}] s, got {self.exposure_s}")
        if self.subframes < 1:
            raise ValueError(f"subframes must be >= 1, got {self.subframes}")
        if not 10.0 <= self.hfov_deg <= 150.0:
            raise ValueError(f"hfov_deg must lie in [10, 150], got {self.hfov_deg}")
        if self.noise_std < 0 or self.shot_noise < 0:
            raise ValueError("noise levels must be non-negative")
        if not (0.0 <= self.soften_px <= 20.0):
            raise ValueError(f"soften_px must lie in [0, 20] px, got {self.soften_px}")
        if not 0.1 <= self.tile_scale <= 20.0:
            raise ValueError(f"tile_scale must lie in [0.1, 20], got {self.tile_scale}")
        if not 0.0 <= self.photo_share <= 1.0:
            raise ValueError(f"photo_share must lie in [0, 1], got {self.photo_share}")
        if self.downsample < 1 or self.width % self.downsample or self.height % self.downsample:
            raise ValueError(f"downsample {self.downsample} must be >= 1 and divide {self.width}x{self.height}")

    @classmethod
    def from_kwargs(cls, **kwargs: object) -> SynthConfig:
        """Build from flat keyword arguments; trajectory fields (speed, ...) are accepted too."""
        own = {f.name for f in fields(cls)}
        traj_names = {f.name for f in fields(TrajectoryConfig)}
        unknown = set(kwargs) - own - traj_names
        if unknown:
            raise TypeError(f"unknown synthetic-data option(s): {', '.join(sorted(unknown))}")
        traj = {k: kwargs.pop(k) for k in list(kwargs) if k in traj_names}
        if traj:
            kwargs["trajectory"] = TrajectoryConfig(**traj)  # type: ignore[arg-type]
        return cls(**kwargs)  # type: ignore[arg-type]

    def intrinsics(self) -> CameraIntrinsics:
        return default_intrinsics(self.width, self.height, self.hfov_deg)

    def resolved_texture_size(self) -> int:
        if self.texture_size > 0:
            return self.texture_size
        # Textures larger than ~the image add nothing after mip selection.
        return int(min(512, max(128, 2 ** math.ceil(math.log2(max(self.width, self.height))))))


def default_intrinsics(width: int, height: int, hfov_deg: float = 65.0) -> CameraIntrinsics:
    """Square-pixel pinhole with horizontal field of view ``hfov_deg``, principal point at the centre."""
    f = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
    return CameraIntrinsics(f, f, (width - 1) / 2, (height - 1) / 2, width, height)


def render_exposure(renderer: Renderer, pose_at: Callable[[float], Pose], exposure_s: float,
                    subframes: int) -> tuple[np.ndarray, RenderResult, list[Pose]]:
    """Blurred linear image of one exposure, the mid-exposure render, and the sub-frame poses.

    ``pose_at(tau)`` gives T_world_cam at ``tau`` seconds from mid-exposure.
    Sub-frames sit at the centres of ``subframes`` equal slices of
    ``[-exposure_s/2, exposure_s/2]``; their linear-light mean is returned as
    float32 (H, W, 3).
    """
    mid_pose = pose_at(0.0)
    mid = renderer.render(mid_pose)
    if exposure_s == 0 or subframes == 1:
        return srgb_to_linear(mid.image), mid, [mid_pose]
    taus = [((k + 0.5) / subframes - 0.5) * exposure_s for k in range(subframes)]
    poses = [pose_at(tau) for tau in taus]
    if all(np.array_equal(p.matrix(), mid_pose.matrix()) for p in poses):
        return srgb_to_linear(mid.image), mid, poses  # the camera did not move: one render is exact
    acc = np.zeros(mid.image.shape, np.float32)
    for tau, p in zip(taus, poses):
        acc += srgb_to_linear(mid.image if tau == 0.0 else renderer.render(p).image)
    acc *= np.float32(1.0 / subframes)
    return acc, mid, poses


def add_sensor_noise(linear: np.ndarray, rng: np.random.Generator, noise_std: float, shot_noise: float) -> np.ndarray:
    """Poisson-Gaussian noise (variance = shot_noise * x + noise_std^2) on a linear image."""
    if noise_std == 0 and shot_noise == 0:
        return linear
    var = np.maximum(linear, 0.0)
    var *= np.float32(shot_noise)
    var += np.float32(noise_std**2)
    # OpenCV's normal generator is ~3x faster than numpy's; its thread-local
    # state is seeded from ``rng`` right before use, so the result is deterministic.
    noise = np.empty(linear.shape, np.float32)
    cv2.setRNGSeed(int(rng.integers(1, 2**31 - 1)))
    cv2.randn(noise.reshape(-1, 1), 0.0, 1.0)  # one channel: a scalar std applies to it
    noise *= np.sqrt(var, out=var)
    noise += linear
    return noise


def blur_extent_px(K: CameraIntrinsics, depth: np.ndarray, mid: Pose, first: Pose, last: Pose) -> float:
    """Mean image displacement (px) of visible points between the first and last sub-frame."""
    step = max(1, min(depth.shape) // 24)
    d = depth[::step, ::step]
    uv = K.pixel_grid(step)[: d.shape[0], : d.shape[1]]
    ok = d > 0
    if not ok.any() or first is last:
        return 0.0
    pw = mid.transform_points(K.unproject(uv[ok], d[ok].astype(np.float64)))
    a, _ = K.project(first.inverse().transform_points(pw))
    b, _ = K.project(last.inverse().transform_points(pw))
    return float(np.linalg.norm(a - b, axis=1).mean())


def _make_frame(cfg: SynthConfig, renderer: Renderer, low: Renderer | None, pose_at: Callable[[float], Pose],
                rng: np.random.Generator, stamp_ns: int, seq: int, seed: int, extras: dict) -> Frame:
    blur_lin, mid, sub_poses = render_exposure(renderer, pose_at, cfg.exposure_s, cfg.subframes)
    sharp = mid.image
    if cfg.soften_px > 0:
        # Gaussian and motion blur commute: softening the finished exposure is
        # the exposure of the softened scene. In linear light, like the exposure.
        blur_lin = cv2.GaussianBlur(blur_lin, (0, 0), cfg.soften_px)
        sharp = linear_to_srgb(cv2.GaussianBlur(srgb_to_linear(sharp), (0, 0), cfg.soften_px))
    K = renderer.K
    blur_px = blur_extent_px(K, mid.depth, pose_at(0.0), sub_poses[0], sub_poses[-1])
    depth, valid = mid.depth, mid.valid
    if low is not None:
        # Super-resolution degradation: area-average light, exact depth from a low-res render.
        blur_lin = cv2.resize(blur_lin, (low.K.width, low.K.height), interpolation=cv2.INTER_AREA)
        lo = low.render(pose_at(0.0))
        depth, valid, K_out = lo.depth, lo.valid, low.K
        blur_px /= cfg.downsample
        extras = {**extras, "sharp_intrinsics": K}
    else:
        K_out = K
    noisy = add_sensor_noise(blur_lin, rng, cfg.noise_std, cfg.shot_noise)
    return Frame(
        image=linear_to_srgb(noisy),
        stamp_ns=stamp_ns,
        intrinsics=K_out,
        pose=pose_at(0.0),
        depth=depth,
        frame_id=FRAME_ID,
        seq=seq,
        extras={
            "sharp": sharp,
            "valid": valid,
            "blur_px": blur_px,
            "exposure_s": cfg.exposure_s,
            "subframes": cfg.subframes,
            "heldout": is_heldout_seed(seed),
            "scene_seed": seed,
            **extras,
        },
    )


def _renderers(cfg: SynthConfig, scene: Scene) -> tuple[Renderer, Renderer | None]:
    K = cfg.intrinsics()
    low = Renderer(scene, K.scaled(1.0 / cfg.downsample)) if cfg.downsample > 1 else None
    return Renderer(scene, K), low


def generate_sequence(seed: int, n_frames: int, width: int = 640, height: int = 480,
                      **options: object) -> Iterator[Frame]:
    """Yield ``n_frames`` blurred frames along a smooth trajectory through the room of ``seed``.

    ``options`` are :class:`SynthConfig` fields (``fps``, ``exposure_s``,
    ``subframes``, ``hfov_deg``, ``noise_std``, ``shot_noise``, ``downsample``,
    ``texture_size``) or :class:`~sirdiff_ros.data.trajectory.TrajectoryConfig`
    fields (``speed``, ``angular_speed``, ``burst_rate``, ``burst_speed``,
    ``burst_angle``, ``burst_start_s``), or ``start_time_s`` (offset of the
    first frame on the trajectory, default 0), or ``preset`` (a name in
    :data:`PRESETS` whose options the explicit ones override). Frame ``i`` is stamped ``(start_time_s + i / fps)``
    seconds, in ns.
    """
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    start = float(options.pop("start_time_s", 0.0))  # type: ignore[arg-type]
    preset = options.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
        options = {**PRESETS[str(preset)], **options}
    cfg = SynthConfig.from_kwargs(width=width, height=height, **options)
    scene = build_scene(seed, cfg.resolved_texture_size(), cfg.tile_scale, cfg.photo_share)
    renderer, low = _renderers(cfg, scene)
    traj = SmoothTrajectory(seed, scene.camera_region, cfg.trajectory, duration_s=start + n_frames / cfg.fps + 1.0)
    for i in range(n_frames):
        t = start + i / cfg.fps
        rng = np.random.default_rng([seed, i, 0xF7A3E])
        yield _make_frame(cfg, renderer, low, lambda tau, t=t: traj.pose(t + tau), rng,
                          int(round(t * 1e9)), i, seed, {})


def _view_poses(scene: Scene, rng: np.random.Generator, n_views: int, baseline: tuple[float, float]) -> list[Pose]:
    """Sparse poses that look at one common scene point from different places."""
    lo, hi = scene.camera_region
    ref_pos = rng.uniform(lo, hi)
    ref_R = look_rotation(rng.uniform(-np.pi, np.pi), rng.uniform(-0.35, 0.25), rng.uniform(-0.1, 0.1))
    # Depth along the optical axis from a tiny render: the point all views share.
    probe = Renderer(scene, default_intrinsics(16, 12)).render(Pose(ref_R, ref_pos))
    d = float(probe.depth[5:7, 7:9].mean()) if probe.valid[5:7, 7:9].all() else 2.0
    target = ref_pos + ref_R[:, 2] * d
    poses = [Pose(ref_R, ref_pos)]
    while len(poses) < n_views:
        direction = rng.normal(size=3) * [1.0, 1.0, 0.4]
        pos = np.clip(ref_pos + direction / np.linalg.norm(direction) * rng.uniform(*baseline), lo, hi)
        fwd = target - pos
        yaw = math.atan2(fwd[1], fwd[0]) + rng.uniform(-0.08, 0.08)
        pitch = math.atan2(fwd[2], math.hypot(fwd[0], fwd[1])) + rng.uniform(-0.06, 0.06)
        poses.append(Pose(look_rotation(yaw, pitch, rng.uniform(-0.12, 0.12)), pos))
    return poses


def sample_view_set(seed: int, n_views: int, width: int = 256, height: int = 192,
                    max_angular_speed: float = 4.0, max_speed: float = 1.5,
                    baseline_m: tuple[float, float] = (0.15, 0.7), **options: object) -> list[Frame]:
    """``n_views`` overlapping views of the scene of ``seed``, each with its own motion blur.

    Views look at one common point from positions ``baseline_m`` apart (min,
    max metres). Per view a blur strength ``s`` in [0, 1] is spread evenly
    over the set (shuffled; so some views are sharp-ish and some strongly
    blurred) and the camera moves during the exposure with angular rate
    ``s * max_angular_speed`` rad/s and speed ``s * max_speed`` m/s in random
    directions. ``extras['blur_strength']`` records ``s``. ``options`` are
    :class:`SynthConfig` fields (``exposure_s``, ``subframes``, noise, ...).
    """
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    cfg = SynthConfig.from_kwargs(width=width, height=height, **options)
    rng = np.random.default_rng([seed, 0x5E7])
    scene = build_scene(seed, cfg.resolved_texture_size(), cfg.tile_scale, cfg.photo_share)
    renderer, low = _renderers(cfg, scene)
    poses = _view_poses(scene, rng, n_views, baseline_m)
    strengths = rng.permutation(np.linspace(0.0, 1.0, n_views) if n_views > 1 else np.array([rng.random()]))
    frames = []
    for i, (mid, s) in enumerate(zip(poses, strengths)):
        axis = rng.normal(size=3) * [1.0, 1.0, 0.3]  # camera frame: mostly pan/tilt, some roll
        omega = axis / np.linalg.norm(axis) * s * max_angular_speed
        v_dir = rng.normal(size=3)
        vel = mid.rotation @ (v_dir / np.linalg.norm(v_dir)) * s * max_speed

        def pose_at(tau: float, mid: Pose = mid, omega: np.ndarray = omega, vel: np.ndarray = vel) -> Pose:
            return Pose(mid.rotation @ _rotation_exp(omega * tau), mid.translation + vel * tau)

        noise_rng = np.random.default_rng([seed, i, 0x9015E])
        frames.append(_make_frame(cfg, renderer, low, pose_at, noise_rng, int(i * 0.5e9), i, seed,
                                  {"blur_strength": float(s)}))
    return frames
