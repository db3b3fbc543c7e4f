"""The node's ROS-free parts: association, pose history, ordering, worker, stats, parameters, launch file."""

from __future__ import annotations

import ast
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from sirdiff_ros.core.geometry import Pose
from sirdiff_ros.ros import params as P
from sirdiff_ros.ros.association import ApproxTimeSync
from sirdiff_ros.core.pose_history import PoseHistory, PoseLookup, bridged_pose
from sirdiff_ros.core.reasons import Level, PassReason
from sirdiff_ros.ros.sequencer import OutputSequencer
from sirdiff_ros.ros.stats import NodeStats
from sirdiff_ros.ros.worker import RestoreWorker

MS = 1_000_000


# -- association -----------------------------------------------------------------
def test_sync_pairs_closest_within_slop_and_reports_unmatched() -> None:
    s = ApproxTimeSync(2, queue_size=3, slop_ns=5 * MS, timeout_s=1.0)
    assert s.add(0, 100 * MS, "img100", 0.0) == ([], [])
    assert s.add(0, 133 * MS, "img133", 0.0) == ([], [])
    # camera_info 3 ms after img133: pairs with it, not with the older img100.
    matched, _ = s.add(1, 136 * MS, "info136", 0.0)
    assert matched == [["img133", "info136"]]
    # 20 ms off: outside the slop, stays queued.
    assert s.add(1, 120 * MS, "info120", 0.0)[0] == []
    # Overflow evicts the oldest image, reported (not lost silently).
    for stamp in (166, 200, 233):
        _, ev = s.add(0, stamp * MS, f"img{stamp}", 0.0)
    assert [e.msg for e in ev] == ["img100"] and ev[0].why == "overflow"
    # Age-based eviction of everything older than the timeout.
    late = s.expire(now_s=2.0)
    assert sorted(e.msg for e in late if e.input_index == 0) == ["img166", "img200", "img233"]
    assert s.pending(0) == 0 and s.pending(1) == 0


def test_sync_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        ApproxTimeSync(2, 0, 1)
    with pytest.raises(ValueError, match="slop"):
        ApproxTimeSync(2, 1, -1)


# -- pose history ----------------------------------------------------------------
def _pose_x(x: float, yaw_deg: float = 0.0) -> Pose:
    a = math.radians(yaw_deg)
    return Pose.from_quaternion([x, 0, 0], [0, math.sin(a / 2), 0, math.cos(a / 2)])


def test_pose_history_interpolates_waits_and_bounds_extrapolation() -> None:
    h = PoseHistory(capacity=3, max_extrapolation_ns=50 * MS)
    assert h.lookup(0) is PoseLookup.PENDING
    assert h.lookup(0, final=True) is PoseLookup.NO_POSE
    h.add(0, _pose_x(0.0, 0.0))
    h.add(100 * MS, _pose_x(1.0, 20.0))
    mid = h.lookup(25 * MS)
    assert isinstance(mid, Pose)
    assert mid.translation[0] == pytest.approx(0.25)
    assert math.degrees(mid.rotation_angle_to(_pose_x(0.0))) == pytest.approx(5.0, abs=1e-6)
    # Past the newest pose: wait for more unless final; then extrapolate within the bound only.
    assert h.lookup(130 * MS) is PoseLookup.PENDING
    ex = h.lookup(130 * MS, final=True)
    assert isinstance(ex, Pose) and ex.translation[0] == pytest.approx(1.3)
    assert h.lookup(151 * MS, final=True) is PoseLookup.NO_POSE
    assert h.lookup(-60 * MS) is PoseLookup.NO_POSE
    assert not h.add(100 * MS, _pose_x(2.0)), "equal stamps must be refused"
    h.add(200 * MS, _pose_x(2.0))
    h.add(300 * MS, _pose_x(3.0))
    assert len(h) == 3 and h.lookup(0, final=True) is PoseLookup.NO_POSE  # bounded: oldest evicted


def _in_slam_world(gt: Pose, world: Pose, scale: float) -> Pose:
    """``gt`` as a SLAM map with its own world frame and (monocular) scale reports it."""
    return Pose(world.rotation @ gt.rotation, scale * (world.rotation @ gt.translation) + world.translation)


