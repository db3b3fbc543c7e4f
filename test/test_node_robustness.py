"""The node over real DDS, in its own process: bad input, backend faults, bad checkpoints, load.

Each test starts ``sirdiff-restore`` through a small launcher that first
registers a test backend (``test-controlled``: inverts images, or raises /
runs out of memory / sleeps as a control file says) and then calls the
node's ``main()`` — the node under test is the real one.
"""

from __future__ import annotations

import copy
import math
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CameraInfo, Image

from sirdiff_ros.msg import KeyframeSet, RestoreStatus
from sirdiff_ros.ros.convert import frame_messages, ns_to_stamp_fields
from sirdiff_ros.ros.probe import NodeProcess, Probe, target_rich_frames

pytestmark = pytest.mark.timeout(240)

LAUNCHER = textwrap.dedent(
    '''
    import sys, time
    from pathlib import Path
    from sirdiff_ros.core.restorers import RestoredView, RestoreResult, register_restorer

    CONTROL = Path(sys.argv.pop(1))

    @register_restorer("test-controlled")
    class Controlled:
        """Test backend: the control file says raise / oom / sleep S; else it inverts the target."""
        name = "test-controlled"

        def __init__(self, device="cpu"):
            self.device = device

        def restore(self, request):
            mode = CONTROL.read_text().split() if CONTROL.exists() else []
            if mode[:1] == ["raise"]:
                raise RuntimeError("injected backend failure")
            if mode[:1] == ["oom"]:
                raise MemoryError("injected out of memory")
            if mode[:1] == ["sleep"]:
                time.sleep(float(mode[1]))
            views = [RestoredView(i, 255 - request.views[i].image, True) for i in request.targets]
            return RestoreResult(views, self.name, self.device, 0.0)

    from sirdiff_ros.ros.restore_node import main
    sys.exit(main())
    '''
)

INPUTS = {"image": Image, "camera_info": CameraInfo, "pose": PoseStamped}
OUTPUTS = {
    "restored/image": Image,
    "restored/camera_info": CameraInfo,
    "keyframe_set": KeyframeSet,
    "status": RestoreStatus,
    "/diagnostics": DiagnosticArray,
}
# Every frame a keyframe, so that the blur gate alone picks the targets.
BASE_PARAMS = {"qos_reliability": "reliable", "qos_depth": 200, "min_translation": 0.0, "diagnostics_period_s": 0.25, "sync_timeout_s": 0.3}


def start_node(tmp_path: Path, control: str = "", **params: Any) -> tuple[NodeProcess, Path]:
    launcher = tmp_path / "launch_with_test_backend.py"
    launcher.write_text(LAUNCHER)
    control_file = tmp_path / "control"
    if control:
        control_file.write_text(control)
    node = NodeProcess(
        {**BASE_PARAMS, "backend": "test-controlled", **params},
        command=[sys.executable, str(launcher), str(control_file)],
        log_path=tmp_path / "node.log",
    )
    return node, control_file


def send(probe: Probe, frame: Any) -> None:
    img, info, pose = frame_messages(frame)
    probe.publish("pose", pose)
    probe.publish("camera_info", info)
    probe.publish("image", img)


def latest_status(probe: Probe) -> RestoreStatus:
    return probe.get("status")[-1].msg


def settled(probe: Probe, received: int) -> bool:
    st = probe.get("status")
    return bool(st) and st[-1].msg.images_received == received and st[-1].msg.in_flight == 0


def diag_values(probe: Probe) -> tuple[int, str, dict[str, str]]:
    ds = probe.get("/diagnostics")[-1].msg.status[0]
    return ds.level[0] if isinstance(ds.level, bytes) else int(ds.level), ds.message, {kv.key: kv.value for kv in ds.values}


def wait_diag(probe: Probe, ok: Any, timeout: float = 10.0) -> tuple[int, str, dict[str, str]]:
    """The newest /diagnostics values once ``ok(level, message, values)`` holds (a loaded host
    publishes them late), else the newest ones, for the caller's assertion to show."""
    probe.wait_for(lambda: bool(probe.get("/diagnostics")) and ok(*diag_values(probe)), timeout)
    return diag_values(probe)


