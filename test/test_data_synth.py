"""Synthetic generator: geometry exactness, physical blur, determinism, split."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from sirdiff_ros.core.geometry import Pose, _rotation_exp
from sirdiff_ros.core.color import linear_to_srgb, srgb_to_linear
from sirdiff_ros.data.render import Renderer
from sirdiff_ros.data.scene import Scene, build_scene, single_quad_scene, _face
from sirdiff_ros.data.synth import (
    SynthConfig,
    default_intrinsics,
    generate_sequence,
    render_exposure,
    sample_view_set,
)
from sirdiff_ros.data.textures import (
    HELDOUT_PHOTOS,
    HELDOUT_PROCEDURAL,
    HELDOUT_SEED_START,
    TRAIN_PHOTOS,
    TRAIN_PROCEDURAL,
    Texture,
    _pyramid,
    heldout_seeds,
    is_heldout_seed,
    procedural_texture,
    training_seeds,
)
from sirdiff_ros.data.trajectory import look_rotation

QUIET = dict(noise_std=0.0, shot_noise=0.0)


def _blob_texture(size: int, s0: float, t0: float, sigma: float) -> Texture:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    g = np.exp(-((xx - s0) ** 2 + (yy - t0) ** 2) / (2 * sigma**2))
    img = np.repeat((20 + 235 * g)[..., None], 3, axis=2).round().astype(np.uint8)
    return Texture("blob", _pyramid(img))


def _grad_energy(img: np.ndarray, mask: np.ndarray | None = None) -> float:
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1)
    e = gx**2 + gy**2
    return float(e[mask].mean() if mask is not None else e.mean())


# ------------------------------------------------------------------ geometry


@pytest.mark.parametrize("tilt", [0.0, 0.6])
@pytest.mark.parametrize("width", [60, 100, 200])  # mip levels 2, 1 and 0 of the texture
def test_scene_point_projects_onto_its_rendered_pixel_subpixel(tilt: float, width: int) -> None:
    size, s0, t0 = 128, 70.0, 45.0
    tex = _blob_texture(size, s0, t0, sigma=2.5)
    normal = np.array([-math.cos(tilt), math.sin(tilt), 0.3])  # facing the camera, oblique
    scene = single_quad_scene(tex, center=np.array([3.0, 0.2, 1.1]), normal=normal, width=1.6, height=1.6)
    K = default_intrinsics(width, width * 3 // 4, 60.0)
    pose = Pose(look_rotation(0.05, 0.02, 0.1), np.array([0.0, 0.0, 1.0]))
    res = Renderer(scene, K).render(pose)
    q = scene.quads[0]
    world = q.point((s0 + 0.5) / size, (t0 + 0.5) / size)  # texel centre convention
    (u, v), z = K.project(pose.inverse().transform_points(world))
    ui, vi, r = int(round(u)), int(round(v)), max(4, width // 25)
    win = res.image[vi - r : vi + r + 1, ui - r : ui + r + 1, 0].astype(np.float64) - 20.0
    win = np.clip(win, 0, None)
    yy, xx = np.mgrid[vi - r : vi + r + 1, ui - r : ui + r + 1]
    cu, cv_ = (win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()
    assert math.hypot(cu - u, cv_ - v) < 0.12
    z_pix, _ = _ray_cast(scene, pose, K, np.array([[ui, vi]], float))
    assert res.depth[vi, ui] == pytest.approx(z_pix[0], rel=1e-5)


def _ray_cast(scene: Scene, pose: Pose, K, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest front-facing quad hit (z-depth, id) per pixel by analytic ray casting."""
    rays_c = K.unproject(uv, np.ones(len(uv)))  # z = 1 rays
    rays_w = rays_c @ pose.rotation.T
    best_z = np.full(len(uv), np.inf)
    best_id = np.full(len(uv), -1)
    o = pose.translation
    for i, q in enumerate(scene.quads):
        n = q.normal
        if np.dot(n, o - q.origin) <= 0:
            continue
        denom = rays_w @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (q.origin - o) @ n / denom
        hit = o + rays_w * z[:, None]
        ab = (hit - q.origin) @ np.linalg.pinv(np.column_stack([q.edge_u, q.edge_v])).T
        inside = (z > 0.05) & np.all((ab >= 0) & (ab <= 1), axis=1)
        closer = inside & (z < best_z)
        best_z[closer], best_id[closer] = z[closer], i
    return best_z, best_id