def test_bridged_pose_continues_slam_with_the_fallback_motion_in_slam_units() -> None:
    from sirdiff_ros.data.synth import generate_sequence

    seq = list(generate_sequence(2, 30, 64, 48, speed=0.8))
    q = np.array([0.2, -0.1, 0.3, 0.9])
    world = Pose.from_quaternion([3.0, -1.0, 0.5], q / np.linalg.norm(q))
    slam, odometry = PoseHistory(100, 50 * MS), PoseHistory(100, 50 * MS)
    assert bridged_pose(slam, odometry, seq[0].stamp_ns) is None  # SLAM has no pose yet
    for f in seq:
        odometry.add(f.stamp_ns, f.pose)
    for f in seq[:12]:  # then SLAM is lost
        slam.add(f.stamp_ns, _in_slam_world(f.pose, world, 0.4))
    for f in seq[12:]:
        assert slam.lookup(f.stamp_ns, final=True) is PoseLookup.NO_POSE
        got = bridged_pose(slam, odometry, f.stamp_ns)
        want = _in_slam_world(f.pose, world, 0.4)
        assert got is not None
        np.testing.assert_allclose(got.translation, want.translation, atol=1e-6)
        assert math.degrees(got.rotation_angle_to(want)) < 1e-4
    # No fallback pose at the image's stamp (beyond its own tolerance): none.
    assert bridged_pose(slam, odometry, seq[-1].stamp_ns + 200 * MS) is None
    # A fallback that barely moved over SLAM's window gives no scale: unscaled motion.
    still = PoseHistory(100, 50 * MS)
    for f in seq:
        still.add(f.stamp_ns, seq[0].pose)
    got = bridged_pose(slam, still, seq[20].stamp_ns)
    assert got is not None and np.allclose(got.translation, _in_slam_world(seq[11].pose, world, 0.4).translation)


# -- output ordering -------------------------------------------------------------------
def test_sequencer_keeps_input_order_and_falls_back_after_deadline() -> None:
    out: list[tuple[int, str]] = []
    seq = OutputSequencer(out.append, max_pending=10)
    seq.add_ready(0, (0, "orig"))
    seq.add_pending(1, deadline=10.0, fallback=lambda r: (1, r))
    seq.add_ready(2, (2, "orig"))
    seq.add_pending(3, deadline=20.0, fallback=lambda r: (3, r))
    assert out == [(0, "orig")] and len(seq) == 3  # 2 waits behind pending 1
    assert seq.resolve(3, (3, "restored"))
    assert out == [(0, "orig")]
    assert seq.is_pending(1) and not seq.is_pending(3) and not seq.is_pending(0)
    assert seq.expire(now=15.0) == 1  # 1 misses its budget, 3 is already resolved
    assert not seq.is_pending(1)
    assert out == [(0, "orig"), (1, PassReason.LATENCY_BUDGET), (2, "orig"), (3, "restored")]
    assert not seq.resolve(1, (1, "late")), "a late result must not be published twice"
    with pytest.raises(ValueError):
        seq.add_ready(2, (2, "again"))


def test_sequencer_bounds_held_items() -> None:
    out: list[tuple[int, str]] = []
    seq = OutputSequencer(out.append, max_pending=3)
    seq.add_pending(0, 1e9, lambda r: (0, r))
    seq.add_ready(1, (1, "orig"))
    seq.add_ready(2, (2, "orig"))
    assert out == []
    seq.add_ready(3, (3, "orig"))  # a 4th held item: the pending head falls back
    assert out[0] == (0, PassReason.OUTPUT_FULL) and [o[0] for o in out] == [0, 1, 2, 3]


