"""End to end over real DDS, three processes: bag player -> restore node -> this test (+ recorder)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import CameraInfo, Image

from sirdiff_ros.core.blur import sharpness
from sirdiff_ros.data.bags import DEFAULT_TOPICS, read_bag_frames, write_frames_bag
from sirdiff_ros.msg import KeyframeSet, RestoreStatus
from sirdiff_ros.ros.convert import stamp_to_ns
from sirdiff_ros.ros.probe import NodeProcess, Probe, target_rich_frames

pytestmark = pytest.mark.timeout(180)

CAMERA = {
    "image_topic": DEFAULT_TOPICS.image,
    "camera_info_topic": DEFAULT_TOPICS.info,
    "pose_topic": DEFAULT_TOPICS.pose,
}
OUTPUTS = {"restored/image": Image, "restored/camera_info": CameraInfo, "keyframe_set": KeyframeSet, "status": RestoreStatus}


def _tool(fn: str, *args: str) -> list[str]:
    return [sys.executable, "-c", f"import sys; from sirdiff_ros.ros.bag_tools import {fn}; sys.exit({fn}())", *args]


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    frames = target_rich_frames(24, 96, 72)
    path = tmp_path_factory.mktemp("bag") / "blurred"
    assert write_frames_bag(path, frames) == len(frames)
    return path, frames


def _array(msg: Any) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, -1).squeeze()


def _set_param(probe: Probe, name: str, value: ParameterValue) -> Any:
    client = probe.node.create_client(SetParameters, "/sirdiff_restore/set_parameters")
    assert client.wait_for_service(10)
    future = client.call_async(SetParameters.Request(parameters=[Parameter(name=name, value=value)]))
    assert probe.wait_for(future.done, 10)
    probe.node.destroy_client(client)
    return future.result().results[0]


def test_bag_through_node_stream_mode(tmp_path: Path, bag: tuple[Path, list[Any]]) -> None:
    path, frames = bag
    node = NodeProcess(
        {**CAMERA, "backend": "fusion", "qos_reliability": "reliable", "min_translation": 0.0, "latency_budget_s": 5.0},
        log_path=tmp_path / "node.log",
    )
    out_bag = tmp_path / "restored_out"
    topics = ["/restored/image", "/restored/camera_info", "/keyframe_set"]
    recorder = subprocess.Popen(_tool("record_main", str(out_bag), "--topics", *topics), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with Probe({}, OUTPUTS) as probe:
            assert probe.wait_matched(), node.output()
            play = subprocess.run(
                _tool("play_main", str(path), "--topics", *CAMERA.values(), "--wait-subscribers", "10"),
                capture_output=True, text=True, timeout=60,
            )
            assert play.returncode == 0, play.stderr
            assert f"published {3 * len(frames)} messages" in play.stdout
            last = frames[-1].stamp_ns
            assert probe.wait_for(lambda: any(r.stamp_ns == last for r in probe.get("restored/image")), 30), node.output()
            time.sleep(1.5)  # the status message after the last output
            images = [r.msg for r in probe.get("restored/image")]
            infos = [r.msg for r in probe.get("restored/camera_info")]
            sets = [r.msg for r in probe.get("keyframe_set")]
            status = probe.get("status")[-1].msg

            # Every input image out, in input order, header unchanged, camera_info alongside.
            assert [stamp_to_ns(m.header.stamp) for m in images] == [f.stamp_ns for f in frames]
            assert {m.header.frame_id for m in images} == {frames[0].frame_id}
            assert [(i.header.stamp, i.header.frame_id) for i in infos] == [(m.header.stamp, m.header.frame_id) for m in images]
            assert all((i.width, i.height) == (m.width, m.height) for i, m in zip(infos, images))

            # One KeyframeSet per target, consistent with the published image.
            by_stamp = {f.stamp_ns: (f, m) for f, m in zip(frames, images)}
            assert sets and len(sets) == status.restoration_targets
            restored = 0
            for k in sets:
                frame, msg = by_stamp[stamp_to_ns(k.header.stamp)]
                assert k.target_stamp == k.header.stamp and k.backend == "fusion"
                if k.outcome == KeyframeSet.OUTCOME_RESTORED:
                    restored += 1
                    target = k.views[k.target_index]
                    assert target.is_target and target.header.stamp == k.header.stamp
                    assert len(k.views) >= 2 and all(stamp_to_ns(v.header.stamp) < frame.stamp_ns for v in k.views if not v.is_target)
                    assert target.sharpness_after == pytest.approx(sharpness(_array(msg)), rel=1e-5)
                    assert target.sharpness_before == pytest.approx(sharpness(frame.image), rel=1e-5)
                else:
                    assert k.reason and np.array_equal(_array(msg), frame.image)
            unset = [m for f, m in zip(frames, images) if f.stamp_ns not in {stamp_to_ns(k.header.stamp) for k in sets}]
            assert all(np.array_equal(_array(m), by_stamp[stamp_to_ns(m.header.stamp)][0].image) for m in unset)
            assert restored >= 3 and status.images_restored == restored
            assert status.images_received == status.images_published == len(frames) and status.dropped_total == 0

            # Parameters: checked while running, with reasons.
            bad = _set_param(probe, "mode", ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="fastest"))
            assert not bad.successful and "one of stream, keyframes" in bad.reason
            neg = _set_param(probe, "latency_budget_s", ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=-1.0))
            assert not neg.successful
            ro = _set_param(probe, "num_views", ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=3))
            assert not ro.successful and "read-only" in ro.reason
            ok = _set_param(probe, "mode", ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="keyframes"))
            assert ok.successful
            assert probe.wait_for(lambda: probe.get("status")[-1].msg.mode == "keyframes", 5)

        rc, dt = node.interrupt()
        assert rc == 0 and dt < 2.0, (rc, dt, node.output())
        assert f"received {len(frames)}, published {len(frames)}, dropped 0" in node.output()
        recorder.send_signal(2)
        rec_out = recorder.communicate(timeout=10)[0].decode()
        assert recorder.returncode == 0, rec_out
        replayed = list(read_bag_frames(out_bag, image_topic="/restored/image", info_topic="/restored/camera_info"))
        assert [f.stamp_ns for f in replayed] == [f.stamp_ns for f in frames]
        assert np.array_equal(replayed[-1].image, _array(images[-1]))
    finally:
        node.close()
        if recorder.poll() is None:
            recorder.kill()


def test_demo_runs_small_and_reports(tmp_path: Path) -> None:
    from sirdiff_ros.ros.demo import main

    out = tmp_path / "demo"
    assert main(["--out", str(out), "--frames", "16", "--width", "96", "--height", "72", "--rate", "2", "--backend", "fusion"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["node"]["received"] == report["node"]["published"] == report["recorded_images"] == 16
    assert report["node"]["exit_code"] == 0 and report["node"]["sigint_exit_s"] < 2.0
    assert report["restored_targets"] == report["node"]["restored"]
    assert (out / "report.md").read_text().startswith("# sirdiff_ros demo")
    if report["restored_targets"]:
        assert (out / "demo_grid.png").stat().st_size > 1000


def test_cpu_backends_do_not_import_torch() -> None:
    """passthrough and fusion, configured and activated on the default device (auto), never import torch."""
    code = (
        "import sys, rclpy\n"
        "from rclpy.context import Context\n"
        "from rclpy.parameter import Parameter\n"
        "from sirdiff_ros.ros.restore_node import RestoreNode\n"
        "ctx = Context(); rclpy.init(context=ctx)\n"
        "for b in ('passthrough', 'fusion'):\n"
        "    n = RestoreNode(context=ctx, parameter_overrides=[Parameter('backend', value=b)])\n"
        "    assert n.trigger_configure().to_label() == 'transition_success' and n.trigger_activate().to_label() == 'transition_success'\n"
        "    n.close(); n.destroy_node()\n"
        "rclpy.shutdown(context=ctx)\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "torch imported: False" in res.stdout


def test_node_with_the_sirdiff_backend_on_a_tiny_checkpoint(tmp_path: Path) -> None:
    """The diffusion backend inside the node (torch on the worker thread), over DDS,
    on ``device: auto``: CUDA, else MPS, else the CPU (the choice is logged)."""
    import torch
    from geometry_msgs.msg import PoseStamped

    from sirdiff_ros.model.encoders import SpaceToDepthEncoder
    from sirdiff_ros.model.pipeline import Parametrization, SirDiffPipeline, make_scheduler
    from sirdiff_ros.model.presets import build_model
    from sirdiff_ros.ros.convert import frame_messages

    torch.manual_seed(0)
    unet = build_model("tiny", in_channels=48, cond_channels=48, out_channels=48)
    pipe = SirDiffPipeline(unet, make_scheduler(), SpaceToDepthEncoder(4), Parametrization(residual_scale=0.2))
    ckpt = pipe.save_checkpoint(tmp_path / "tiny", default_steps=2)
    frames = target_rich_frames(9, 64, 48)
    node = NodeProcess(
        {"backend": "sirdiff", "device": "auto", "checkpoint": str(ckpt), "qos_reliability": "reliable", "min_translation": 0.0,
         "latency_budget_s": 30.0},
        log_path=tmp_path / "node.log",
    )
    try:
        with Probe({"image": Image, "camera_info": CameraInfo, "pose": PoseStamped}, OUTPUTS) as probe:
            assert probe.wait_matched(60), node.output()
            for f in frames:
                img, info, pose = frame_messages(f)
                for topic, m in (("pose", pose), ("camera_info", info), ("image", img)):
                    probe.publish(topic, m)
                time.sleep(0.05)
            assert probe.wait_for(lambda: len(probe.get("restored/image")) == len(frames), 60), node.output()
            sets = [r.msg for r in probe.get("keyframe_set")]
            out = {r.stamp_ns: r.msg for r in probe.get("restored/image")}
    finally:
        node.close()
    device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert f"on device auto -> {device} (" in node.output()
    restored = [k for k in sets if k.outcome == KeyframeSet.OUTCOME_RESTORED]
    assert restored and all(k.backend == "sirdiff" and k.device == device and len(k.views) >= 2 for k in restored)
    for k in restored:
        msg = out[stamp_to_ns(k.header.stamp)]
        assert k.views[k.target_index].sharpness_after == pytest.approx(sharpness(_array(msg)), rel=1e-5)