def test_depth_and_zbuffer_match_analytic_ray_casting() -> None:
    scene = build_scene(21, 128)
    K = default_intrinsics(160, 120)
    rng = np.random.default_rng(0)
    lo, hi = scene.camera_region
    for _ in range(3):
        pose = Pose(look_rotation(rng.uniform(-3, 3), rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.2)),
                    rng.uniform(lo, hi))
        res = Renderer(scene, K).render(pose)
        assert res.valid.all()  # a closed room covers every pixel
        uv = np.stack([rng.integers(0, 160, 600), rng.integers(0, 120, 600)], axis=1).astype(np.float64)
        z, ids = _ray_cast(scene, pose, K, uv)
        got_id = res.quad_id[uv[:, 1].astype(int), uv[:, 0].astype(int)]
        got_z = res.depth[uv[:, 1].astype(int), uv[:, 0].astype(int)]
        same = got_id == ids
        assert same.mean() > 0.97  # polygon edges may round to the neighbour
        np.testing.assert_allclose(got_z[same], z[same], rtol=1e-4)


def test_two_views_agree_after_reprojection() -> None:
    frames = sample_view_set(5, 2, 160, 120, max_angular_speed=0.0, max_speed=0.0, **QUIET)
    a, b = frames
    K = a.intrinsics
    uv = K.pixel_grid(2)
    d = a.depth[::2, ::2]
    pts = a.pose.transform_points(K.unproject(uv, d.astype(np.float64)))
    uvb, zb = K.project(b.pose.inverse().transform_points(pts))
    inside = K.in_image(uvb, margin=1.0) & (zb > 0)
    mapx = uvb[..., 0].astype(np.float32)
    mapy = uvb[..., 1].astype(np.float32)
    # Inverse depth is affine in the pixel on a plane: bilinear sampling of it is exact inside a surface.
    with np.errstate(divide="ignore"):
        depth_b = 1.0 / cv2.remap(1.0 / b.depth, mapx, mapy, cv2.INTER_LINEAR)
    visible = inside & (np.abs(depth_b - zb) < 0.01 * zb)  # not occluded in b
    assert visible.mean() > 0.3  # the views overlap
    # Geometry: the reprojected point lands where b sees that same depth.
    assert np.median(np.abs(depth_b - zb)[visible] / zb[visible]) < 1e-5
    # Appearance: colours agree (bilinear resampling and mip levels differ a little).
    col_b = cv2.remap(b.extras["sharp"], mapx, mapy, cv2.INTER_LINEAR).astype(np.float32)
    col_a = a.extras["sharp"][::2, ::2].astype(np.float32)
    diff = np.abs(col_a - col_b)[visible].mean()
    rand = np.abs(col_a - np.roll(col_b, 7, axis=1))[visible].mean()
    assert diff < 12 and diff < 0.5 * rand


# ------------------------------------------------------------------ blur


def test_zero_exposure_gives_sharp_image_exactly() -> None:
    for f in generate_sequence(3, 2, 96, 72, exposure_s=0.0, **QUIET):
        assert np.array_equal(f.image, f.extras["sharp"])
        assert f.extras["blur_px"] == 0.0
    for f in sample_view_set(3, 2, 96, 72, exposure_s=0.0, **QUIET):
        assert np.array_equal(f.image, f.extras["sharp"])


def _rotation_blur(omega: float, exposure: float) -> tuple[float, float]:
    scene = build_scene(8, 128)
    K = default_intrinsics(128, 96)
    mid = Pose(look_rotation(0.7, 0.0, 0.0), (scene.camera_region[0] + scene.camera_region[1]) / 2)
    r = Renderer(scene, K)
    axis = np.array([0.3, 1.0, 0.1]) / np.linalg.norm([0.3, 1.0, 0.1])
    lin, sharp, _ = render_exposure(r, lambda tau: mid @ Pose(_rotation_exp(axis * omega * tau), np.zeros(3)),
                                    exposure, 8)
    blurred = linear_to_srgb(lin)
    return _grad_energy(blurred) / _grad_energy(sharp.image), float(np.abs(blurred.astype(int) - sharp.image).mean())


def test_blur_grows_with_angular_speed_and_exposure() -> None:
    by_speed = [_rotation_blur(w, 0.03) for w in (0.3, 1.0, 3.0)]
    by_exposure = [_rotation_blur(1.5, e) for e in (0.005, 0.015, 0.04)]
    for series in (by_speed, by_exposure):
        ratios = [s[0] for s in series]
        diffs = [s[1] for s in series]
        assert ratios[0] > ratios[1] > ratios[2]  # detail lost grows
        assert diffs[0] < diffs[1] < diffs[2]
    # The per-frame blur record follows the trajectory's angular speed too.
    slow = [f.extras["blur_px"] for f in generate_sequence(4, 4, 96, 72, angular_speed=0.2, burst_rate=0.0,
                                                           speed=0.1, **QUIET)]
    fast = [f.extras["blur_px"] for f in generate_sequence(4, 4, 96, 72, angular_speed=2.0, burst_rate=0.0,
                                                           speed=0.1, **QUIET)]
    assert np.mean(fast) > 3 * np.mean(slow)


