"""sirdiff-eval end to end on small bags: synthetic with ground truth, cut short, and the real ROS 1 bag."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from sirdiff_ros.core.geometry import CameraIntrinsics
from sirdiff_ros.core.restorers import RestoredView, RestoreRequest, RestoreResult, register_restorer
from sirdiff_ros.data.bags import TopicDetectionError, write_frames_bag
from sirdiff_ros.data.synth import generate_sequence
from sirdiff_ros.evaluation.bagout import restored_topics
from sirdiff_ros.evaluation.cli import main as eval_main
from sirdiff_ros.evaluation.replay import ReplayConfig, evaluate_bag
from sirdiff_ros.evaluation.report import METRIC_KEYS
from sirdiff_ros.interfaces import make_typestore

N_FRAMES = 30


@register_restorer("test-corrupt")
class CorruptOneTarget:
    """Restores nothing except the first target it is given, which it ruins
    (adds a strong pattern): the report must flag that keyframe as degraded."""

    name = "test-corrupt"

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.corrupted: list[int] = []

    def restore(self, request: RestoreRequest) -> RestoreResult:
        views = []
        for i in request.targets:
            img = request.views[i].image
            if not self.corrupted:
                self.corrupted.append(request.views[i].stamp_ns)
                bad = img.astype(np.int16)
                bad[::2] += 60  # stripes: far from the ground truth
                views.append(RestoredView(i, np.clip(bad, 0, 255).astype(np.uint8), True))
            else:
                views.append(RestoredView(i, img, False, "declined"))
        return RestoreResult(views, self.name, self.device, 0.0)


@pytest.fixture(scope="module")
def synth_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bags") / "synth"
    write_frames_bag(path, generate_sequence(3, N_FRAMES, 160, 120), fmt="mcap")
    return path


@pytest.fixture(scope="module")
def evaluated(synth_bag: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], float]:
    out = tmp_path_factory.mktemp("eval")
    t0 = time.perf_counter()
    cfg = ReplayConfig(backends=("passthrough", "fusion", "test-corrupt"), mapping=True)
    evaluate_bag(synth_bag, out, cfg, progress=False)
    return out, json.loads((out / "report.json").read_text()), time.perf_counter() - t0


def test_report_has_the_documented_shape(evaluated: tuple[Path, dict[str, Any], float]) -> None:
    out, report, _ = evaluated
    assert not report["partial"]
    assert set(report["backends"]) == {"input", "passthrough", "fusion", "test-corrupt"}
    for name, agg in report["backends"].items():
        for key in ("psnr", "ssim", "consistency", "inliers"):
            assert isinstance(agg[key], float), (name, key)
        assert "targets" in agg
        if name != "input":
            assert agg["latency_ms_median"] is not None
    assert report["topics"]["image"] == "/camera/image_raw"
    assert report["topics"]["gt"] == "/ground_truth/image_sharp"
    assert report["summary"]["frames"] == N_FRAMES
    assert report["summary"]["targets"] >= 3
    assert sum(r["is_keyframe"] for r in report["keyframes"]) == report["summary"]["keyframes"]
    assert sum(r["is_target"] for r in report["keyframes"]) == report["summary"]["targets"]
    md = (out / "report.md").read_text()
    assert "| passthrough |" in md and "## Mapping" in md
    assert (out / "gains.png").stat().st_size > 1000


def test_passthrough_equals_input_exactly(evaluated: tuple[Path, dict[str, Any], float]) -> None:
    _, report, _ = evaluated
    inp, pt = report["backends"]["input"], report["backends"]["passthrough"]
    for key in METRIC_KEYS + ("match_success",):
        assert pt[key] == inp[key], key
        assert pt["targets"][key] == inp["targets"][key], key
    assert pt["mapping"] == inp["mapping"]
    for rec in report["keyframes"]:
        for key in METRIC_KEYS:
            assert rec["streams"]["passthrough"][key] == rec["streams"]["input"][key]
    assert pt["targets"]["improved"] == pt["targets"]["degraded"] == 0


def test_fusion_improves_psnr_of_targets(evaluated: tuple[Path, dict[str, Any], float]) -> None:
    _, report, _ = evaluated
    fus, inp = report["backends"]["fusion"], report["backends"]["input"]
    assert fus["restored"] >= 1
    assert fus["targets"]["psnr"] > inp["targets"]["psnr"]
    assert fus["targets"]["improved"] >= 1 and fus["targets"]["gain_mean"] > 0
    assert "most_improved" in report["crops"]["fusion"]


def test_a_deliberately_ruined_keyframe_shows_as_degraded(evaluated: tuple[Path, dict[str, Any], float]) -> None:
    out, report, _ = evaluated
    bad = report["backends"]["test-corrupt"]
    assert bad["restored"] == 1 and bad["targets"]["degraded"] == 1 and bad["targets"]["improved"] == 0
    crop = report["crops"]["test-corrupt"]["most_degraded"]
    assert crop["gain"] < -3.0  # dB
    assert (out / crop["file"]).stat().st_size > 1000
    ruined = [r for r in report["keyframes"] if r["stamp_ns"] == crop["stamp_ns"]]
    assert len(ruined) == 1 and ruined[0]["is_target"]
    s = ruined[0]["streams"]
    assert s["test-corrupt"]["psnr"] < s["input"]["psnr"] - 3.0
    assert s["test-corrupt"]["consistency"] > s["input"]["consistency"]


def test_mapping_ran_on_the_keyframes(evaluated: tuple[Path, dict[str, Any], float]) -> None:
    _, report, _ = evaluated
    m = report["backends"]["input"]["mapping"]
    assert m["images"] == report["summary"]["keyframes"]
    assert m["registered"] >= 3 and m["reprojection_px"] < 2.0
    assert m["ate_rmse_m"] is not None and m["rotation_deg"] is not None


def test_restored_bag_keeps_the_source_and_adds_each_backend(evaluated: tuple[Path, dict[str, Any], float]) -> None:
    out, report, _ = evaluated
    with AnyReader([out / "restored_bag"], default_typestore=make_typestore()) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts["/camera/image_raw"] == N_FRAMES and counts["/ground_truth/depth"] == N_FRAMES
        for backend in ("passthrough", "fusion", "test-corrupt"):
            t = restored_topics(backend)
            assert counts[t["image"]] == counts[t["camera_info"]] == N_FRAMES
            assert counts[t["keyframe_set"]] == report["summary"]["targets"]
        conns = [c for c in reader.connections if c.topic == restored_topics("test-corrupt")["keyframe_set"]]
        sets = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages(connections=conns)]
    restored = [s for s in sets if s.outcome == 0]
    assert len(restored) == 1 and restored[0].backend == "test-corrupt"
    assert restored[0].views[0].is_target and len(restored[0].views) >= 2


def test_a_cut_off_bag_gives_a_clear_error_and_a_partial_report(
    synth_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cut = tmp_path / "cut"
    shutil.copytree(synth_bag, cut)
    mcap = next(cut.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: int(mcap.stat().st_size * 0.5)])
    code = eval_main([str(cut), "--out", str(tmp_path / "out"), "--no-mapping", "--quiet"])
    assert code == 1
    assert "PARTIAL" in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["partial"] and "unreadable" in report["error"]
    assert 0 < report["summary"]["frames"] < N_FRAMES
    assert "PARTIAL REPORT" in (tmp_path / "out" / "report.md").read_text()
    with AnyReader([tmp_path / "out" / "restored_bag"]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts["/restored/fusion/image"] == report["summary"]["frames"]
    assert 0 < counts["/camera/image_raw"] < N_FRAMES  # the source copied up to the cut


def test_missing_topic_and_unknown_backend_are_clear_errors(
    synth_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert eval_main([str(synth_bag), "--out", str(tmp_path / "a"), "--image-topic", "/nope"]) == 2
    assert "'/nope' is not in the bag" in capsys.readouterr().err
    assert eval_main([str(synth_bag), "--out", str(tmp_path / "b"), "--backend", "magic"]) == 2
    assert "unknown backend(s) magic" in capsys.readouterr().err
    assert eval_main([str(tmp_path / "missing.mcap"), "--out", str(tmp_path / "c")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "a" / "report.json").exists()


T265_INTRINSICS = CameraIntrinsics(284.468, 285.51, 424.355, 393.742, 848, 800)  # kapture_sensors.txt, camera 001


def test_real_ros1_t265_bag(shared_data: Path, tmp_path: Path) -> None:
    """The T265 bag has two mono8 fisheye cameras, no CameraInfo and Odometry
    (body) poses: eval asks which camera, needs --intrinsics (fisheye taken as
    pinhole, an approximation), and uses the odometry as the camera pose."""
    bag = shared_data / "t265_bag" / "trimmed_locoffice.bag"
    with pytest.raises(TopicDetectionError, match="fisheye1.*fisheye2"):
        evaluate_bag(bag, tmp_path / "x", ReplayConfig(backends=("passthrough",)), progress=False)
    with pytest.raises(TopicDetectionError, match="CameraInfo"):
        evaluate_bag(bag, tmp_path / "x", topics={"image": "/camera/fisheye1/image_raw"}, progress=False)
    res = evaluate_bag(
        bag,
        tmp_path / "t265",
        ReplayConfig(backends=("passthrough", "fusion"), mapping=False),
        topics={"image": "/camera/fisheye1/image_raw"},
        intrinsics=T265_INTRINSICS,
        progress=False,
    )
    assert res.frames == 3 and not res.partial
    assert res.topics["pose"] == "/camera/odom/sample" and res.ground_truth is False
    rec = res.records[0]  # 0.09 s of motion: one keyframe, no partners
    assert math.isnan(rec.streams["input"]["psnr"]) and rec.streams["input"]["sharpness"] > 0
    with AnyReader([tmp_path / "t265" / "restored_bag"], default_typestore=make_typestore()) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        conn = next(c for c in reader.connections if c.topic == "/restored/fusion/image")
        msg = reader.deserialize(next(iter(reader.messages(connections=[conn])))[2], conn.msgtype)
    assert counts["/camera/fisheye2/image_raw"] == 3 and counts["/camera/odom/sample"] == 19  # ROS 1 converted
    assert counts["/restored/fusion/image"] == 3 and "/restored/fusion/camera_info" not in counts
    assert (msg.encoding, msg.width, msg.height) == ("mono8", 848, 800)


def test_params_file_gives_the_nodes_pipeline(repo_root: Path, tmp_path: Path) -> None:
    from sirdiff_ros.core.pipeline import PipelineConfig
    from sirdiff_ros.evaluation.cli import pipeline_from_params_file

    assert pipeline_from_params_file(repo_root / "config" / "restore.yaml") == PipelineConfig()
    custom = tmp_path / "p.yaml"
    custom.write_text("restore_node:\n  ros__parameters:\n    num_views: 3\n    blur_ratio: 0.9\n")
    pc = pipeline_from_params_file(custom)
    assert (pc.num_views, pc.blur_ratio) == (3, 0.9)
    custom.write_text("/**:\n  ros__parameters:\n    blur_ratio: 7.0\n")
    with pytest.raises(ValueError, match="blur_ratio"):
        pipeline_from_params_file(custom)


def test_real_rgbd_frames_degraded_for_ground_truth_without_depth(shared_data: Path, tmp_path: Path) -> None:
    """Real Kinect frames written to a bag *without* depth, blurred by the
    degrader: PSNR against the originals exists, photometric consistency
    cannot (no depth) and the epipolar error of matches stands in for it."""
    from sirdiff_ros.data.bags import DEFAULT_TOPICS
    from sirdiff_ros.data.readers.shared import read_slambook_rgbd

    bag = tmp_path / "slambook"
    frames = list(read_slambook_rgbd(shared_data / "slambook2_rgbd"))
    write_frames_bag(bag, frames, topics=DEFAULT_TOPICS._replace(gt=None, depth=None))
    code = eval_main([str(bag), "--out", str(tmp_path / "out"), "--degrade", "1", "--no-mapping", "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["summary"]["ground_truth"] and report["topics"]["depth"] is None
    inp = report["backends"]["input"]
    assert inp["n_psnr"] >= 1 and inp["psnr"] < 35.0  # the blurred frames, against their originals
    assert inp["consistency"] is None and inp["n_consistency"] == 0
    assert inp["epipolar_px"] is not None and inp["epipolar_px"] < 20.0


def test_interrupting_a_replay_keeps_what_was_measured() -> None:
    from sirdiff_ros.evaluation.replay import evaluate_frames

    def frames_then_ctrl_c():
        yield from generate_sequence(3, 6, 96, 72)
        raise KeyboardInterrupt

    res = evaluate_frames(frames_then_ctrl_c(), ReplayConfig(backends=("passthrough",), mapping=True))
    assert res.partial and res.error == "interrupted after 6 frames"
    assert res.frames == 6 and len(res.records) >= 1 and res.mapping == {}
