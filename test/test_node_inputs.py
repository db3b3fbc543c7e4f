"""Inputs robots really produce: CompressedImage streams, and bags replayed in a loop
with simulated time (stamps and /clock jumping back)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from sirdiff_ros.data.bags import DEFAULT_TOPICS, write_frames_bag
from sirdiff_ros.msg import KeyframeSet, RestoreStatus
from sirdiff_ros.ros.convert import frame_messages, stamp_to_ns
from sirdiff_ros.ros.probe import NodeProcess, Probe, target_rich_frames

pytestmark = pytest.mark.timeout(240)

OUTPUTS = {"restored/image": Image, "restored/camera_info": CameraInfo, "keyframe_set": KeyframeSet, "status": RestoreStatus}
BASE = {"backend": "fusion", "qos_reliability": "reliable", "qos_depth": 100, "min_translation": 0.0,
        "latency_budget_s": 10.0, "diagnostics_period_s": 0.2}


def _array(msg: Any) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, -1).squeeze()


def _compressed(img: Image, codec: str) -> CompressedImage:
    rgb = np.frombuffer(bytes(img.data), np.uint8).reshape(img.height, img.width, 3)
    ok, buf = cv2.imencode(f".{codec}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95] if codec == "jpg" else [])
    assert ok
    fmt = "rgb8; jpeg compressed bgr8" if codec == "jpg" else "rgb8; png compressed bgr8"
    return CompressedImage(header=img.header, format=fmt, data=buf.tobytes())


def test_compressed_jpeg_and_png_in_restored_raw_images_out(tmp_path: Path) -> None:
    frames = target_rich_frames(24, 96, 72)
    node = NodeProcess({**BASE, "input_transport": "compressed"}, log_path=tmp_path / "node.log")
    inputs = {"image/compressed": CompressedImage, "camera_info": CameraInfo, "pose": PoseStamped}
    try:
        with Probe(inputs, OUTPUTS) as probe:
            assert probe.wait_matched(), node.output()
            sent: dict[int, tuple[Any, str]] = {}
            for i, f in enumerate(frames):
                img, info, pose = frame_messages(f)
                codec = "jpg" if i % 2 == 0 else "png"
                probe.publish("pose", pose)
                probe.publish("camera_info", info)
                msg = _compressed(img, codec)
                probe.publish("image/compressed", msg)
                decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                sent[f.stamp_ns] = (f, codec, decoded)
                time.sleep(0.05)
            broken = CompressedImage(header=img.header, format="jpeg", data=b"\xff\xd8 not a jpeg")
            broken.header.stamp.sec += 10
            probe.publish("image/compressed", broken)
            n = len(frames)
            assert probe.wait_for(lambda: len(probe.get("restored/image")) == n, 30), node.output()
            assert probe.wait_for(lambda: probe.get("status")[-1].msg.images_received == n + 1, 10)
            out = [r.msg for r in probe.get("restored/image")]
            sets = {stamp_to_ns(r.msg.header.stamp): r.msg for r in probe.get("keyframe_set")}
            infos = [r.msg for r in probe.get("restored/camera_info")]
            status = probe.get("status")[-1].msg
    finally:
        node.close()
    # Every image out as a raw Image, in order, with its header; camera_info alongside.
    assert [stamp_to_ns(m.header.stamp) for m in out] == [f.stamp_ns for f in frames]
    assert all(m.header.frame_id == frames[0].frame_id and m.encoding == "rgb8" and (m.width, m.height) == (96, 72) for m in out)
    assert [i.header.stamp for i in infos] == [m.header.stamp for m in out]
    restored = {"jpg": 0, "png": 0}
    for m in out:
        frame, codec, decoded = sent[stamp_to_ns(m.header.stamp)]
        k = sets.get(stamp_to_ns(m.header.stamp))
        if codec == "png":  # lossless
            assert np.array_equal(decoded, frame.image)
        if k is not None and k.outcome == KeyframeSet.OUTCOME_RESTORED:
            restored[codec] += 1
            assert not np.array_equal(_array(m), decoded)
        else:  # passed through: the decoded input, bit for bit
            assert np.array_equal(_array(m), decoded)
    assert restored["jpg"] >= 1 and restored["png"] >= 1, restored
    # Counted like raw images: the undecodable one is a counted drop.
    assert status.images_received == n + 1 and status.images_published == n and status.in_flight == 0
    assert dict(zip(status.drop_reasons, status.drop_counts)) == {"bad_compressed": 1}
    assert "(bad_compressed)" in node.output()


def _player(bag: Path, *args: str) -> subprocess.Popen[str]:
    code = "import sys; from sirdiff_ros.ros.bag_tools import play_main; sys.exit(play_main())"
    return subprocess.Popen([sys.executable, "-c", code, str(bag), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _passes(stamps: list[int]) -> list[list[int]]:
    """Split a stamp sequence where it jumps back."""
    out: list[list[int]] = [[]]
    for s in stamps:
        if out[-1] and s < out[-1][-1]:
            out.append([])
        out[-1].append(s)
    return out


def test_bag_replayed_in_a_loop_with_sim_time_republishes_the_second_pass(tmp_path: Path) -> None:
    frames = target_rich_frames(20, 64, 48)  # 10 Hz: a 1.9 s jump back at each loop
    bag = tmp_path / "loop"
    write_frames_bag(bag, frames)
    stamps = [f.stamp_ns for f in frames]
    topics = [DEFAULT_TOPICS.image, DEFAULT_TOPICS.info, DEFAULT_TOPICS.pose]
    params = {**BASE, "use_sim_time": True, "image_topic": topics[0], "camera_info_topic": topics[1], "pose_topic": topics[2]}
    node = NodeProcess(params, log_path=tmp_path / "node.log")
    player = None
    try:
        with Probe({}, {**OUTPUTS, "/clock": Clock}) as probe:
            assert probe.wait_for(lambda: all(probe.node.count_publishers(t) for t in OUTPUTS), 20), node.output()
            player = _player(bag, "--loop", "--clock", "--rate", "2", "--wait-subscribers", "10", "--topics", *topics)
            # Two whole passes out, and the third begun: the second is complete. The probe
            # matches the player's /clock on its own schedule (passes can be over before
            # it does), so it also waits for /clock to reach it.
            assert probe.wait_for(lambda: len(_passes([r.stamp_ns for r in probe.get("restored/image")])) >= 3, 60), node.output()
            assert probe.wait_for(lambda: len(probe.get("/clock")) > 0, 30), "no /clock from the player"
            player.send_signal(signal.SIGINT)
            assert player.wait(15) == 0, player.stdout.read() if player.stdout else ""
            time.sleep(1.0)
            out = [r.stamp_ns for r in probe.get("restored/image")]
            status = probe.get("status")[-1].msg
            clock = [stamp_to_ns(r.msg.clock) for r in probe.get("/clock")]
    finally:
        if player is not None and player.poll() is None:
            player.kill()
        node.close()
    passes = _passes(out)
    assert passes[1] == stamps, (len(passes[1]), len(stamps))
    assert passes[0] == stamps[-len(passes[0]):]  # the first pass too, from where the node matched
    assert status.time_jumps == len(passes) - 1
    assert status.images_received == status.images_published + status.dropped_total + status.in_flight
    # The node ran on the bag's clock: its status stamps lie in the bag's time span.
    assert clock and min(clock) >= stamps[0] and stamp_to_ns(status.header.stamp) <= stamps[-1]
    assert stamp_to_ns(status.header.stamp) >= stamps[0]
    log = node.output()
    assert log.count("time jumped back by") == len(passes) - 1
    assert "stamp_backwards" not in log
