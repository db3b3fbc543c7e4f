"""ORB-SLAM3 in the loop: vocabulary, settings, tracking and trajectory metrics.

Tests that run ORB-SLAM3 need the optional extra (``pip install -r
requirements/slam.txt``) and skip with that reason without it; the
vocabulary, settings and segment logic are tested everywhere.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from sirdiff_ros.core.geometry import CameraIntrinsics, Pose, _rotation_exp
from sirdiff_ros.data.synth import generate_sequence
from sirdiff_ros.data.textures import training_seeds
from sirdiff_ros.slam import vocabulary as vocab_mod
from sirdiff_ros.slam.orbslam import (
    SlamInput,
    SlamRun,
    parse_slam_spec,
    segments,
    settings_yaml,
    stereo_baseline_m,
)
from sirdiff_ros.slam.vocabulary import (
    Vocabulary,
    VocabularyError,
    build_vocabulary,
    orb_descriptors,
    read_vocabulary_header,
    resolve_vocabulary,
    vocabulary_from_images,
)

NEEDS_SLAM = "ORB-SLAM3 tests need the optional extra: pip install -r requirements/slam.txt"
SHARP = dict(exposure_s=0.0, subframes=1, noise_std=0.0, shot_noise=0.0)


def _training_images(n_seeds: int, views: int = 3) -> list[np.ndarray]:
    return [f.extras["sharp"] for s in training_seeds(n_seeds)
            for f in generate_sequence(s, views, 640, 480, speed=1.5, angular_speed=1.5, burst_rate=0.0, **SHARP)]


@pytest.fixture(scope="module")
def small_vocabulary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DBoW2 vocabulary from training-split renders (the tests' sequences are held-out seeds)."""
    path = tmp_path_factory.mktemp("voc") / "voc.txt"
    vocabulary_from_images(_training_images(8), k=10, levels=5).save(path)
    return path


# -- vocabulary ----------------------------------------------------------------------


def test_vocabulary_text_format_is_what_dbow2_loads(small_vocabulary: Path) -> None:
    lines = small_vocabulary.read_text().splitlines()
    k, levels, scoring, weighting = (int(v) for v in lines[0].split())
    assert (k, levels, scoring, weighting) == (10, 5, 0, 0)  # L1 scoring, TF-IDF
    parents_seen = {0}
    leaves = 0
    for node_id, line in enumerate(lines[1:], start=1):
        parts = line.split()
        assert len(parts) == 35  # parent, is_leaf, 32 descriptor bytes, weight
        parent, is_leaf = int(parts[0]), int(parts[1])
        assert parent in parents_seen and parent < node_id  # parents precede children
        assert all(0 <= int(v) <= 255 for v in parts[2:34])
        weight = float(parts[34])
        if is_leaf:
            leaves += 1
            assert weight >= 0
        else:
            assert weight == 0
            parents_seen.add(node_id)
    voc = Vocabulary.load(small_vocabulary)
    assert voc.words == leaves > 1000
    # Every inner node has children; every childless node is a word (DBoW2 descends until a leaf).
    kids = voc.children()
    assert all(bool(kids[i]) != bool(voc.is_leaf[i]) for i in range(voc.nodes))


def test_vocabulary_words_and_idf_weights() -> None:
    rng = np.random.default_rng(0)
    common = rng.integers(0, 256, (1, 32), dtype=np.uint8)
    # Three "images": one descriptor everyone has, plus each image's own cluster.
    sets = []
    for _ in range(3):
        centre = rng.integers(0, 256, (1, 32), dtype=np.uint8)
        own = np.repeat(centre, 20, axis=0)
        own[:, 0] ^= rng.integers(0, 2, 20, dtype=np.uint8)  # one bit of noise
        sets.append(np.concatenate([common, own]))
    voc = build_vocabulary(sets, k=4, levels=3)
    words_common = voc.word_of(common)
    assert voc.weights[words_common[0]] == pytest.approx(0.0)  # in every image: no information
    own_words = voc.word_of(sets[1][1:])
    assert np.all(voc.weights[own_words] == pytest.approx(math.log(3.0)))
    assert set(own_words.tolist()).isdisjoint(voc.word_of(sets[2][1:]).tolist())