def test_near_objects_blur_more_than_far_under_translation() -> None:
    tex = procedural_texture("noise", np.random.default_rng(3), 128)
    near = _face(np.array([-0.25, 0.0, 1.0]), np.array([0.0, 0.0, -1.0]), np.array([0.0, 1.0, 0.0]), 0.5, 0.5,
                 tex, (0.1, 0.1), "near")
    far = _face(np.array([1.0, 0.0, 4.0]), np.array([0.0, 0.0, -1.0]), np.array([0.0, 1.0, 0.0]), 2.0, 2.0,
                tex, (0.4, 0.4), "far")
    big = np.full(3, 100.0)
    scene = Scene([near, far], (100, 100, 100), (-big, big))
    K = default_intrinsics(160, 120, 70.0)
    # Camera at the origin looking along +z (world = camera axes), moving sideways at 2 m/s:
    # ~7 px of blur at 1 m, ~2 px at 4 m.
    lin, sharp, _ = render_exposure(Renderer(scene, K), lambda tau: Pose(np.eye(3), np.array([2 * tau, 0.0, 0.0])),
                                    0.03, 8)
    blurred = linear_to_srgb(lin)
    ids = sharp.quad_id
    core_near = cv2.erode((ids == 0).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    core_far = cv2.erode((ids == 1).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert core_near.sum() > 200 and core_far.sum() > 200
    # Same texture density on screen (tile scales with depth), so detail loss compares blur.
    loss_near = _grad_energy(blurred, core_near) / _grad_energy(sharp.image, core_near)
    loss_far = _grad_energy(blurred, core_far) / _grad_energy(sharp.image, core_far)
    assert loss_near < 0.7 * loss_far


# ------------------------------------------------------------------ records, determinism, split


def test_sequence_frames_follow_the_contract() -> None:
    frames = list(generate_sequence(9, 3, 96, 72, fps=20.0, exposure_s=0.02))
    assert [f.stamp_ns for f in frames] == [0, 50_000_000, 100_000_000]
    for f in frames:
        assert f.image.shape == (72, 96, 3) and f.image.dtype == np.uint8
        assert f.extras["sharp"].shape == f.image.shape
        assert f.depth.dtype == np.float32 and (f.depth[f.extras["valid"]] > 0).all()
        assert f.frame_id == "camera_optical" and f.pose is not None
    assert frames[0].pose.distance_to(frames[2].pose) > 0


def test_downsample_gives_low_res_input_with_full_res_ground_truth() -> None:
    (f,) = sample_view_set(2, 1, 128, 96, downsample=4)
    assert f.image.shape == (24, 32, 3) and f.depth.shape == (24, 32)
    assert f.extras["sharp"].shape == (96, 128, 3)
    assert f.intrinsics == f.extras["sharp_intrinsics"].scaled(0.25)


def test_generation_is_deterministic_per_seed() -> None:
    a = list(generate_sequence(12, 2, 80, 60))
    b = list(generate_sequence(12, 2, 80, 60))
    c = list(generate_sequence(13, 2, 80, 60))
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.depth, y.depth)
        assert np.array_equal(x.pose.matrix(), y.pose.matrix())
    assert not np.array_equal(a[0].extras["sharp"], c[0].extras["sharp"])
    v1 = sample_view_set(12, 3, 64, 48)
    v2 = sample_view_set(12, 3, 64, 48)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(v1, v2))


def test_view_set_blur_varies_per_view() -> None:
    views = sample_view_set(31, 4, 96, 72, **QUIET)
    strengths = sorted(f.extras["blur_strength"] for f in views)
    assert strengths[0] == 0.0 and strengths[-1] == 1.0
    by_strength = sorted(views, key=lambda f: f.extras["blur_strength"])
    assert by_strength[0].extras["blur_px"] < 0.5 < by_strength[-1].extras["blur_px"]
    assert len({f.stamp_ns for f in views}) == 4