# -- worker ---------------------------------------------------------------------------
@pytest.mark.parametrize("policy,kept", [("drop_oldest", [0, 3]), ("drop_newest", [0, 1])])
def test_worker_drop_policy(policy: str, kept: list[int]) -> None:
    gate = threading.Event()
    done: list[int] = []
    dropped: list[int] = []

    def run(i: int) -> None:
        gate.wait(5)
        done.append(i)

    w: RestoreWorker[int] = RestoreWorker(run, 1, policy, dropped.append, lambda i, e: None)
    w.submit(0)
    while not w.busy:
        time.sleep(0.001)
    for i in (1, 2, 3):  # queue of 1 while 0 runs
        w.submit(i)
    gate.set()
    deadline = time.monotonic() + 5
    while len(done) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert done == kept
    assert sorted(dropped) == sorted({1, 2, 3} - set(kept))
    assert w.stop(1.0) == []


def test_worker_threads_run_items_at_once_and_drain_together() -> None:
    """Two threads: two items run concurrently (each waits for the other to start);
    wait_idle and stop cover both; a third item waits in the queue meanwhile."""
    started = [threading.Event(), threading.Event()]
    release = threading.Event()
    done: list[int] = []

    def run(i: int) -> None:
        if i < 2:
            started[i].set()
            assert started[1 - i].wait(5), "the other item never ran alongside"
            release.wait(5)
        done.append(i)

    w: RestoreWorker[int] = RestoreWorker(run, 4, "drop_oldest", lambda i: None, lambda i, e: None, threads=2)
    for i in (0, 1, 2):
        w.submit(i)
    assert started[0].wait(5) and started[1].wait(5)
    assert w.running == 2 and w.depth == 1 and not w.wait_idle(0.05)
    release.set()
    assert w.wait_idle(5) and sorted(done) == [0, 1, 2] and w.running == 0
    assert w.stop(1.0) == []
    with pytest.raises(ValueError):
        RestoreWorker(run, 4, "drop_oldest", lambda i: None, lambda i, e: None, threads=0)


def test_worker_survives_a_crashing_job() -> None:
    crashes: list[tuple[int, str]] = []
    done: list[int] = []

    def run(i: int) -> None:
        if i == 0:
            raise MemoryError("out of memory")
        done.append(i)

    w: RestoreWorker[int] = RestoreWorker(run, 4, "drop_oldest", lambda i: None, lambda i, e: crashes.append((i, type(e).__name__)))
    w.submit(0)
    w.submit(1)
    deadline = time.monotonic() + 5
    while not done and time.monotonic() < deadline:
        time.sleep(0.005)
    assert crashes == [(0, "MemoryError")] and done == [1]
    w.stop(1.0)


# -- stats ------------------------------------------------------------------------------
def test_stats_levels_and_percentiles() -> None:
    s = NodeStats()
    for v in range(1, 101):
        s.on_restore_call(float(v), None)
    snap = s.snapshot()
    assert snap.level == Level.OK and snap.latency_ms[0] == pytest.approx(50.5)
    assert snap.latency_ms[2] == pytest.approx(99.01)
    s.on_restore_call(3.0, MemoryError("CUDA out of memory"))
    snap = s.snapshot()
    assert snap.level == Level.ERROR and "MemoryError" in snap.last_error
    s.on_restore_call(3.0, None)  # recovery
    s.on_dropped("size_mismatch")
    snap = s.snapshot()
    assert snap.level == Level.WARN and snap.last_error == "" and snap.dropped == {"size_mismatch": 1}
    assert s.snapshot().level == Level.OK  # WARN is about the last period only


# -- parameters, config file, launch file --------------------------------------------------
def test_params_file_lists_every_parameter_with_the_declared_default(repo_root: Path) -> None:
    data = yaml.safe_load((repo_root / "config" / "restore.yaml").read_text())
    values = data["/**"]["ros__parameters"]
    assert values == P.defaults()
    for name, value in values.items():  # same types, so rclpy accepts the file
        assert type(value) is type(P.SPECS[name].default), name
    assert P.pipeline_config(values).num_views == values["num_views"]


def test_check_value_explains_rejections() -> None:
    assert P.check_value("num_views", 4) is None
    assert "must be >= 1" in P.check_value("num_views", 0)
    assert "one of stream, keyframes" in P.check_value("mode", "fast")
    assert "must be float" in P.check_value("latency_budget_s", "1")
    assert "finite" in P.check_value("latency_budget_s", float("nan"))
    assert "cuda:N" in P.check_value("device", "gpu0")
    assert "unknown parameter" in P.check_value("nope", 1)
    with pytest.raises(ValueError, match="min_depth"):
        P.pipeline_config({**P.defaults(), "min_depth": 5.0, "max_depth": 1.0})