def test_vocabulary_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(VocabularyError, match="no ORB descriptors"):
        build_vocabulary([np.zeros((0, 32), np.uint8)])
    with pytest.raises(VocabularyError, match="k must"):
        build_vocabulary([np.zeros((5, 32), np.uint8)], k=30)
    bad = tmp_path / "bad.txt"
    bad.write_text("hello world\n")
    with pytest.raises(VocabularyError, match="not a DBoW2"):
        read_vocabulary_header(bad)
    with pytest.raises(VocabularyError, match="not found"):
        resolve_vocabulary(tmp_path / "missing.txt")


def test_vocabulary_choice_follows_argument_then_environment(small_vocabulary: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYORBSLAM3_VOCAB", str(small_vocabulary))
    assert resolve_vocabulary().source == "PYORBSLAM3_VOCAB"
    assert resolve_vocabulary(small_vocabulary).source == "given"


def test_vocab_cli_builds_from_image_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import cv2

    for i, img in enumerate(_training_images(2, views=2)):
        cv2.imwrite(str(tmp_path / f"{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    out = tmp_path / "v" / "voc.txt"
    assert vocab_mod.main([str(out), str(tmp_path), "--levels", "3"]) == 0
    assert read_vocabulary_header(out) == (10, 3)
    assert "of 4 images" in capsys.readouterr().out
    assert Vocabulary.load(out).words > 100
    assert vocab_mod.main([str(out), str(tmp_path / "nothing")]) == 2


def test_orb_descriptors_shape() -> None:
    img = _training_images(1, views=1)[0]
    d = orb_descriptors(img, 500)
    assert d.dtype == np.uint8 and d.shape[1] == 32 and 300 < len(d) <= 500
    assert orb_descriptors(np.zeros((60, 80), np.uint8)).shape == (0, 32)


# -- settings and specs ------------------------------------------------------------------


def test_settings_yaml_per_mode() -> None:
    K = CameraIntrinsics(500.0, 501.0, 319.5, 239.5, 640, 480)
    mono = settings_yaml(K, "mono", 10.0)
    assert mono.startswith("%YAML:1.0\n")
    assert "Camera.fx: 500.000000" in mono and "Camera.fy: 501.000000" in mono
    assert "Viewer.ViewpointF" in mono and "Camera.bf" not in mono
    rgbd = settings_yaml(K, "rgbd", 10.0, depth_threshold_m=4.0)
    assert "DepthMapFactor: 1.0" in rgbd and "Camera.bf: 40.000000" in rgbd and "ThDepth: 50.000000" in rgbd
    stereo = settings_yaml(K, "stereo", 20.0, baseline_m=0.12)
    assert "Camera.bf: 60.000000" in stereo and "DepthMapFactor" not in stereo
    # Monocular maps only what it triangulates: more features by default, an explicit count wins.
    assert "ORBextractor.nFeatures: 2000" in mono and "ORBextractor.nFeatures: 1200" in rgbd
    assert "ORBextractor.nFeatures: 800" in settings_yaml(K, "mono", 10.0, features=800)
    with pytest.raises(ValueError, match="features"):
        settings_yaml(K, "mono", 10.0, features=10)
    with pytest.raises(ValueError, match="baseline"):
        settings_yaml(K, "stereo", 20.0)
    with pytest.raises(ValueError, match="mode"):
        settings_yaml(K, "lidar", 20.0)


def test_stereo_baseline_from_camera_info_projection() -> None:
    fx = 487.609
    assert stereo_baseline_m([fx, 0, 318, -58.3627, 0, fx, 249, 0, 0, 0, 1, 0]) == pytest.approx(0.1197, abs=1e-4)
    with pytest.raises(ValueError, match="baseline"):
        stereo_baseline_m([fx, 0, 318, 0, 0, fx, 249, 0, 0, 0, 1, 0])


def test_parse_slam_spec() -> None:
    assert parse_slam_spec("orbslam3") == "mono"
    assert parse_slam_spec("orbslam3:rgbd") == "rgbd"
    assert parse_slam_spec("ORBSLAM3:Stereo") == "stereo"
    with pytest.raises(ValueError, match="only 'orbslam3"):
        parse_slam_spec("vins")
    with pytest.raises(ValueError, match="mode"):
        parse_slam_spec("orbslam3:imu")


def test_segments_split_where_the_map_was_abandoned() -> None:
    states = ["NOT_INITIALIZED", "OK", "OK", "RECENTLY_LOST", "OK", "LOST", "NOT_INITIALIZED", "OK", "OK"]
    assert segments(states) == [[1, 2, 4], [7, 8]]
    assert segments(["NOT_INITIALIZED"] * 3) == []


# -- metrics (evo) -------------------------------------------------------------------


def _circle(n: int) -> list[Pose]:
    return [Pose(_rotation_exp(np.array([0.0, 0.05 * i, 0.0])), np.array([np.cos(0.1 * i), 0.3 * np.sin(0.1 * i), 0.02 * i]))
            for i in range(n)]


def test_slam_metrics_align_sim3_for_mono_and_se3_for_rgbd() -> None:
    pytest.importorskip("evo", reason=NEEDS_SLAM)
    from sirdiff_ros.slam.orbslam import slam_metrics

    gt = _circle(40)
    stamps = [i * 100_000_000 for i in range(40)]
    # The estimate: the same path in another frame at a third of the scale, 10 frames lost in the middle.
    S = Pose(_rotation_exp(np.array([0.3, -0.2, 1.0])), np.array([2.0, -1.0, 0.5]))
    states = ["NOT_INITIALIZED"] * 2 + ["OK"] * 18 + ["RECENTLY_LOST"] * 5 + ["LOST"] * 5 + ["OK"] * 10
    est = []
    for p, s in zip(gt, states):
        q = S @ p
        est.append(Pose(q.rotation, q.translation / 3.0) if s == "OK" else None)
    run = SlamRun("mono", stamps, states, est, [0] * 40, vocabulary="v.txt")
    m = slam_metrics(run, dict(zip(stamps, gt)))
    assert m["frames"] == 40 and m["tracked_frames"] == 28
    assert m["tracked_fraction"] == pytest.approx(0.7)
    assert m["lost_frames"] == 10 and m["first_tracked_frame"] == 2 and m["map_resets"] == 1
    assert m["alignment"] == "sim3" and m["ate_frames"] == 28
    assert m["ate_rmse_m"] < 1e-6 and m["rpe_rmse_m"] < 1e-6
    assert m["sim3_scale"] == pytest.approx(3.0)
    # RGB-D: metric scale is observable, so a third of the scale is an error SE3 does not remove.
    run.mode = "rgbd"
    m = slam_metrics(run, dict(zip(stamps, gt)))
    assert m["alignment"] == "se3" and m["ate_rmse_m"] > 0.1
    # Noise of known size on the positions shows up as ATE of that size.
    rng = np.random.default_rng(1)
    noisy = [None if p is None else Pose(p.rotation, p.translation * 3.0 + rng.normal(0, 0.01, 3)) for p in est]
    m = slam_metrics(SlamRun("rgbd", stamps, states, noisy, [0] * 40), dict(zip(stamps, gt)))
    assert 0.008 < m["ate_rmse_m"] < 0.02


# -- ORB-SLAM3 itself ------------------------------------------------------------------


def _frames(seed: int, n: int, **opts: object) -> list:
    return list(generate_sequence(seed, n, 640, 480, burst_rate=0.0, **opts))


def test_orbslam_rgbd_tracks_a_sharp_synthetic_sequence(small_vocabulary: Path) -> None:
    pytest.importorskip("pyorbslam3", reason=NEEDS_SLAM)
    from sirdiff_ros.slam.orbslam import run_orbslam, slam_metrics

    frames = _frames(1_000_001, 30, **SHARP)
    inputs = [SlamInput(f.stamp_ns, f.image, f.depth) for f in frames]
    run = run_orbslam(inputs, frames[0].intrinsics, "rgbd", small_vocabulary, fps=10.0)
    assert run.error == ""
    m = slam_metrics(run, {f.stamp_ns: f.pose for f in frames})
    assert m["tracked_fraction"] >= 0.95 and m["first_tracked_frame"] == 0 and m["map_resets"] == 0
    assert m["ate_rmse_m"] < 0.03
    assert m["vocabulary"] == str(small_vocabulary)


def test_orbslam_mono_tracks_the_sharp_renders_of_a_slam_preset_sequence(small_vocabulary: Path) -> None:
    """The slam preset's sharp renders, pan included, are trackable monocular: blur is what can lose them."""
    pytest.importorskip("pyorbslam3", reason=NEEDS_SLAM)
    from sirdiff_ros.slam.orbslam import run_orbslam, slam_metrics

    frames = list(generate_sequence(1_000_003, 150, 640, 480, preset="slam", **SHARP))
    assert max(f.extras["blur_px"] for f in frames) == 0.0
    inputs = [SlamInput(f.stamp_ns, f.image) for f in frames]
    run = run_orbslam(inputs, frames[0].intrinsics, "mono", small_vocabulary, fps=30.0)
    assert run.error == ""
    m = slam_metrics(run, {f.stamp_ns: f.pose for f in frames})
    assert m["tracked_fraction"] >= 0.95 and m["first_tracked_frame"] <= 5 and m["map_resets"] == 0
    # 0.013-0.018 m on a quiet machine and next to one busy process (10 runs), 0.031 m once
    # with three busy processes: ORB-SLAM3's local mapping thread then optimises less. A
    # wrong scale or alignment is off by tenths of the 1.4 m path.
    assert m["ate_rmse_m"] < 0.05


def test_orbslam_child_failure_is_reported_not_raised(tmp_path: Path) -> None:
    pytest.importorskip("pyorbslam3", reason=NEEDS_SLAM)
    from sirdiff_ros.slam.orbslam import run_orbslam

    broken = tmp_path / "broken.txt"
    broken.write_text("30 2  0 0\n")  # k beyond DBoW2's limit: ORB-SLAM3 exits the process
    frames = _frames(1_000_001, 3, **SHARP)
    inputs = [SlamInput(f.stamp_ns, f.image) for f in frames]
    run = run_orbslam(inputs, frames[0].intrinsics, "mono", broken, timeout_s=60.0)
    assert run.error and run.states == ["CRASHED"] * 3


# -- sirdiff-eval --slam ---------------------------------------------------------------


def test_eval_slam_option_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sirdiff_ros.evaluation.cli import main as eval_main

    assert eval_main([str(tmp_path / "none.db3"), "--out", str(tmp_path / "o"), "--slam", "vins"]) == 2
    assert "only 'orbslam3" in capsys.readouterr().err


def test_eval_slam_reports_every_stream(tmp_path: Path, small_vocabulary: Path) -> None:
    pytest.importorskip("pyorbslam3", reason=NEEDS_SLAM)
    import json

    from sirdiff_ros.data.bags import write_frames_bag
    from sirdiff_ros.evaluation.cli import main as eval_main

    n = 40
    bag = tmp_path / "bag"
    write_frames_bag(bag, generate_sequence(1_000_002, n, 640, 480, preset="slam"), fmt="db3")
    out = tmp_path / "eval"
    rc = eval_main([str(bag), "--out", str(out), "--backend", "passthrough,fusion", "--no-mapping", "--no-bag",
                    "--quiet", "--slam", "orbslam3:mono,orbslam3:rgbd", "--orb-vocab", str(small_vocabulary),
                    "--slam-runs", "2"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["slam"]["vocabulary"] == {"path": str(small_vocabulary), "source": "given", "words": None}
    assert report["slam"]["modes"] == ["mono", "rgbd"] and report["slam"]["fps"] == pytest.approx(30.0)
    assert report["slam"]["runs"] == 2
    for stream in ("input", "passthrough", "fusion"):
        for mode in ("mono", "rgbd"):
            m = report["backends"][stream]["slam"][mode]
            assert m["frames"] == n and len(m["timeline"]) == n
            assert m["lost_frames"] + m["tracked_frames"] + m["not_initialized_frames"] == n
            # Two runs (ORB-SLAM3 is not deterministic): the reported one is the lower median by lost frames.
            assert len(m["runs"]) == 2 and m["lost_frames"] == min(r["lost_frames"] for r in m["runs"])
    # passthrough republishes the input unchanged: the very same run.
    assert report["backends"]["passthrough"]["slam"] == report["backends"]["input"]["slam"]
    rgbd = report["backends"]["input"]["slam"]["rgbd"]
    assert rgbd["first_tracked_frame"] == 0 and rgbd["tracked_fraction"] > 0.8 and rgbd["ate_rmse_m"] < 0.05
    md = (out / "report.md").read_text()
    assert "## SLAM in the loop (ORB-SLAM3)" in md and "| fusion | rgbd |" in md and "2 run(s) per stream" in md
    for plot in ("slam_timeline.png", "slam_trajectories.png"):
        assert (out / plot).stat().st_size > 5000 and f"]({plot})" in md


def test_eval_slam_refuses_stereo_without_a_right_camera(tmp_path: Path, small_vocabulary: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("pyorbslam3", reason=NEEDS_SLAM)
    from sirdiff_ros.data.bags import write_frames_bag
    from sirdiff_ros.evaluation.cli import main as eval_main

    bag = tmp_path / "bag"
    write_frames_bag(bag, generate_sequence(1_000_002, 2, 64, 48), fmt="db3")
    rc = eval_main([str(bag), "--out", str(tmp_path / "o"), "--no-mapping", "--no-bag", "--quiet",
                    "--slam", "orbslam3:stereo", "--orb-vocab", str(small_vocabulary)])
    assert rc == 2 and "right camera" in capsys.readouterr().err


# -- the ORB-SLAM3 node over DDS ---------------------------------------------------------


def test_orbslam_node_publishes_poses_of_tracked_frames(tmp_path: Path, small_vocabulary: Path) -> None:
    pytest.importorskip("pyorbslam3", reason=NEEDS_SLAM)
    import sys

    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CameraInfo, Image

    from sirdiff_ros.ros.convert import depth_message, frame_messages
    from sirdiff_ros.ros.probe import NodeProcess, Probe
    from sirdiff_ros.slam.node import read_states
    from sirdiff_ros.slam.orbslam import SlamRun, slam_metrics

    frames = _frames(1_000_001, 20, **SHARP)
    states = tmp_path / "states.csv"
    cmd = [sys.executable, "-m", "sirdiff_ros.slam.node", "--ros-args", "-r", "image:=/t/image",
           "-r", "camera_info:=/t/camera_info", "-r", "depth:=/t/depth", "-r", "pose:=/t/slam_pose"]
    node = NodeProcess({"mode": "rgbd", "vocabulary": str(small_vocabulary), "fps": 10.0, "states_file": str(states)},
                       command=cmd, log_path=tmp_path / "node.log")
    try:
        with Probe({"/t/image": Image, "/t/camera_info": CameraInfo, "/t/depth": Image},
                   {"/t/slam_pose": PoseStamped}, name="orbslam_probe") as probe:
            assert probe.wait_matched(60.0), node.output()[-2000:]
            bad = Image()  # an undecodable image: counted and logged, the node stays up
            bad.encoding, bad.height, bad.width, bad.step = "rgb8", 4, 4, 12
            bad.header.stamp.sec = 50
            probe.publish("/t/image", bad)
            probe.publish("/t/depth", bad)
            for f in frames:
                img, info, _ = frame_messages(f)
                depth = depth_message(f, img.header)
                probe.publish("/t/camera_info", info)
                probe.publish("/t/depth", depth)
                probe.publish("/t/image", img)
                time.sleep(0.1)
            probe.wait_for(lambda: len(probe.get("/t/slam_pose")) >= len(frames), 60.0)
            poses = probe.get("/t/slam_pose")
            assert len(poses) >= 18, node.output()[-3000:]
        assert node.alive()
    finally:
        node.close()
    stamps = {f.stamp_ns for f in frames}
    assert all(p.stamp_ns in stamps for p in poses) and poses[0].msg.header.frame_id == "map"
    got, st, est = read_states(states)
    assert got == [f.stamp_ns for f in frames][: len(got)] and len(got) >= 19 and st.count("OK") >= 18
    m = slam_metrics(SlamRun("rgbd", got, st, est, [0] * len(st)), {f.stamp_ns: f.pose for f in frames})
    assert m["ate_rmse_m"] < 0.03
    assert "frame dropped (bad_image" in node.output()