def test_heldout_split_never_overlaps_training() -> None:
    assert not set(TRAIN_PHOTOS) & set(HELDOUT_PHOTOS)
    assert not set(TRAIN_PROCEDURAL) & set(HELDOUT_PROCEDURAL)
    assert not set(training_seeds(50)) & set(heldout_seeds(50))
    assert max(training_seeds(10, HELDOUT_SEED_START - 10)) == HELDOUT_SEED_START - 1
    with pytest.raises(ValueError):
        training_seeds(11, HELDOUT_SEED_START - 10)
    with pytest.raises(ValueError):
        is_heldout_seed(-1)
    train_allowed = set(TRAIN_PHOTOS) | set(TRAIN_PROCEDURAL)
    held_allowed = set(HELDOUT_PHOTOS) | set(HELDOUT_PROCEDURAL)
    for seed in list(training_seeds(25)) + [HELDOUT_SEED_START - 1]:
        assert build_scene(seed, 64).texture_names <= train_allowed
    seen_held: set[str] = set()
    for seed in heldout_seeds(25):
        names = build_scene(seed, 64).texture_names
        assert names <= held_allowed
        seen_held |= names
    assert seen_held & set(HELDOUT_PHOTOS)  # held-out scenes really use the reserved photos
    (f,) = sample_view_set(HELDOUT_SEED_START + 3, 1, 32, 24)
    assert f.extras["heldout"] is True


def test_a_softened_scene_softens_sharp_and_blurred_frames_alike() -> None:
    plain = list(generate_sequence(14, 2, 96, 72, **QUIET))
    soft = list(generate_sequence(14, 2, 96, 72, soften_px=1.5, **QUIET))
    for p, s in zip(plain, soft):
        # The same camera and scene, seen softer: the ground truth is the Gaussian of the plain one (in linear light).
        want = linear_to_srgb(cv2.GaussianBlur(srgb_to_linear(p.extras["sharp"]), (0, 0), 1.5))
        assert np.abs(s.extras["sharp"].astype(int) - want).max() <= 1
        assert _grad_energy(s.extras["sharp"]) < 0.6 * _grad_energy(p.extras["sharp"])
        assert _grad_energy(s.image) < _grad_energy(p.image)
        assert np.array_equal(s.pose.matrix(), p.pose.matrix()) and s.extras["blur_px"] == p.extras["blur_px"]
    with pytest.raises(ValueError, match="soften_px"):
        SynthConfig(soften_px=-1.0)


def test_bad_options_are_rejected_with_clear_errors() -> None:
    with pytest.raises(ValueError, match="exposure_s"):
        SynthConfig(fps=30.0, exposure_s=0.05)
    with pytest.raises(ValueError, match="downsample"):
        SynthConfig(width=130, height=96, downsample=4)
    with pytest.raises(TypeError, match="unknown synthetic-data option"):
        list(generate_sequence(0, 1, 32, 24, exposure=0.01))
    with pytest.raises(ValueError, match="speed"):
        list(generate_sequence(0, 1, 32, 24, speed=-1.0))


def test_look_rotation_angles_mean_what_they_say() -> None:
    fwd = lambda R: R[:, 2]  # noqa: E731
    np.testing.assert_allclose(fwd(look_rotation(0.0, 0.0, 0.0)), [1, 0, 0], atol=1e-12)  # yaw 0: world +x
    np.testing.assert_allclose(fwd(look_rotation(math.pi / 2, 0.0, 0.0)), [0, 1, 0], atol=1e-12)  # yaw left
    assert fwd(look_rotation(0.0, 0.3, 0.0))[2] == pytest.approx(math.sin(0.3))  # pitch up
    R = look_rotation(0.4, -0.2, 0.0)
    assert R[:, 0][2] == pytest.approx(0.0, abs=1e-12)  # no roll: the right axis stays horizontal
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)


def test_camera_region_is_free_of_objects() -> None:
    grid = np.linspace(0.0, 1.0, 21)
    room = ("floor", "ceiling", "wall")
    for seed in range(12):
        scene = build_scene(seed, 64)
        lo, hi = scene.camera_region
        objects = [q for q in scene.quads if not q.name.startswith(room)]
        assert len(objects) >= 10  # boxes and panels were placed
        for q in objects:
            pts = np.array([q.point(a, b) for a in grid for b in grid])
            inside = np.all((pts > lo - 0.1) & (pts < hi + 0.1), axis=1)
            assert not inside.any(), f"seed {seed}: {q.name} reaches into the camera region"