def test_launch_file_declares_the_documented_arguments(repo_root: Path) -> None:
    path = repo_root / "launch" / "restore.launch.py"
    tree = ast.parse(path.read_text())
    compile(tree, str(path), "exec")
    declared = {
        n.args[0].value
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DeclareLaunchArgument"
    }
    assert {"params_file", "namespace", "image", "camera_info", "pose", "depth", "backend", "device"} <= declared
    overrides = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "OVERRIDES")
    for name in ast.literal_eval(overrides.value):
        assert name in P.SPECS and name in declared, name
    assert "generate_launch_description" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def test_readme_parameter_table_is_current(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text()
    assert P.markdown_table() in readme, "regenerate with: python -m sirdiff_ros.ros.params --markdown"


# -- message conversions (rclpy message classes, no DDS) -------------------------------------
def test_conversions_round_trip_and_classify() -> None:
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import Image

    from sirdiff_ros.core.image_codec import encode_image
    from sirdiff_ros.ros.convert import (
        InputRejected,
        camera_info_to_intrinsics,
        depth_from_msg,
        image_from_msg,
        output_image_msg,
        pose_from_msg,
    )

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    src = Image(height=6, width=8, encoding="bgr8")
    src.header.frame_id, src.header.stamp.sec = "cam", 7
    src.step, src.data = encode_image(rgb[..., ::-1], "bgr8")
    assert np.array_equal(image_from_msg(src, 1000), rgb)
    out = output_image_msg(src, 255 - rgb)  # restored image goes back in the input's encoding
    assert out.header.frame_id == "cam" and out.header.stamp.sec == 7 and out.encoding == "bgr8"
    assert np.array_equal(image_from_msg(out, 1000), 255 - rgb)

    depth = Image(height=2, width=2, encoding="16UC1")
    depth.step, depth.data = encode_image(np.array([[1000, 0], [2500, 65535]], np.uint16), "16UC1")
    assert np.allclose(depth_from_msg(depth, 100), [[1.0, 0.0], [2.5, 65.535]])

    ps, od = PoseStamped(), Odometry()
    ps.pose.position.x, ps.pose.orientation.w = 1.5, 1.0
    od.pose.pose.position.y, od.pose.pose.orientation.z, od.pose.pose.orientation.w = -2.0, 1.0, 0.0
    assert pose_from_msg(ps, "pose_stamped").translation.tolist() == [1.5, 0.0, 0.0]
    assert math.degrees(pose_from_msg(od, "odometry").rotation_angle_to(Pose.identity())) == pytest.approx(180.0)
    ps.pose.orientation.x = math.inf
    with pytest.raises(InputRejected) as e:
        pose_from_msg(ps, "pose_stamped")
    assert e.value.kind == "pose_non_finite"
    ps.pose.orientation.x = 0.5
    with pytest.raises(InputRejected) as e:
        pose_from_msg(ps, "pose_stamped")
    assert e.value.kind == "pose_bad_quaternion"

    from sensor_msgs.msg import CameraInfo

    info = CameraInfo(width=8, height=6, k=[5.0, 0, 4, 0, 5.0, 3, 0, 0, 1])
    assert camera_info_to_intrinsics(info).fx == 5.0
    info.k = [0.0] * 9  # an uncalibrated camera publishes zeros
    with pytest.raises(InputRejected) as e:
        camera_info_to_intrinsics(info)
    assert e.value.kind == "bad_camera_info"


def test_a_serialized_image_is_read_like_an_image_and_kept_byte_for_byte() -> None:
    """The node takes images serialized: the fields it reads are the message's, and an
    image that goes out unchanged is the bytes that came."""
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    from sirdiff_ros.core.image_codec import encode_image
    from sirdiff_ros.interfaces import make_typestore
    from sirdiff_ros.ros.convert import InputRejected, image_from_msg, output_image_msg, parse_serialized_image

    rng = np.random.default_rng(1)
    for encoding, shape in (("rgb8", (5, 7, 3)), ("bgr8", (6, 8, 3)), ("mono8", (3, 9)), ("rgba8", (4, 5, 4))):
        rgb = rng.integers(0, 255, shape, dtype=np.uint8)
        src = Image(height=shape[0], width=shape[1], encoding=encoding)
        src.header.frame_id, src.header.stamp.sec, src.header.stamp.nanosec = "camera_optical", -3, 999_999_999
        src.step, src.data = encode_image(rgb[..., ::-1] if encoding == "bgr8" else rgb, encoding)
        raw = serialize_message(src)
        got = parse_serialized_image(raw)
        assert got.serialized is raw and deserialize_message(got.serialized, Image) == src
        assert got.header == src.header and type(got.header) is type(src.header)
        assert (got.height, got.width, got.encoding, got.step, got.is_bigendian) == (src.height, src.width, encoding, src.step, 0)
        assert np.array_equal(image_from_msg(got, 1000), image_from_msg(src, 1000))
        out = output_image_msg(got, 255 - image_from_msg(got, 1000))  # a restored image: a new message, same header
        assert isinstance(out, Image) and out.header == src.header and out.encoding == encoding
    for bad in (raw[:30], raw[:-1], raw + bytes(4), b"", bytes(64), b"\x00\x02" + raw[2:]):
        with pytest.raises(InputRejected) as e:
            parse_serialized_image(bad)
        assert e.value.kind == "bad_message"
    odd = Image(height=1, width=3, encoding="mono8", step=3, data=b"abc")
    raw = serialize_message(odd)
    assert len(raw) % 4 and parse_serialized_image(raw + bytes(-len(raw) % 4)).data.tobytes() == b"abc"  # DDS pads to 4

    # Every padding case of the two strings, either byte order: the fields rosbags reads.
    store = make_typestore()
    for frame_id_len in range(5):
        for encoding in ("mono8", "rgb8", "bgra8", "16UC1"):
            src = Image(height=2, width=3, encoding=encoding, is_bigendian=1, step=7)
            src.header.frame_id, src.header.stamp.sec, src.header.stamp.nanosec = "f" * frame_id_len, 1_700_000_000, 5
            src.data = rng.integers(0, 255, 14, dtype=np.uint8).tobytes()
            msg = store.deserialize_cdr(serialize_message(src), "sensor_msgs/msg/Image")
            for little_endian in (True, False):
                got = parse_serialized_image(bytes(store.serialize_cdr(msg, "sensor_msgs/msg/Image", little_endian=little_endian)))
                assert (got.header.stamp.sec, got.header.stamp.nanosec, got.header.frame_id) == (1_700_000_000, 5, "f" * frame_id_len)
                assert (got.height, got.width, got.encoding, got.is_bigendian, got.step) == (2, 3, encoding, 1, 7)
                assert got.data.tobytes() == src.data.tobytes() and not got.data.flags.writeable


def test_a_serialized_camera_info_is_read_like_the_message_and_republished_as_it_came() -> None:
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import Header

    from sirdiff_ros.interfaces import make_typestore
    from sirdiff_ros.ros.convert import InputRejected, camera_info_to_intrinsics, parse_serialized_camera_info

    store = make_typestore()
    rng = np.random.default_rng(2)
    # Every padding case before the float64 fields, either byte order.
    for frame_id_len in range(5):
        for model, n_d in (("", 0), ("plumb_bob", 5), ("rational_polynomial", 8), ("x", 1)):
            src = CameraInfo(height=480, width=640, distortion_model=model, binning_x=2, binning_y=1)
            src.header.frame_id, src.header.stamp.sec, src.header.stamp.nanosec = "c" * frame_id_len, 12, 345
            src.d = rng.normal(size=n_d).tolist()
            src.k = [500.0 + frame_id_len, 0.0, 320.5, 0.0, 501.0, 240.25, 0.0, 0.0, 1.0]
            src.r, src.p = rng.normal(size=9).tolist(), rng.normal(size=12).tolist()
            src.roi.x_offset, src.roi.width, src.roi.do_rectify = 3, 7, True
            raw = serialize_message(src)
            got = parse_serialized_camera_info(raw)
            assert got.serialized is raw and got.header == src.header
            assert (got.height, got.width, got.k) == (480, 640, tuple(src.k))
            assert camera_info_to_intrinsics(got) == camera_info_to_intrinsics(src)
            msg = store.deserialize_cdr(raw, "sensor_msgs/msg/CameraInfo")
            for little_endian in (True, False):
                other = bytes(store.serialize_cdr(msg, "sensor_msgs/msg/CameraInfo", little_endian=little_endian))
                assert parse_serialized_camera_info(other).k == tuple(src.k)
            # Beside an image with the same header: these bytes; with another one: the message, re-headed.
            assert got.for_header(Header(stamp=src.header.stamp, frame_id=src.header.frame_id)) is raw
            moved = got.for_header(Header(frame_id="image_frame"))
            assert isinstance(moved, CameraInfo) and moved.header.frame_id == "image_frame"
            moved.header = src.header
            assert moved == deserialize_message(raw, CameraInfo)
    for bad in (raw[:60], raw + bytes(4), b"", bytes(80), serialize_message(src.roi)):
        with pytest.raises(InputRejected) as e:
            parse_serialized_camera_info(bad)
        assert e.value.kind == "bad_message"


def test_keyframe_set_fields_fill_the_message() -> None:
    from sirdiff_ros.core.pipeline import PipelineConfig, RestorationPipeline
    from sirdiff_ros.msg import KeyframeSet, ViewInfo
    from sirdiff_ros.ros.convert import fill_message
    from sirdiff_ros.ros.probe import target_rich_frames
    from sirdiff_ros.core.keyframes import KeyframeConfig

    pipe = RestorationPipeline(PipelineConfig(keyframe=KeyframeConfig(min_translation=0.0)), "passthrough")
    outcomes = [pipe.process(f) for f in target_rich_frames(6, 48, 36)]
    target = next(o for o in outcomes if o.decision.is_target and len(o.views) > 1)
    msg = fill_message(KeyframeSet(), target.keyframe_set_fields(), {"views": ViewInfo})
    assert len(msg.views) == len(target.views) and msg.views[msg.target_index].is_target
    assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == target.frame.stamp_ns
    assert msg.views[1].pose.orientation.w == pytest.approx(target.views[1].pose.quaternion[3])
    assert msg.reason == target.reason and msg.outcome == KeyframeSet.OUTCOME_PASSED_THROUGH
    with pytest.raises(AttributeError, match="no field 'bogus'"):
        fill_message(KeyframeSet(), {"bogus": 1})


# -- rclpy of ROS 2 Humble ----------------------------------------------------------------
def test_parameters_apply_without_post_set_callbacks(rclpy_context: Any) -> None:
    """Humble's rclpy has no ``add_post_set_parameters_callback``: changes are then
    applied from the checking callback, and rejected ones are not applied."""
    from rclpy.parameter import Parameter

    from sirdiff_ros.ros.restore_node import RestoreNode

    class HumbleNode(RestoreNode):
        @property
        def add_post_set_parameters_callback(self) -> Any:
            raise AttributeError("not in Humble's rclpy")

    node = HumbleNode(context=rclpy_context, parameter_overrides=[Parameter("backend", value="passthrough")])
    try:
        node.trigger_configure()
        assert not hasattr(node, "add_post_set_parameters_callback")
        ok = node.set_parameters([Parameter("mode", value="keyframes"), Parameter("drop_policy", value="drop_newest")])
        assert all(r.successful for r in ok)
        assert node.cfg["mode"] == "keyframes" and node.worker.policy == "drop_newest"
        bad = node.set_parameters([Parameter("mode", value="fastest")])
        assert not bad[0].successful and "one of stream, keyframes" in bad[0].reason
        assert node.cfg["mode"] == "keyframes" and node.get_parameter("mode").value == "keyframes"
    finally:
        node.close()
        node.destroy_node()
