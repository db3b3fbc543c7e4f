"""Downstream mapping (pycolmap) on real multi-view images with known poses."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from sirdiff_ros.core.geometry import CameraIntrinsics, Pose
from sirdiff_ros.evaluation.mapping import MappingError, MappingView, run_mapping


def _robustmvd_views(root: Path, factor: float = 0.5) -> list[MappingView]:
    dirs = [root / "key"] + sorted((root / "source").iterdir())
    views = []
    for i, d in enumerate(dirs):
        bgr = cv2.imread(str(d / "image.png"))
        img = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        K = CameraIntrinsics.from_matrix(np.load(d / "K.npy"), bgr.shape[1], bgr.shape[0]).scaled(factor)
        # to_ref_transform maps key-camera points into this camera: its inverse
        # is T_key_cam, a pose in the key camera's frame used as "world".
        pose = Pose.from_matrix(np.load(d / "to_ref_transform.npy")).inverse()
        views.append(MappingView(f"{i:03d}.png", img, K, pose))
    return views


def test_mapping_registers_real_views_and_recovers_their_poses(shared_data: Path) -> None:
    views = _robustmvd_views(shared_data / "robustmvd_sample")
    res = run_mapping(views)
    assert res.registered == len(views) == 7
    assert res.points3d > 200
    assert 0.0 < res.reprojection_px < 1.5
    # The sample's poses agree with feature-based estimates to ~1 degree (data README).
    assert res.rotation_deg < 3.0
    assert res.ate_rmse_m < 0.02  # baselines are 7-26 cm


def test_mapping_of_heavily_blurred_views_is_worse(shared_data: Path) -> None:
    views = _robustmvd_views(shared_data / "robustmvd_sample")
    kernel = np.zeros((31, 31), np.float32)
    kernel[15, :] = 1.0 / 31  # 31 px horizontal motion blur
    blurred = [MappingView(v.name, cv2.filter2D(v.image, -1, kernel), v.intrinsics, v.pose) for v in views]
    sharp, blur = run_mapping(views), run_mapping(blurred)
    assert blur.points3d < sharp.points3d


def test_mapping_rejects_mixed_cameras() -> None:
    a = CameraIntrinsics(100.0, 100.0, 32.0, 24.0, 64, 48)
    b = CameraIntrinsics(110.0, 100.0, 32.0, 24.0, 64, 48)
    img = np.zeros((48, 64, 3), np.uint8)
    with pytest.raises(MappingError, match="one camera"):
        run_mapping([MappingView("a.png", img, a), MappingView("b.png", img, b)])
    with pytest.raises(MappingError, match="no images"):
        run_mapping([])
