"""Real-frame degrader: exact at zero exposure, agrees with the physical renderer, deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sirdiff_ros.core.frame import Frame
from sirdiff_ros.core.geometry import Pose, _rotation_exp
from sirdiff_ros.core.color import linear_to_srgb
from sirdiff_ros.data.degrade import blur_frame
from sirdiff_ros.data.readers import read_robustmvd_sample, read_slambook_rgbd
from sirdiff_ros.data.render import Renderer
from sirdiff_ros.data.scene import build_scene
from sirdiff_ros.data.synth import default_intrinsics, render_exposure
from sirdiff_ros.data.trajectory import look_rotation


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.fixture(scope="module")
def synthetic_view() -> tuple[Renderer, Pose, Frame]:
    scene = build_scene(11, 256)
    K = default_intrinsics(192, 144)
    r = Renderer(scene, K)
    mid = Pose(look_rotation(2.0, -0.1, 0.05), (scene.camera_region[0] + scene.camera_region[1]) / 2)
    res = r.render(mid)
    return r, mid, Frame(res.image, 123, K, mid, res.depth, "cam", 4)


@pytest.mark.parametrize(
    "omega, vel",
    [((0.0, 1.5, 0.0), (0.0, 0.0, 0.0)), ((0.0, 0.0, 0.0), (1.5, 0.0, 0.3)), ((0.7, -0.5, 0.2), (0.3, 0.2, 0.1))],
)
def test_degrader_matches_rendered_exposure(synthetic_view, omega, vel) -> None:
    renderer, mid, sharp = synthetic_view
    w, v = np.array(omega), np.array(vel)
    lin, _, _ = render_exposure(renderer, lambda tau: mid @ Pose(_rotation_exp(w * tau), v * tau), 0.03, 16)
    truth = linear_to_srgb(lin)
    blurred, traj = blur_frame(sharp, 0, exposure_s=0.03, subframes=16, angular_velocity=w, linear_velocity=v)
    valid = blurred.extras["valid"]
    assert valid.mean() > 0.9
    got = _psnr(blurred.image[valid], truth[valid])
    baseline = _psnr(sharp.image[valid], truth[valid])
    assert got > 33.0 and got > baseline + 4.0
    # The record: same stamp/pose, sharp kept, trajectory symmetric around mid-exposure.
    assert blurred.stamp_ns == 123 and blurred.pose is mid and blurred.seq == 4
    assert np.array_equal(blurred.extras["sharp"], sharp.image)
    np.testing.assert_allclose(traj.offsets_s, -traj.offsets_s[::-1])
    np.testing.assert_allclose(traj.poses[0].matrix(), (mid @ traj.relative[0]).matrix())


def test_zero_exposure_is_exact_and_seed_is_deterministic(synthetic_view) -> None:
    _, _, sharp = synthetic_view
    same, _ = blur_frame(sharp, 1, exposure_s=0.0)
    assert np.array_equal(same.image, sharp.image)
    a, ta = blur_frame(sharp, 7, noise_std=0.01)
    b, tb = blur_frame(sharp, 7, noise_std=0.01)
    c, tc = blur_frame(sharp, 8, noise_std=0.01)
    assert np.array_equal(a.image, b.image) and np.array_equal(ta.angular_velocity, tb.angular_velocity)
    assert not np.array_equal(ta.angular_velocity, tc.angular_velocity)


def test_missing_depth_is_a_clear_error(synthetic_view) -> None:
    _, _, sharp = synthetic_view
    bare = Frame(sharp.image, 0, sharp.intrinsics)
    with pytest.raises(ValueError, match="needs depth"):
        blur_frame(bare, 0)
    with pytest.raises(ValueError, match="does not match"):
        blur_frame(bare, 0, depth_prior=np.ones((3, 3)))
    out, _ = blur_frame(bare, 0, depth_prior=2.5)
    assert out.extras["blur_px"] > 0 and out.extras["valid"].mean() > 0.8


def test_real_rgbd_frame_blur_grows_with_angular_speed(shared_data: Path) -> None:
    frame = next(iter(read_slambook_rgbd(shared_data / "slambook2_rgbd")))
    small = frame.image[::2, ::2]
    K = frame.intrinsics.scaled(0.5)
    f = Frame(np.ascontiguousarray(small), frame.stamp_ns, K, frame.pose, np.ascontiguousarray(frame.depth[::2, ::2]))
    extents = []
    diffs = []
    for speed in (0.3, 1.0, 3.0):
        b, _ = blur_frame(f, 3, angular_speed=speed, speed=0.0, subframes=12)
        extents.append(b.extras["blur_px"])
        diffs.append(float(np.abs(b.image.astype(int) - small)[b.extras["valid"]].mean()))
    assert extents[0] < extents[1] < extents[2]
    assert diffs[0] < diffs[1] < diffs[2]


def test_real_multiview_frame_with_a_depth_prior(shared_data: Path) -> None:
    key = next(iter(read_robustmvd_sample(shared_data / "robustmvd_sample")))
    blurred, traj = blur_frame(key, 5, depth_prior=3.0, subframes=8, angular_speed=1.0, speed=0.2)
    assert blurred.image.shape == key.image.shape and blurred.depth is None
    assert 5 < blurred.extras["blur_px"] < 100
    assert np.linalg.norm(traj.angular_velocity) == pytest.approx(1.0)
