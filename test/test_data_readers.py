"""Dataset readers on fixtures written here in each format, the real folders, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from sirdiff_ros.core.frame import Frame
from sirdiff_ros.core.geometry import quaternion_to_matrix
from sirdiff_ros.data.cli import main as synth_main
from sirdiff_ros.data.readers import (
    DatasetError,
    detect_format,
    read_euroc,
    read_frames,
    read_hypersim,
    read_robustmvd_sample,
    read_slambook_rgbd,
    read_synth_folder,
    read_tartanair,
    read_tum_rgbd,
)
from sirdiff_ros.data.readers.common import format_stamp, parse_stamp_ns
from sirdiff_ros.data.synth import generate_sequence


def _png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    return list(generate_sequence(23, 3, 64, 48, exposure_s=0.0, noise_std=0.0, shot_noise=0.0))


def test_stamps_parse_exactly() -> None:
    assert parse_stamp_ns("1305031102.175304") == 1_305_031_102_175_304_000
    assert parse_stamp_ns("1305031102.1753049999") == 1_305_031_102_175_304_999
    assert parse_stamp_ns("-0.5") == -500_000_000
    assert parse_stamp_ns(format_stamp(1_700_000_000_123_456_789)) == 1_700_000_000_123_456_789
    with pytest.raises(DatasetError, match="bad timestamp"):
        parse_stamp_ns("12:30")


def test_tum_rgbd_fixture(tmp_path: Path, frames: list[Frame]) -> None:
    root = tmp_path / "rgbd_dataset_freiburg1_xyz"
    rgb_lines, depth_lines, gt_lines = ["# color"], ["# depth"], ["# ground truth"]
    for i, f in enumerate(frames):
        t = 100.0 + i * 0.1
        _png(root / "rgb" / f"{t:.6f}.png", f.image)
        d = np.round(f.depth * 5000).astype(np.uint16)
        _png(root / "depth" / f"{t + 0.004:.6f}.png", d)  # depth 4 ms later, as in real recordings
        rgb_lines.append(f"{t:.6f} rgb/{t:.6f}.png")
        depth_lines.append(f"{t + 0.004:.6f} depth/{t + 0.004:.6f}.png")
    # Ground truth 0.05 s before and after each image: the reader interpolates.
    for i in range(len(frames) * 2 + 1):
        t = 100.0 - 0.05 + i * 0.05
        p = np.array([t - 100.0, 0.0, 1.0])
        yaw = 0.2 * (t - 100.0)
        q = [0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)]
        gt_lines.append(f"{t:.4f} " + " ".join(f"{v:.9f}" for v in (*p, *q)))
    for name, lines in (("rgb", rgb_lines), ("depth", depth_lines), ("groundtruth", gt_lines)):
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    assert detect_format(root) == "tum"
    got = list(read_frames(root))
    assert [g.stamp_ns for g in got] == [100_000_000_000, 100_100_000_000, 100_200_000_000]
    for g, f in zip(got, frames):
        assert np.array_equal(g.image, f.image)
        assert np.abs(g.depth - f.depth).max() <= 1 / 5000  # 1/5000 m steps
        assert (g.intrinsics.fx, g.intrinsics.cx) == (517.3, 318.6)  # freiburg1 calibration from the name
        t = g.stamp_ns / 1e9 - 100.0
        np.testing.assert_allclose(g.pose.translation, [t, 0.0, 1.0], atol=1e-9)
        np.testing.assert_allclose(g.pose.rotation, quaternion_to_matrix([0, 0, math.sin(0.1 * t), math.cos(0.1 * t)]),
                                   atol=1e-9)
    assert all(g.depth is None for g in read_tum_rgbd(root, with_depth=False))
    (root / "groundtruth.txt").write_text("100.0 0 0 0 0 0 0 2\n")
    with pytest.raises(DatasetError, match="not unit length"):
        list(read_tum_rgbd(root))


def test_sirdiff_synth_cli_folder_and_bag_agree(tmp_path: Path) -> None:
    out = tmp_path / "seq"
    args = [str(out), "--frames", "3", "--seed", "5", "--width", "64", "--height", "48", "--exposure", "0.02",
            "--soften", "1.0", "--bag", "--bag-format", "db3", "--no-progress"]
    assert synth_main(args) == 0
    assert synth_main(args) == 2  # refuses a non-empty folder
    meta = json.loads((out / "camera.json").read_text())
    assert meta["exposure_s"] == 0.02 and meta["seed"] == 5 and meta["depth_scale"] == 1000.0
    assert detect_format(out) == "synth" and detect_format(out / "bag") == "bag"
    folder = list(read_frames(out))
    bag = list(read_frames(out / "bag"))
    assert meta["config"]["soften_px"] == 1.0
    direct = list(generate_sequence(5, 3, 64, 48, exposure_s=0.02, soften_px=1.0))
    assert len(folder) == len(bag) == 3
    for a, b, c in zip(folder, bag, direct):
        assert a.stamp_ns == b.stamp_ns == c.stamp_ns
        assert np.array_equal(a.image, c.image) and np.array_equal(b.image, c.image)
        assert np.array_equal(a.extras["sharp"], c.extras["sharp"])
        assert np.abs(a.depth - c.depth).max() <= 0.0005 + 1e-6  # millimetre PNG
        np.testing.assert_allclose(a.pose.matrix(), c.pose.matrix(), atol=1e-8)
        assert a.intrinsics == c.intrinsics and a.frame_id == c.frame_id == "camera_optical"
    with pytest.raises(DatasetError, match="camera.json"):
        read_synth_folder(tmp_path)


def test_euroc_fixture(tmp_path: Path, frames: list[Frame]) -> None:
    cam = tmp_path / "MH_01" / "mav0" / "cam0"
    T_BS = np.eye(4)
    T_BS[:3, 3] = [0.1, 0.0, 0.0]
    (cam).mkdir(parents=True)
    (cam / "sensor.yaml").write_text(
        "sensor_type: camera\nT_BS:\n  cols: 4\n  rows: 4\n  data: [" + ", ".join(str(v) for v in T_BS.ravel()) + "]\n"
        "resolution: [64, 48]\ncamera_model: pinhole\nintrinsics: [40.0, 41.0, 31.5, 23.5]\n"
        "distortion_model: radial-tangential\ndistortion_coefficients: [0.0, 0.0, 0.0, 0.0]\n")
    lines = ["#timestamp [ns],filename"]
    for i, f in enumerate(frames):
        stamp = 1_403_636_579_763_555_584 + i * 50_000_000
        _png(cam / "data" / f"{stamp}.png", cv2.cvtColor(f.image, cv2.COLOR_RGB2GRAY))
        lines.append(f"{stamp},{stamp}.png")
    (cam / "data.csv").write_text("\n".join(lines) + "\n")
    gt = tmp_path / "MH_01" / "mav0" / "state_groundtruth_estimate0"
    gt.mkdir()
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)  # body yawed 90 degrees, EuRoC order w, x, y, z
    rows = ["#timestamp, p_RS_R_x [m], p_RS_R_y [m], p_RS_R_z [m], q_RS_w [], q_RS_x [], q_RS_y [], q_RS_z []"]
    for k in range(-2, 7):  # up to 60 ms: frame 2 (100 ms) lies 40 ms past the end
        stamp = 1_403_636_579_763_555_584 + k * 10_000_000
        rows.append(f"{stamp},1.0,2.0,3.0,{c},0.0,0.0,{s},0,0,0,0,0,0,0,0,0")
    (gt / "data.csv").write_text("\n".join(rows) + "\n")
    assert detect_format(tmp_path / "MH_01") == "euroc"
    got = list(read_euroc(tmp_path / "MH_01"))
    assert len(got) == 3 and got[0].image.ndim == 2 and got[0].intrinsics.fy == 41.0
    assert got[1].stamp_ns - got[0].stamp_ns == 50_000_000
    # Camera = body (at 1,2,3, yawed +90 deg) composed with T_BS (+0.1 m along body x = world +y).
    np.testing.assert_allclose(got[0].pose.translation, [1.0, 2.1, 3.0], atol=1e-9)
    np.testing.assert_allclose(got[0].pose.rotation[:, 0], [0.0, 1.0, 0.0], atol=1e-9)
    assert got[2].pose is None  # beyond the 20 ms extrapolation bound


def test_tartanair_fixture_converts_ned_body_to_optical(tmp_path: Path, frames: list[Frame]) -> None:
    root = tmp_path / "P000"
    lines = []
    for i, f in enumerate(frames):
        _png(root / "image_left" / f"{i:06d}_left.png", f.image)
        (root / "depth_left").mkdir(exist_ok=True)
        np.save(root / "depth_left" / f"{i:06d}_left_depth.npy", f.depth)
        lines.append(f"{i} {2 * i} 0 0 0 0 1")  # identity body orientation: looking north
    (root / "pose_left.txt").write_text("\n".join(lines) + "\n")
    assert detect_format(root) == "tartanair"
    got = list(read_tartanair(root, fps=5.0, intrinsics=frames[0].intrinsics))
    assert [g.stamp_ns for g in got] == [0, 200_000_000, 400_000_000]
    R = got[0].pose.rotation
    np.testing.assert_allclose(R[:, 2], [1, 0, 0])  # optical forward = body forward (north)
    np.testing.assert_allclose(R[:, 0], [0, 1, 0])  # optical right = east
    np.testing.assert_allclose(R[:, 1], [0, 0, 1])  # optical down = NED down
    np.testing.assert_allclose(got[2].pose.translation, [2, 4, 0])
    assert np.array_equal(got[1].depth, frames[1].depth)
    (root / "pose_left.txt").write_text("0 0 0 0 0 0 1\n")
    with pytest.raises(DatasetError, match="3 images but 1 poses"):
        list(read_tartanair(root))


def test_hypersim_fixture(tmp_path: Path, frames: list[Frame]) -> None:
    h5py = pytest.importorskip("h5py")
    scene = tmp_path / "ai_001_001"
    (scene / "_detail" / "cam_00").mkdir(parents=True)
    (scene / "_detail" / "metadata_scene.csv").write_text("parameter_name,parameter_value\nmeters_per_asset_unit,0.5\n")
    n = len(frames)
    positions = np.array([[2.0 * i, 0.0, 4.0] for i in range(n)])
    orientations = np.repeat(np.eye(3)[None], n, axis=0)  # GL camera: looks along world -z, y up
    for name, data in (("positions", positions), ("orientations", orientations)):
        with h5py.File(scene / "_detail" / "cam_00" / f"camera_keyframe_{name}.hdf5", "w") as f:
            f.create_dataset("dataset", data=data)
    geo = scene / "images" / "scene_cam_00_geometry_hdf5"
    geo.mkdir(parents=True)
    for i, fr in enumerate(frames):
        _png(scene / "images" / "scene_cam_00_final_preview" / f"frame.{i:04d}.tonemap.jpg", fr.image)
    # A fronto-parallel plane at z = 2 m: distance along the ray grows off-centre.
    w, h = 64, 48
    f_px = (w / 2) / math.tan(math.radians(30))
    uu, vv = np.meshgrid(np.arange(w) - (w - 1) / 2, np.arange(h) - (h - 1) / 2)
    dist = 2.0 * np.sqrt((uu / f_px) ** 2 + (vv / f_px) ** 2 + 1)
    with h5py.File(geo / "frame.0000.depth_meters.hdf5", "w") as f:
        f.create_dataset("dataset", data=dist.astype(np.float16))
    assert detect_format(scene) == "hypersim"
    got = list(read_hypersim(scene))
    assert len(got) == n and got[0].intrinsics.fx == pytest.approx(f_px)
    np.testing.assert_allclose(got[0].depth, 2.0, atol=2e-3)  # z-depth of the plane (float16 source)
    assert got[1].depth is None
    np.testing.assert_allclose(got[2].pose.translation, [2.0, 0.0, 2.0])  # asset units * 0.5
    R = got[0].pose.rotation
    np.testing.assert_allclose(R[:, 2], [0, 0, -1])  # optical forward = GL -z
    np.testing.assert_allclose(R[:, 1], [0, -1, 0])  # optical down = GL -y


def test_detect_format_rejects_unknown_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot tell the dataset format"):
        detect_format(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        detect_format(tmp_path / "none")
    with pytest.raises(DatasetError, match="unknown dataset format"):
        read_frames(tmp_path, fmt="kitti")


def test_robustmvd_sample_poses_match_image_geometry(shared_data: Path) -> None:
    views = list(read_robustmvd_sample(shared_data / "robustmvd_sample"))
    assert len(views) == 7 and views[0].image.shape == (720, 1280, 3)
    assert np.allclose(views[0].pose.matrix(), np.eye(4), atol=1e-6)
    # Relative rotation key -> source 0 from ORB + essential matrix agrees with the stored transform.
    g0, g1 = (cv2.cvtColor(v.image, cv2.COLOR_RGB2GRAY) for v in views[:2])
    orb = cv2.ORB_create(3000)
    k0, d0 = orb.detectAndCompute(g0, None)
    k1, d1 = orb.detectAndCompute(g1, None)
    m = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(d0, d1)
    p0 = np.float32([k0[x.queryIdx].pt for x in m])
    p1 = np.float32([k1[x.trainIdx].pt for x in m])
    K = views[0].intrinsics.K
    E, mask = cv2.findEssentialMat(p0, p1, K, cv2.RANSAC, 0.999, 1.0)
    _, R, t, _ = cv2.recoverPose(E, p0, p1, K, mask=mask)
    rel = views[1].pose.inverse() @ views[0].pose  # T_src_key
    angle = math.degrees(math.acos(np.clip((np.trace(R.T @ rel.rotation) - 1) / 2, -1, 1)))
    assert angle < 3.0
    assert float(t.ravel() @ rel.translation) / np.linalg.norm(rel.translation) > 0.95


def test_slambook_depth_reprojects_consistently(shared_data: Path) -> None:
    a, b = list(read_slambook_rgbd(shared_data / "slambook2_rgbd"))[:2]
    assert a.image.shape == (480, 640, 3) and a.depth.dtype == np.float32
    K = a.intrinsics
    uv = K.pixel_grid(4)
    d = a.depth[::4, ::4]
    ok = d > 0
    pts = a.pose.transform_points(K.unproject(uv[ok], d[ok].astype(np.float64)))
    uvb, zb = K.project(b.pose.inverse().transform_points(pts))
    inside = K.in_image(uvb) & (zb > 0)
    db = b.depth[np.round(uvb[inside][:, 1]).astype(int), np.round(uvb[inside][:, 0]).astype(int)]
    good = db > 0
    rel_err = np.abs(db[good] - zb[inside][good]) / zb[inside][good]
    assert good.sum() > 1000 and np.median(rel_err) < 0.06  # camera-to-world convention holds


def test_sirdiff_synth_cli_preset_with_override(tmp_path: Path) -> None:
    out = tmp_path / "seq"
    assert synth_main([str(out), "--frames", "2", "--seed", "1000001", "--width", "64", "--height", "48",
                       "--preset", "slam", "--fps", "20", "--no-progress"]) == 0
    meta = json.loads((out / "camera.json").read_text())
    assert meta["preset"] == "slam" and meta["config"]["fps"] == 20.0  # the explicit option wins
    assert meta["config"]["tile_scale"] == 1.5 and meta["config"]["trajectory"]["burst_start_s"] == 1.0