@pytest.fixture(scope="module")
def small_frames() -> list[Any]:
    return target_rich_frames(48, 64, 48)


# -- bad input -----------------------------------------------------------------------------
def _stamp(msg: Any, ns: int) -> Any:
    msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_stamp_fields(ns)
    return msg


def _malformed(frame: Any, last_ns: int) -> list[tuple[str, str, Any]]:
    """(topic, expected drop/reject kind, message) for one cycle, stamps after ``frame``'s."""
    t = frame.stamp_ns
    ms = 1_000_000
    img, info, pose = frame_messages(frame)
    out: list[tuple[str, str, Any]] = []

    def image(offset_ms: float, **fields: Any) -> Image:
        m = copy.deepcopy(img)
        for k, v in fields.items():
            setattr(m, k, v)
        return _stamp(m, t + int(offset_ms * ms))

    n = img.height * img.step
    out.append(("image", "bad_encoding", image(1, encoding="yuv_unknown")))
    out.append(("image", "bad_encoding", image(2, encoding="32FC1", step=img.width * 4, data=bytes(img.width * 4 * img.height))))
    out.append(("image", "step_mismatch", image(3, step=img.width)))  # rgb8 declared, mono step
    out.append(("image", "size_mismatch", image(4, data=bytes(img.data)[: n // 2])))  # truncated
    out.append(("image", "zero_size", image(5, width=0, step=0, data=b"")))
    out.append(("image", "bad_message", serialize_message(image(5.5))[:40]))  # bytes that are no Image (truncated)
    out.append(("image", "too_large", image(6, height=img.height * 2, width=img.width * 2, step=img.step * 2, data=bytes(4 * n))))
    out.append(("image", "stamp_backwards", image(-30)))  # earlier than the valid image just sent
    out.append(("image", "duplicate_stamp", image(0)))
    wrong = image(7)
    wrong.header.frame_id = "some_other_camera"
    out.append(("image", "wrong_frame_id", wrong))
    out.append(("image", "no_camera_info", image(10)))  # never gets a camera_info
    for kind, offset, mutate in (
        ("camera_info_mismatch", 20, lambda c: setattr(c, "width", c.width * 2)),
        ("bad_camera_info", 30, lambda c: setattr(c, "k", [math.nan] + list(c.k)[1:])),
    ):
        ci = copy.deepcopy(info)
        mutate(ci)
        out.append(("camera_info", "", _stamp(ci, t + offset * ms)))
        out.append(("image", kind, image(offset)))
    for kind, offset, q in (("pose_non_finite", 40, (math.nan, 0, 0, 1)), ("pose_bad_quaternion", 50, (0.5, 0.5, 0.5, 0.9))):
        p = copy.deepcopy(pose)
        p.pose.orientation.x, p.pose.orientation.y, p.pose.orientation.z, p.pose.orientation.w = q
        out.append(("pose", kind, _stamp(p, t + offset * ms)))
    back = copy.deepcopy(pose)
    out.append(("pose", "pose_stamp_backwards", _stamp(back, t - 60 * ms)))
    # Bytes that are no CameraInfo (truncated): rejected, their image (if any) would wait in vain.
    out.append(("camera_info", "camera_info_bad_message", serialize_message(_stamp(copy.deepcopy(info), t + 60 * ms))[:50]))
    return out


def test_bad_input_is_counted_logged_and_valid_frames_all_come_out(tmp_path: Path, small_frames: list[Any]) -> None:
    w, h = small_frames[0].width, small_frames[0].height
    # The malformed stamps are 10 ms apart, the default sync slop: a smaller slop pins each camera_info to
    # its own image (at 10 ms the sync may pair a neighbour's, depending on which topic arrives first).
    # sync_timeout_s 1 s: a loaded host may stall the node that long between an image and its camera_info.
    node, _ = start_node(tmp_path, backend="passthrough", expected_frame_id=small_frames[0].frame_id,
                         max_image_pixels=w * h * 2, sync_slop_s=0.002, sync_timeout_s=1.0)
    try:
        with Probe(INPUTS, OUTPUTS) as probe:
            assert probe.wait_matched(), node.output()
            expected: dict[str, int] = {}
            images_sent = 0
            valid = small_frames[:20]
            for f in valid:
                send(probe, f)
                images_sent += 1
                for topic, kind, msg in _malformed(f, f.stamp_ns):
                    probe.publish(topic, msg)
                    images_sent += topic == "image"
                    if kind:
                        expected[kind] = expected.get(kind, 0) + 1
                time.sleep(0.05)
            malformed = sum(expected.values()) + 2 * len(valid)  # + the two bad camera_infos per cycle
            assert malformed >= 200 and len(expected) >= 10
            assert probe.wait_for(lambda: settled(probe, images_sent), 20), latest_status(probe)
            time.sleep(0.4)
            assert node.alive(), node.output()

            # Every valid frame came out, in order, with its header; nothing else did.
            out = [r.msg for r in probe.get("restored/image")]
            assert [(m.header.stamp.sec, m.header.stamp.nanosec) for m in out] == [
                ns_to_stamp_fields(f.stamp_ns) for f in valid
            ]
            st = latest_status(probe)
            drops = dict(zip(st.drop_reasons, st.drop_counts))
            kinds = ("pose_non_finite", "pose_bad_quaternion", "pose_stamp_backwards", "camera_info_bad_message")
            image_kinds = {k: v for k, v in expected.items() if k not in kinds}
            assert drops == image_kinds
            assert st.images_received == images_sent == st.images_published + st.dropped_total
            _, _, values = wait_diag(probe, lambda _l, _m, v: all(v.get(f"rejected.{k}") == str(expected[k]) for k in kinds))
            for kind in kinds:
                assert values[f"rejected.{kind}"] == str(expected[kind])
    finally:
        node.close()
    log = node.output()
    for kind in expected:
        lines = [ln for ln in log.splitlines() if f"({kind})" in ln]
        # Logged with a reason, and rate-limited (one line per kind per 5 s here).
        assert 1 <= len(lines) <= 2, (kind, lines)
        assert len(lines[0].split(":", 2)[-1].strip()) > 20, lines[0]
    # An image without camera_info is given up on by the timeout or the queue bound, and the line names which.
    no_info = next(ln for ln in log.splitlines() if "(no_camera_info)" in ln)
    assert "arrived within sync_timeout_s=1.0 s" in no_info or "(sync_queue_size)" in no_info, no_info


# -- backend faults ------------------------------------------------------------------------
def test_backend_failure_publishes_originals_reports_error_and_recovers(tmp_path: Path, small_frames: list[Any]) -> None:
    # Room in the queue and in the budget: on a loaded machine a burst of 9 targets must still reach
    # the backend, so that backend_error is the only reason a target is passed through here.
    node, control = start_node(tmp_path, queue_size=20, latency_budget_s=30.0)
    frames = iter(small_frames)
    try:
        with Probe(INPUTS, OUTPUTS) as probe:
            assert probe.wait_matched(), node.output()

            def phase(mode: str, n: int) -> list[tuple[Any, Any]]:
                """Send n frames with the backend in ``mode``; (frame, KeyframeSet) of its targets."""
                if mode:
                    control.write_text(mode)
                elif control.exists():
                    control.unlink()
                sent = [next(frames) for _ in range(n)]
                for f in sent:
                    send(probe, f)
                    time.sleep(0.03)
                last = sent[-1].stamp_ns
                assert probe.wait_for(lambda: any(r.stamp_ns == last for r in probe.get("restored/image")), 10)
                by_stamp = {r.stamp_ns: r.msg for r in probe.get("keyframe_set")}
                time.sleep(0.6)  # two diagnostics periods
                return [(f, by_stamp[f.stamp_ns]) for f in sent if f.stamp_ns in by_stamp]

            def image_of(frame: Any) -> np.ndarray:
                m = next(r.msg for r in probe.get("restored/image") if r.stamp_ns == frame.stamp_ns)
                return np.frombuffer(bytes(m.data), np.uint8).reshape(m.height, m.width, 3)

            ok = phase("", 9)
            assert any(k.outcome == KeyframeSet.OUTCOME_RESTORED for _, k in ok)
            for f, k in ok:
                if k.outcome == KeyframeSet.OUTCOME_RESTORED:
                    assert np.array_equal(image_of(f), 255 - f.image)
            assert wait_diag(probe, lambda lv, _m, _v: lv == 0)[0] == 0

            for mode, err in (("raise", "RuntimeError"), ("oom", "MemoryError")):
                bad = phase(mode, 9)
                assert bad and all(k.outcome == KeyframeSet.OUTCOME_PASSED_THROUGH and k.reason == "backend_error" for _, k in bad), [
                    (k.outcome, k.reason, round(k.end_to_end_ms)) for _, k in bad
                ]
                for f, _ in bad:
                    assert np.array_equal(image_of(f), f.image), "the original must be published"
                level, message, values = wait_diag(probe, lambda lv, msg, _v, err=err: lv == 2 and err in msg)
                assert level == 2 and err in message and err in values["last_error"]
                assert err in latest_status(probe).last_error
                assert node.alive()

            again = phase("", 9)
            assert any(k.outcome == KeyframeSet.OUTCOME_RESTORED for _, k in again)
            level, _, values = wait_diag(probe, lambda lv, _m, v: lv == 0 and v.get("last_error") == "")
            assert level == 0 and values["last_error"] == ""
    finally:
        node.close()


# -- start-up failures ---------------------------------------------------------------------
@pytest.mark.parametrize("corrupt", [False, True])
def test_missing_or_corrupt_checkpoint_fails_at_startup_naming_the_file(tmp_path: Path, corrupt: bool) -> None:
    ckpt = tmp_path / "my-model"
    if corrupt:
        ckpt.mkdir()
        (ckpt / "config.json").write_text('{"_class_name": "SirDiffUNet"}')
        (ckpt / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage" * 10)
    node = NodeProcess({"backend": "sirdiff", "checkpoint": str(ckpt)}, log_path=tmp_path / "node.log")
    try:
        rc = node.wait(60)
    finally:
        node.close()
    out = node.output()
    assert rc == 2, out
    assert str(ckpt) in out and "cannot create backend 'sirdiff'" in out
    if corrupt:
        assert "diffusion_pytorch_model.safetensors" in out


def test_invalid_parameter_fails_at_startup_with_a_clear_message(tmp_path: Path) -> None:
    node = NodeProcess({"mode": "fastest"}, log_path=tmp_path / "node.log")
    rc = node.wait(30)
    node.close()
    assert rc == 2 and "mode must be one of stream, keyframes; got 'fastest'" in node.output()
    node = NodeProcess({"num_views": 0}, log_path=tmp_path / "node2.log")
    rc = node.wait(30)
    node.close()
    assert rc == 2 and "num_views" in node.output()
    node = NodeProcess({"latency_budget_s": -1}, log_path=tmp_path / "node3.log")  # an int for a float: still checked
    rc = node.wait(30)
    node.close()
    assert rc == 2 and "latency_budget_s must be >= 0.0, got -1.0" in node.output()


# -- load --------------------------------------------------------------------------------------
def test_load_30hz_vga_with_slow_backend_bounded_memory_and_full_accounting(tmp_path: Path) -> None:
    base = target_rich_frames(12, 640, 480)
    node, _ = start_node(tmp_path, control="sleep 0.25", latency_budget_s=1.0, queue_size=2, num_views=4, num_views_under_load=2)
    period, duration = 1 / 30, 32.0
    rss: list[tuple[float, int]] = []
    try:
        with Probe(INPUTS, OUTPUTS, depth=20) as probe:
            assert probe.wait_matched(), node.output()
            msgs = [frame_messages(f) for f in base]
            t0 = time.monotonic()
            i = 0
            while time.monotonic() - t0 < duration:
                img, info, pose = msgs[i % len(msgs)]
                stamp = ns_to_stamp_fields(int(i * period * 1e9))
                for m in (img, info, pose):
                    m.header.stamp.sec, m.header.stamp.nanosec = stamp
                probe.publish("pose", pose)
                probe.publish("camera_info", info)
                probe.publish("image", img)
                i += 1
                if i % 30 == 0:
                    rss.append((time.monotonic() - t0, node.rss_bytes()))
                time.sleep(max(0.0, t0 + i * period - time.monotonic()))
            sent = i

            def drained() -> bool:
                # A status sent after the last output: a status from the middle of the stream
                # can also show nothing in flight, between two targets.
                st = latest_status(probe)
                return st.in_flight == 0 and st.images_published == len(probe.get("restored/image"))

            assert probe.wait_for(drained, 15), latest_status(probe)
            st = latest_status(probe)
            got = len(probe.get("restored/image"))
            restored_sets = [r.msg for r in probe.get("keyframe_set") if r.msg.outcome == KeyframeSet.OUTCOME_RESTORED]
            _, _, values = wait_diag(probe, lambda level, msg, v: int(v["restored"]) == st.images_restored)
            assert node.alive()
        rc, dt = node.interrupt()
        assert rc == 0 and dt < 2.0, (rc, dt)
    finally:
        node.close()
    assert st.images_received >= 0.9 * sent  # reliable DDS; a few may be lost on a loaded host
    assert st.images_received == st.images_published + st.dropped_total and st.in_flight == 0
    assert got == st.images_published
    # Targets arrive at ~10 Hz, the backend manages 4 Hz: some restored, the rest passed through.
    assert st.restoration_targets > 200 and st.images_restored > 50
    assert st.images_restored + st.images_passed_through == st.restoration_targets
    # Targets wait behind the slow backend: most go to it with num_views_under_load views, the best of 4.
    sizes = [len(k.views) for k in restored_sets]
    fewer = int(values["targets_with_fewer_views"])
    assert len(sizes) == st.images_restored and set(sizes) <= {2, 3, 4}, sizes
    assert sizes.count(2) >= fewer - (st.restoration_targets - st.images_restored) and fewer > 0.5 * len(sizes), (fewer, sizes)
    # Memory: the second half's peak within 40 MB of the first half's (bounded queues, no leak).
    first = max(v for t, v in rss if t < duration / 2)
    second = max(v for t, v in rss if t >= duration / 2)
    assert second - first < 40 * 2**20, rss


def test_sigint_during_a_long_restoration_exits_within_2s(tmp_path: Path, small_frames: list[Any]) -> None:
    node, _ = start_node(tmp_path, control="sleep 30")
    try:
        with Probe(INPUTS, OUTPUTS) as probe:
            assert probe.wait_matched(), node.output()
            for f in small_frames[:8]:
                send(probe, f)
                time.sleep(0.02)
            # A target is inside the backend's 30 s call.
            assert probe.wait_for(lambda: bool(probe.get("status")) and latest_status(probe).in_flight > 0
                                  and latest_status(probe).restoration_targets > 0, 10)
        rc, dt = node.interrupt()
    finally:
        node.close()
    assert rc == 0 and dt < 2.0, (rc, dt, node.output())
    assert "shutting down: received 8" in node.output()


def test_late_poses_are_waited_for_and_frames_without_pose_pass_through(tmp_path: Path, small_frames: list[Any]) -> None:
    node, _ = start_node(tmp_path, pose_wait_s=0.5)
    frames = small_frames[:16]
    assert [f.seq for f in frames] == list(range(16))
    with_pose, without_pose = frames[:12], frames[12:]
    try:
        with Probe(INPUTS, OUTPUTS) as probe:
            assert probe.wait_matched(), node.output()
            late = None
            for f in frames:
                img, info, pose = frame_messages(f)
                probe.publish("camera_info", info)
                probe.publish("image", img)
                if late is not None:
                    probe.publish("pose", late)  # the SLAM stack's pose of the previous image, one image late
                late = pose if f.seq < len(with_pose) else None
                time.sleep(0.05)
            if late is not None:
                probe.publish("pose", late)
            assert probe.wait_for(lambda: settled(probe, len(frames)), 15), node.output()
            out = [r.stamp_ns for r in probe.get("restored/image")]
            sets = {r.stamp_ns: r.msg for r in probe.get("keyframe_set")}
    finally:
        node.close()
    assert out == [f.stamp_ns for f in frames]
    restored = [s for s, k in sets.items() if k.outcome == KeyframeSet.OUTCOME_RESTORED]
    assert len(restored) >= 3 and max(restored) <= with_pose[-1].stamp_ns
    assert not set(sets) & {f.stamp_ns for f in without_pose}, "frames without a pose cannot be targets"


def test_while_slam_is_lost_the_fallback_pose_source_keeps_frames_posed(tmp_path: Path, small_frames: list[Any]) -> None:
    """SLAM publishes poses (its own world frame and scale) for the first frames, then none; the
    odometry on ``fallback_pose_topic`` keeps the rest posed, in SLAM's world, so they are restored."""
    import dataclasses

    from sirdiff_ros.core.geometry import Pose

    node, _ = start_node(tmp_path, fallback_pose_topic="odom", fallback_pose_type="pose_stamped", pose_wait_s=0.2)
    frames = small_frames[:24]
    tracked, lost = frames[:12], frames[12:]
    q = np.array([0.1, 0.2, -0.3, 0.9])
    world, scale = Pose.from_quaternion([2.0, 1.0, -0.5], q / np.linalg.norm(q)), 0.5

    def in_slam_world(p: Pose) -> Pose:
        return Pose(world.rotation @ p.rotation, scale * (world.rotation @ p.translation) + world.translation)

    try:
        with Probe({**INPUTS, "odom": PoseStamped}, OUTPUTS) as probe:
            assert probe.wait_matched(), node.output()
            for f in frames:
                img, info, odom = frame_messages(f)
                probe.publish("odom", odom)
                if f.seq < len(tracked):
                    probe.publish("pose", frame_messages(dataclasses.replace(f, pose=in_slam_world(f.pose)), "map")[2])
                probe.publish("camera_info", info)
                probe.publish("image", img)
                time.sleep(0.05)
            assert probe.wait_for(lambda: settled(probe, len(frames)), 20), node.output()
            _, _, values = wait_diag(probe, lambda lv, msg, v: v.get("pose_source.fallback") == str(len(lost)))
            sets = {r.stamp_ns: r.msg for r in probe.get("keyframe_set")}
    finally:
        node.close()
    assert values.get("pose_source.fallback") == str(len(lost)), values
    assert values.get("pose_source.pose_topic") == str(len(tracked)) and "pose_source.none" not in values
    restored_lost = [f for f in lost if f.stamp_ns in sets and sets[f.stamp_ns].outcome == KeyframeSet.OUTCOME_RESTORED]
    assert len(restored_lost) >= 2, "targets after SLAM's loss must still be restored"
    for f in restored_lost:  # each target's pose continues SLAM's trajectory, in its frame and scale
        p = sets[f.stamp_ns].views[0].pose.position
        np.testing.assert_allclose([p.x, p.y, p.z], in_slam_world(f.pose).translation, atol=1e-3)


def test_an_image_waits_for_its_depth_image_that_arrives_after_it(tmp_path: Path, small_frames: list[Any]) -> None:
    """Depth comes on its own subscription and can arrive after its colour image and camera_info
    have paired: the image waits for it (up to pose_wait_s) instead of going without, and
    /diagnostics counts images admitted with and without depth."""
    from sirdiff_ros.ros.convert import depth_message

    node, _ = start_node(tmp_path, depth_topic="depth", pose_wait_s=1.0)
    frames = small_frames[:12]
    assert all(f.depth is not None for f in frames)
    try:
        with Probe({**INPUTS, "depth": Image}, OUTPUTS) as probe:
            assert probe.wait_matched(), node.output()
            for f in frames:
                img, info, pose = frame_messages(f)
                depth = depth_message(f, img.header)
                probe.publish("pose", pose)
                probe.publish("camera_info", info)
                probe.publish("image", img)
                time.sleep(0.1)  # the depth image follows its colour image
                probe.publish("depth", depth)
            # One image without any depth image: it goes without, after its wait.
            img, info, pose = frame_messages(small_frames[12])
            probe.publish("pose", pose)
            probe.publish("camera_info", info)
            probe.publish("image", img)
            n = len(frames) + 1
            assert probe.wait_for(lambda: settled(probe, n), 30), node.output()
            _, _, values = wait_diag(probe, lambda lv, msg, v: v.get("depth.missing") == "1")
            out = probe.get("restored/image")
    finally:
        node.close()
    assert len(out) == n
    assert values.get("depth.attached") == str(len(frames)) and values.get("depth.missing") == "1", values
