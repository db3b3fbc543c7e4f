"""Bags: field-exact round trips (mcap, db3), topic detection, truncation, a real ROS 1 bag."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from sirdiff_ros.core.frame import Frame
from sirdiff_ros.core.geometry import CameraIntrinsics
from sirdiff_ros.data.bags import (
    DEFAULT_TOPICS,
    BagReadError,
    BagTopics,
    TopicDetectionError,
    detect_topics,
    read_bag_frames,
    write_frames_bag,
)
from sirdiff_ros.data.synth import generate_sequence
from sirdiff_ros.interfaces import make_typestore


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    return list(generate_sequence(17, 4, 64, 48))


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.mark.parametrize("fmt", ["mcap", "db3"])
def test_every_written_message_reads_back_with_identical_fields(tmp_path: Path, frames: list[Frame], fmt: str) -> None:
    bag = tmp_path / "bag"
    assert write_frames_bag(bag, frames, fmt) == len(frames)
    assert list(bag.glob(f"*.{fmt}"))
    by_topic: dict[str, list] = {}
    with AnyReader([bag], default_typestore=make_typestore()) as reader:
        for conn, log_ns, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            assert log_ns == _stamp(msg)  # log time == header stamp
            by_topic.setdefault(conn.topic, []).append((conn.msgtype, msg))
    assert set(by_topic) == set(DEFAULT_TOPICS)
    for i, f in enumerate(frames):
        mtype, img = by_topic[DEFAULT_TOPICS.image][i]
        assert mtype == "sensor_msgs/msg/Image" and img.encoding == "rgb8" and img.is_bigendian == 0
        assert (img.height, img.width, img.step) == (48, 64, 64 * 3)
        assert _stamp(img) == f.stamp_ns and img.header.frame_id == "camera_optical"
        assert bytes(img.data) == f.image.tobytes()
        _, info = by_topic[DEFAULT_TOPICS.info][i]
        assert _stamp(info) == f.stamp_ns and info.header.frame_id == f.frame_id
        assert (info.width, info.height, info.distortion_model) == (64, 48, "plumb_bob")
        np.testing.assert_array_equal(info.k, f.intrinsics.K.reshape(-1))
        np.testing.assert_array_equal(np.asarray(info.p).reshape(3, 4)[:, :3], f.intrinsics.K)
        np.testing.assert_array_equal(info.d, np.zeros(5))
        _, pose = by_topic[DEFAULT_TOPICS.pose][i]
        assert _stamp(pose) == f.stamp_ns and pose.header.frame_id == "world"
        p, o = pose.pose.position, pose.pose.orientation
        np.testing.assert_array_equal([p.x, p.y, p.z], f.pose.translation)
        np.testing.assert_array_equal([o.x, o.y, o.z, o.w], f.pose.quaternion)
        _, sharp = by_topic[DEFAULT_TOPICS.gt][i]
        assert sharp.encoding == "rgb8" and bytes(sharp.data) == f.extras["sharp"].tobytes()
        assert _stamp(sharp) == f.stamp_ns
        _, depth = by_topic[DEFAULT_TOPICS.depth][i]
        assert depth.encoding == "32FC1" and depth.step == 64 * 4 and _stamp(depth) == f.stamp_ns
        np.testing.assert_array_equal(np.frombuffer(bytes(depth.data), "<f4").reshape(48, 64), f.depth)


@pytest.mark.parametrize("fmt", ["mcap", "db3"])
def test_read_bag_frames_restores_the_frames(tmp_path: Path, frames: list[Frame], fmt: str) -> None:
    write_frames_bag(tmp_path / "bag", frames, fmt)
    assert detect_topics(tmp_path / "bag") == DEFAULT_TOPICS
    back = list(read_bag_frames(tmp_path / "bag"))
    assert len(back) == len(frames)
    for a, b in zip(frames, back):
        assert b.stamp_ns == a.stamp_ns and b.seq == a.seq and b.frame_id == a.frame_id
        assert b.intrinsics == a.intrinsics
        assert np.array_equal(b.image, a.image) and np.array_equal(b.extras["sharp"], a.extras["sharp"])
        assert np.array_equal(b.depth, a.depth)
        np.testing.assert_allclose(b.pose.matrix(), a.pose.matrix(), atol=1e-12)


def test_pose_is_interpolated_at_image_stamps(tmp_path: Path, frames: list[Frame]) -> None:
    # Poses only at even frames: odd frames get the pose interpolated between their neighbours.
    write_frames_bag(tmp_path / "full", frames, "mcap")
    sparse = [Frame(f.image, f.stamp_ns, f.intrinsics, f.pose if i % 2 == 0 else None, f.depth, f.frame_id, f.seq,
                    dict(f.extras)) for i, f in enumerate(frames)]
    write_frames_bag(tmp_path / "sparse", sparse, "mcap")
    back = list(read_bag_frames(tmp_path / "sparse", max_pose_gap_s=0.05))
    truth = frames[1].pose
    got = back[1].pose
    assert got is not None
    assert got.distance_to(truth) < 0.2 * frames[0].pose.distance_to(frames[2].pose)
    assert back[3].pose is None  # 0.1 s past the last pose: beyond the 0.05 s extrapolation bound
    assert list(read_bag_frames(tmp_path / "sparse", max_pose_gap_s=0.2))[3].pose is not None


def test_topic_detection_errors_are_clear(tmp_path: Path, frames: list[Frame]) -> None:
    topics = BagTopics("/cam_a/image_raw", "/cam_a/camera_info", None, None, None)
    write_frames_bag(tmp_path / "a", frames[:1], "mcap", topics=topics)
    assert detect_topics(tmp_path / "a") == topics
    with pytest.raises(TopicDetectionError, match="not in the bag"):
        detect_topics(tmp_path / "a", image_topic="/nope")
    two = BagTopics("/cam_b/left", "/cam_b/camera_info", None, None, None)
    other = BagTopics("/cam_b/right", None, None, None, None)
    bag = tmp_path / "two"
    from sirdiff_ros.data.bags import FrameBagWriter

    with FrameBagWriter(bag, "mcap", two) as w:
        w.write(frames[0])
        w.topics = other
        w.write(frames[1])
    with pytest.raises(TopicDetectionError, match="several camera image topics.*image_topic="):
        detect_topics(bag)
    assert detect_topics(bag, image_topic="/cam_b/right").info == "/cam_b/camera_info"
    no_info = BagTopics("/cam/image_raw", None, None, None, None)
    write_frames_bag(tmp_path / "noinfo", frames[:1], "db3", topics=no_info)
    with pytest.raises(TopicDetectionError, match="no CameraInfo topic"):
        list(read_bag_frames(tmp_path / "noinfo"))
    (f,) = read_bag_frames(tmp_path / "noinfo", intrinsics=frames[0].intrinsics)
    assert f.pose is None and np.array_equal(f.image, frames[0].image)


def test_truncated_mcap_yields_readable_frames_then_raises(tmp_path: Path) -> None:
    frames = list(generate_sequence(18, 14, 160, 120))  # > 1 MB: several MCAP chunks
    write_frames_bag(tmp_path / "bag", frames, "mcap")
    (mcap,) = (tmp_path / "bag").glob("*.mcap")
    os.truncate(mcap, int(mcap.stat().st_size * 0.7))
    got = []
    with pytest.raises(BagReadError, match="unreadable"):
        for f in read_bag_frames(tmp_path / "bag"):
            got.append(f)
    assert 0 < len(got) < len(frames)
    for a, b in zip(frames, got):
        assert np.array_equal(a.image, b.image) and a.stamp_ns == b.stamp_ns


def test_unreadable_bags_raise_bag_read_error(tmp_path: Path, frames: list[Frame]) -> None:
    with pytest.raises(BagReadError, match="does not exist"):
        list(read_bag_frames(tmp_path / "missing"))
    write_frames_bag(tmp_path / "db", frames, "db3")
    (db,) = (tmp_path / "db").glob("*.db3")
    os.truncate(db, db.stat().st_size // 3)
    with pytest.raises(BagReadError):
        list(read_bag_frames(tmp_path / "db"))
    junk = tmp_path / "junk.bag"
    junk.write_bytes(b"#ROSBAG V2.0\n" + b"\x00" * 64)
    with pytest.raises(BagReadError):
        detect_topics(junk)


def test_real_ros1_bag_reads_with_given_topic_and_intrinsics(shared_data: Path) -> None:
    bag = shared_data / "t265_bag" / "trimmed_locoffice.bag"
    with pytest.raises(TopicDetectionError, match="fisheye1.*fisheye2"):
        detect_topics(bag)
    line = next(ln for ln in (shared_data / "t265_bag" / "kapture_sensors.txt").read_text().splitlines()
                if ln.startswith("001"))
    w, h, fx, fy, cx, cy = (float(v) for v in line.split(",")[4:10])
    K = CameraIntrinsics(fx, fy, cx, cy, int(w), int(h))  # pinhole part of the fisheye calibration
    frames = list(read_bag_frames(bag, image_topic="/camera/fisheye1/image_raw", intrinsics=K))
    assert len(frames) == 3
    stamps = [f.stamp_ns for f in frames]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] < 100_000_000
    for f in frames:
        assert f.image.shape == (800, 848) and f.image.dtype == np.uint8 and f.image.std() > 5
        assert f.frame_id == "camera_fisheye1_optical_frame"
        assert f.pose is not None  # odometry at 200 Hz, interpolated at the image stamp
    assert 0 < frames[0].pose.distance_to(frames[-1].pose) < 0.5


def test_mcap_scan_matches_rosbags_on_a_complete_file(tmp_path: Path, frames: list[Frame]) -> None:
    from sirdiff_ros.data.mcap_scan import McapTruncatedError, mcap_channels, scan_mcap

    write_frames_bag(tmp_path / "bag", frames, "mcap")
    (mcap,) = (tmp_path / "bag").glob("*.mcap")
    with AnyReader([tmp_path / "bag"], default_typestore=make_typestore()) as reader:
        expected = [(c.topic, c.msgtype, t, bytes(raw)) for c, t, raw in reader.messages()]
        types = {c.topic: c.msgtype for c in reader.connections}
    scanned = [(m.topic, m.msgtype, m.log_time_ns, m.data) for m in scan_mcap(mcap)]
    assert sorted(scanned) == sorted(expected)
    assert mcap_channels(mcap) == types
    assert [m.topic for m in scan_mcap(mcap, {DEFAULT_TOPICS.pose})] == [DEFAULT_TOPICS.pose] * len(frames)
    (tmp_path / "x.mcap").write_bytes(b"not mcap")
    with pytest.raises(McapTruncatedError, match="bad magic"):
        list(scan_mcap(tmp_path / "x.mcap"))


def test_compressed_images_odometry_and_16bit_depth(tmp_path: Path, frames: list[Frame]) -> None:
    """A typical robot bag: CompressedImage (PNG), Odometry poses, 16UC1 depth in millimetres."""
    import cv2
    from rosbags.rosbag2 import Writer

    from sirdiff_ros.core.image_codec import encode_image

    store = make_typestore()
    T = store.types
    bag = tmp_path / "robot"
    with Writer(bag, version=9) as w:
        conns = {
            topic: w.add_connection(topic, msgtype, typestore=store)
            for topic, msgtype in (
                ("/cam/image_raw/compressed", "sensor_msgs/msg/CompressedImage"),
                ("/cam/camera_info", "sensor_msgs/msg/CameraInfo"),
                ("/odom", "nav_msgs/msg/Odometry"),
                ("/cam/depth/image_raw", "sensor_msgs/msg/Image"),
            )
        }
        for f in frames:
            stamp = T["builtin_interfaces/msg/Time"](sec=5, nanosec=f.stamp_ns)
            hdr = T["std_msgs/msg/Header"](stamp=stamp, frame_id="cam")
            ok, png = cv2.imencode(".png", cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
            assert ok
            msg = T["sensor_msgs/msg/CompressedImage"](header=hdr, format="rgb8; png compressed bgr8",
                                                       data=np.frombuffer(png.tobytes(), np.uint8))
            K = f.intrinsics
            info = T["sensor_msgs/msg/CameraInfo"](
                header=hdr, height=K.height, width=K.width, distortion_model="plumb_bob", d=np.zeros(5),
                k=K.K.reshape(-1), r=np.eye(3).reshape(-1), p=np.zeros(12), binning_x=0, binning_y=0,
                roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
            g = "geometry_msgs/msg/"
            p, q = f.pose.translation, f.pose.quaternion
            pose = T[g + "PoseWithCovariance"](
                pose=T[g + "Pose"](position=T[g + "Point"](x=p[0], y=p[1], z=p[2]),
                                   orientation=T[g + "Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])),
                covariance=np.zeros(36))
            twist = T[g + "TwistWithCovariance"](
                twist=T[g + "Twist"](linear=T[g + "Vector3"](x=0.0, y=0.0, z=0.0),
                                     angular=T[g + "Vector3"](x=0.0, y=0.0, z=0.0)), covariance=np.zeros(36))
            odom = T["nav_msgs/msg/Odometry"](header=T["std_msgs/msg/Header"](stamp=stamp, frame_id="odom"),
                                              child_frame_id="cam", pose=pose, twist=twist)
            mm = np.round(f.depth * 1000).astype(np.uint16)
            step, data = encode_image(mm, "16UC1")
            depth = T["sensor_msgs/msg/Image"](header=hdr, height=mm.shape[0], width=mm.shape[1], encoding="16UC1",
                                               is_bigendian=0, step=step, data=np.frombuffer(data, np.uint8))
            t = 5_000_000_000 + f.stamp_ns
            for topic, m in (("/cam/image_raw/compressed", msg), ("/cam/camera_info", info), ("/odom", odom),
                             ("/cam/depth/image_raw", depth)):
                w.write(conns[topic], t, store.serialize_cdr(m, conns[topic].msgtype))
    topics = detect_topics(bag)
    assert topics == BagTopics("/cam/image_raw/compressed", "/cam/camera_info", "/odom", None, "/cam/depth/image_raw")
    back = list(read_bag_frames(bag))
    assert len(back) == len(frames)
    for a, b in zip(frames, back):
        assert b.stamp_ns == 5_000_000_000 + a.stamp_ns and b.frame_id == "cam"
        assert np.array_equal(b.image, a.image)  # PNG is lossless; BGR turned back into RGB
        assert np.abs(b.depth - a.depth).max() <= 0.0005 + 1e-6
        np.testing.assert_allclose(b.pose.matrix(), a.pose.matrix(), atol=1e-12)


def test_ros1_bag_with_camera_info_and_poses(tmp_path: Path, frames: list[Frame]) -> None:
    """ROS 1 message layouts differ (Header.seq, CameraInfo.K): read through the same path."""
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    from sirdiff_ros.core.image_codec import encode_image

    store = get_typestore(Stores.ROS1_NOETIC)
    T = store.types
    g = "geometry_msgs/msg/"
    bag = tmp_path / "old.bag"
    with Writer(bag) as w:
        conns = [w.add_connection(t, m, typestore=store) for t, m in (
            ("/camera/image_raw", "sensor_msgs/msg/Image"), ("/camera/camera_info", "sensor_msgs/msg/CameraInfo"),
            ("/camera/pose", g + "PoseStamped"))]
        for i, f in enumerate(frames):
            t = 1_000_000_000 + f.stamp_ns
            hdr = T["std_msgs/msg/Header"](seq=i, stamp=T["builtin_interfaces/msg/Time"](sec=t // 10**9,
                                                                                        nanosec=t % 10**9),
                                           frame_id="cam")
            step, data = encode_image(f.image, "rgb8")
            img = T["sensor_msgs/msg/Image"](header=hdr, height=48, width=64, encoding="rgb8", is_bigendian=0,
                                             step=step, data=np.frombuffer(data, np.uint8))
            info = T["sensor_msgs/msg/CameraInfo"](
                header=hdr, height=48, width=64, distortion_model="plumb_bob", D=np.zeros(5),
                K=f.intrinsics.K.reshape(-1), R=np.eye(3).reshape(-1), P=np.zeros(12), binning_x=0, binning_y=0,
                roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
            p, q = f.pose.translation, f.pose.quaternion
            pose = T[g + "PoseStamped"](header=hdr, pose=T[g + "Pose"](
                position=T[g + "Point"](x=p[0], y=p[1], z=p[2]),
                orientation=T[g + "Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])))
            for conn, msg in zip(conns, (img, info, pose)):
                w.write(conn, t, store.serialize_ros1(msg, conn.msgtype))
    back = list(read_bag_frames(bag))
    assert len(back) == len(frames)
    for a, b in zip(frames, back):
        assert b.stamp_ns == 1_000_000_000 + a.stamp_ns and b.intrinsics == a.intrinsics
        assert np.array_equal(b.image, a.image)
        np.testing.assert_allclose(b.pose.matrix(), a.pose.matrix(), atol=1e-12)
