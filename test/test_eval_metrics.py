"""Each evaluation metric against a case whose answer is known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data

from sirdiff_ros.core.geometry import CameraIntrinsics, Pose
from sirdiff_ros.evaluation.alignment import AlignmentError, aligned_pose_errors, umeyama
from sirdiff_ros.evaluation.metrics import (
    MetricError,
    fundamental_from_poses,
    match_features,
    psnr,
    reprojection_consistency,
    ssim,
    symmetric_epipolar_distance,
)


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    return skimage.data.astronaut()  # (512, 512, 3) uint8, real photograph


def test_psnr_of_a_known_offset(texture: np.ndarray) -> None:
    ref = np.clip(texture, 0, 200).astype(np.uint8)
    img = ref + np.uint8(10)  # every value off by exactly 10: MSE = 100
    assert psnr(img, ref) == pytest.approx(10 * math.log10(255.0**2 / 100.0), abs=1e-12)
    assert psnr(ref, ref) == math.inf


def test_psnr_rejects_shape_mismatch(texture: np.ndarray) -> None:
    with pytest.raises(MetricError, match="differs"):
        psnr(texture[:10], texture[:11])


def test_ssim_identical_is_one_and_noise_lowers_it(texture: np.ndarray) -> None:
    assert ssim(texture, texture) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(0)
    noisy = np.clip(texture.astype(int) + rng.integers(-40, 41, texture.shape), 0, 255).astype(np.uint8)
    assert ssim(noisy, texture) < 0.8
    with pytest.raises(MetricError, match="7x7"):
        ssim(texture[:5, :5], texture[:5, :5])


def _plane_views(texture: np.ndarray, baseline: float, depth: float = 2.0):
    """Two cameras looking at a fronto-parallel plane; camera 1 is moved by
    ``baseline`` along +x, so scene content moves by fx*baseline/depth pixels left."""
    K = CameraIntrinsics(100.0, 100.0, 63.5, 47.5, 128, 96)
    shift = int(round(K.fx * baseline / depth))
    img0 = texture[100:196, 100:228].copy()
    img1 = texture[100:196, 100 + shift : 228 + shift].copy()
    d = np.full((96, 128), depth, np.float32)
    poses = [Pose.identity(), Pose(np.eye(3), np.array([baseline, 0.0, 0.0]))]
    return [img0, img1], poses, [K, K], [d, d], shift


def test_consistency_of_identical_views_is_zero(texture: np.ndarray) -> None:
    imgs, poses, Ks, depths, _ = _plane_views(texture, 0.0)
    res = reprojection_consistency([imgs[0], imgs[0]], [poses[0]] * 2, Ks, depths, step=1)
    assert res.mean_abs_diff == pytest.approx(0.0, abs=1e-9)
    assert res.covisible_pixels == 2 * 96 * 128
    assert res.pairs == 2


def test_consistency_of_a_correct_warp_is_zero_and_of_an_offset_is_the_offset(texture: np.ndarray) -> None:
    imgs, poses, Ks, depths, shift = _plane_views(texture, 0.2)  # 10 px parallax
    assert shift == 10
    res = reprojection_consistency(imgs, poses, Ks, depths, step=1)
    assert res.mean_abs_diff == pytest.approx(0.0, abs=1e-9)
    # Only the 118 overlapping columns are co-visible, in both directions.
    assert res.covisible_pixels == 2 * 96 * (128 - shift)
    grey_offset = np.clip(imgs[1], 0, 230) + np.uint8(25)
    base = np.clip(imgs[1], 0, 230)
    a = reprojection_consistency([imgs[0], base], poses, Ks, depths, step=1).mean_abs_diff
    b = reprojection_consistency([imgs[0], grey_offset], poses, Ks, depths, step=1).mean_abs_diff
    assert a < 1.0 and b - a == pytest.approx(25.0, abs=1.0)  # grey of RGB+25 is grey+25 up to rounding


def test_consistency_skips_occluded_pixels(texture: np.ndarray) -> None:
    imgs, poses, Ks, depths, _ = _plane_views(texture, 0.2)
    occluder = np.full_like(depths[1], 0.5)  # camera 1 sees something much nearer everywhere
    res = reprojection_consistency(imgs, poses, Ks, [depths[0], occluder], pairs=[(0, 1)])
    assert res.covisible_pixels == 0 and math.isnan(res.mean_abs_diff)
    with pytest.raises(MetricError, match="no depth"):
        reprojection_consistency(imgs, poses, Ks, [None, None], pairs=[(0, 1)])


def test_epipolar_distance_of_a_rectified_pair() -> None:
    K = CameraIntrinsics(100.0, 100.0, 64.0, 48.0, 128, 96)
    # Camera b 0.1 m to the right: epipolar lines are image rows.
    F = fundamental_from_poses(Pose.identity(), Pose(np.eye(3), np.array([0.1, 0.0, 0.0])), K, K)
    pts_a = np.array([[10.0, 20.0], [50.0, 60.0]])
    on_line = symmetric_epipolar_distance(F, pts_a, pts_a + [[-5.0, 0.0], [-7.0, 0.0]])
    off_line = symmetric_epipolar_distance(F, pts_a, pts_a + [[-5.0, 3.0], [-7.0, -2.0]])
    np.testing.assert_allclose(on_line, 0.0, atol=1e-9)
    np.testing.assert_allclose(off_line, [3.0, 2.0], atol=1e-9)
    with pytest.raises(MetricError, match="coincide"):
        fundamental_from_poses(Pose.identity(), Pose.identity(), K, K)


@pytest.mark.parametrize("method, tolerance_px", [("orb", 3.5), ("sift", 2.0)])
def test_inliers_of_a_pure_translation(texture: np.ndarray, method: str, tolerance_px: float) -> None:
    a = texture[50:290, 50:370]
    b = texture[45:285, 43:363]  # the same scene moved by (+7, +5) pixels
    res = match_features(a, b, method)
    assert res.matches > 100
    # A pure translation has no outliers: every match is a RANSAC inlier ...
    assert res.inliers >= 0.95 * res.matches
    # ... and every inlier moved by the translation (ORB's coarse pyramid
    # levels quantise positions to a few pixels).
    shift = res.inlier_points_b - res.inlier_points_a
    assert np.all(np.abs(shift - [7.0, 5.0]).max(axis=1) < tolerance_px)
    assert np.median(np.abs(shift - [7.0, 5.0])) < 0.5
    # Deterministic: the same call gives the same count.
    assert match_features(a, b, method).inliers == res.inliers


def test_unrelated_images_have_no_inliers(texture: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert match_features(texture[:240, :320], noise, "orb").inliers == 0


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    Kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * Kx + (1 - math.cos(angle)) * Kx @ Kx


def test_umeyama_recovers_a_known_similarity() -> None:
    rng = np.random.default_rng(2)
    src = rng.normal(size=(20, 3))
    R = _rotation(np.array([0.3, -1.0, 0.5]), 0.7)
    dst = 2.5 * src @ R.T + np.array([1.0, -2.0, 3.0])
    sim = umeyama(src, dst)
    assert sim.scale == pytest.approx(2.5, abs=1e-12)
    np.testing.assert_allclose(sim.rotation, R, atol=1e-12)
    np.testing.assert_allclose(sim.translation, [1.0, -2.0, 3.0], atol=1e-12)
    with pytest.raises(AlignmentError, match="collinear"):
        umeyama(np.outer(np.arange(5.0), [1.0, 2.0, 3.0]), np.outer(np.arange(5.0), [1.0, 0.0, 0.0]))


def test_pose_errors_after_alignment() -> None:
    rng = np.random.default_rng(3)
    R = _rotation(np.array([1.0, 1.0, 0.0]), 0.4)
    ref = [Pose(_rotation(rng.normal(size=3), 0.3), rng.normal(size=3)) for _ in range(6)]
    # The "estimate" is the reference seen in another frame at a third of the scale.
    est = [Pose(R.T @ p.rotation, (R.T @ (p.translation - [0.5, 0.0, 0.0])) / 3.0) for p in ref]
    err = aligned_pose_errors(est, ref)
    assert err.ate_rmse == pytest.approx(0.0, abs=1e-9)
    assert err.rotation_deg_mean == pytest.approx(0.0, abs=1e-6)
    assert err.scale == pytest.approx(3.0, abs=1e-9)
    # Moving one camera by 0.3 m (after alignment the error spreads but stays bounded).
    moved = list(est)
    moved[0] = Pose(est[0].rotation, est[0].translation + [0.1, 0.0, 0.0])
    assert 0.0 < aligned_pose_errors(moved, ref).ate_rmse < 0.3


def test_epipolar_error_of_real_matches_under_accurate_poses_is_subpixel(shared_data) -> None:
    """robustmvd's poses agree with the images to ~1 degree: SIFT inliers lie
    within a pixel of the epipolar lines the poses predict."""
    import cv2

    def view(d):
        img = cv2.cvtColor(cv2.imread(str(d / "image.png")), cv2.COLOR_BGR2RGB)
        K = CameraIntrinsics.from_matrix(np.load(d / "K.npy"), img.shape[1], img.shape[0])
        return img, K, Pose.from_matrix(np.load(d / "to_ref_transform.npy")).inverse()

    root = shared_data / "robustmvd_sample"
    key, src = view(root / "key"), view(root / "source" / "0")
    res = match_features(key[0], src[0], "sift", poses=(key[2], src[2]), intrinsics=(key[1], src[1]))
    assert res.inliers > 100
    assert res.epipolar_px < 1.0
    # A wrong pose (camera turned by 3 degrees) moves the epipolar lines away.
    turned = Pose(src[2].rotation @ _rotation(np.array([0.0, 1.0, 0.0]), math.radians(3)), src[2].translation)
    wrong = match_features(key[0], src[0], "sift", poses=(key[2], turned), intrinsics=(key[1], src[1]))
    assert wrong.epipolar_px > 5 * res.epipolar_px