def test_trajectory_speeds_follow_the_configuration() -> None:
    from sirdiff_ros.data.trajectory import SmoothTrajectory, TrajectoryConfig

    region = (np.array([-1.5, -1.0, 1.0]), np.array([1.5, 1.0, 1.8]))
    dt = 0.01
    ts = np.arange(0, 60, dt)

    def rates(cfg: TrajectoryConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        traj = SmoothTrajectory(3, region, cfg, duration_s=60)
        poses = [traj.pose(t) for t in ts]
        pos = np.array([p.translation for p in poses])
        lin = np.linalg.norm(np.diff(pos, axis=0), axis=1) / dt
        ang = np.array([a.rotation_angle_to(b) for a, b in zip(poses[:-1], poses[1:])]) / dt
        return pos, lin, ang

    pos, lin, ang = rates(TrajectoryConfig(speed=0.8, angular_speed=0.5, burst_rate=0.0))
    assert np.all((pos >= region[0] - 1e-9) & (pos <= region[1] + 1e-9))
    assert lin.mean() == pytest.approx(0.8, rel=0.15)
    assert math.sqrt(np.mean(ang**2)) == pytest.approx(0.5, rel=0.25)
    _, _, ang_burst = rates(TrajectoryConfig(speed=0.8, angular_speed=0.1, burst_rate=0.5, burst_speed=3.0))
    assert ang_burst.max() == pytest.approx(3.0, rel=0.2)  # bursts peak at burst_speed
    assert np.median(ang_burst) < 0.5  # and stay sparse: most of the time the camera turns slowly


def test_no_pan_starts_before_burst_start() -> None:
    from sirdiff_ros.data.trajectory import SmoothTrajectory, TrajectoryConfig

    region = (np.array([-1.5, -1.0, 1.0]), np.array([1.5, 1.0, 1.8]))
    dt = 0.01
    calm = TrajectoryConfig(angular_speed=0.1, burst_rate=2.0, burst_speed=3.0, burst_start_s=5.0)
    traj = SmoothTrajectory(4, region, calm, duration_s=20)
    poses = [traj.pose(t) for t in np.arange(0, 20, dt)]
    ang = np.array([a.rotation_angle_to(b) for a, b in zip(poses[:-1], poses[1:])]) / dt
    assert ang[: int(5.0 / dt)].max() < 0.5  # the wandering heading only
    assert ang[int(5.0 / dt):].max() == pytest.approx(3.0, rel=0.2)  # then pans at burst_speed
    # The default (0 s) leaves the trajectory exactly as it was without the option.
    a = SmoothTrajectory(4, region, TrajectoryConfig(burst_rate=2.0), duration_s=20)
    b = SmoothTrajectory(4, region, TrajectoryConfig(burst_rate=2.0, burst_start_s=0.0), duration_s=20)
    assert np.array_equal(a.pose(7.3).matrix(), b.pose(7.3).matrix())


def test_tile_scale_repeats_textures_less_often() -> None:
    base = build_scene(1_000_003, 128)
    large = build_scene(1_000_003, 128, tile_scale=2.0)
    assert [q.name for q in base.quads] == [q.name for q in large.quads]
    for q0, q1 in zip(base.quads, large.quads):
        ratio = 1.0 if "poster" in q0.name else 2.0  # a poster shows its photo once, whatever the scale
        assert q1.tile_m == pytest.approx((q0.tile_m[0] * ratio, q0.tile_m[1] * ratio))
    with pytest.raises(ValueError, match="tile_scale"):
        build_scene(1, 128, tile_scale=0.0)


def test_photo_share_chooses_photographs_or_procedural_patterns() -> None:
    seeds = [HELDOUT_SEED_START + k for k in range(8)]
    procedural = set(HELDOUT_PROCEDURAL)
    assert any(build_scene(s, 64).texture_names & procedural for s in seeds)  # the default mixes both
    for s in seeds:
        assert not build_scene(s, 64, photo_share=1.0).texture_names & procedural
    assert build_scene(seeds[0], 64).texture_names == build_scene(seeds[0], 64, photo_share=0.55).texture_names
    with pytest.raises(ValueError, match="photo_share"):
        build_scene(1, 64, photo_share=1.5)


def test_slam_preset_and_explicit_options() -> None:
    from sirdiff_ros.data.synth import PRESETS

    frames = list(generate_sequence(1_000_001, 2, 64, 48, preset="slam", fps=15.0))
    assert frames[1].stamp_ns - frames[0].stamp_ns == pytest.approx(1e9 / 15.0, abs=1)  # explicit beats preset
    assert frames[0].extras["exposure_s"] == PRESETS["slam"]["exposure_s"]
    with pytest.raises(ValueError, match="unknown preset"):
        list(generate_sequence(1, 1, 64, 48, preset="fast"))
