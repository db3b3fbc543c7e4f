"""``sirdiff-orbslam``: a thin ROS 2 node around ORB-SLAM3 that publishes the camera pose.

Subscribes ``image`` (sensor_msgs/Image; e.g. the restore node's
``restored/image``), ``camera_info`` and, in ``rgbd`` mode, ``depth``
(32FC1 metres or 16UC1 millimetres, paired with images by stamp); tracks
each image with ORB-SLAM3 (:class:`~sirdiff_ros.slam.orbslam.OrbSlam`,
created on the first CameraInfo) and publishes ``pose``
(geometry_msgs/PoseStamped, ``T_world_cam`` in ORB-SLAM3's map frame
``world_frame``, the image's stamp) for every frame it tracks. That topic
is what the restore node's ``pose_topic`` takes, which closes the loop
camera -> restore node -> ORB-SLAM3 -> pose -> restore node.

Parameters: ``mode`` (mono | rgbd), ``vocabulary`` (a DBoW2 text file;
empty: ``$PYORBSLAM3_VOCAB`` or the built-in synthetic one), ``fps`` (the
camera's rate, for ORB-SLAM3's keyframe timing), ``features`` (ORB
features per frame; 0: 2000 monocular, 1200 RGB-D),
``world_frame``, ``qos_reliability``, ``queue_size`` (images kept while
ORB-SLAM3 starts or falls behind), ``sync_slop_s`` (image/depth pairing),
``states_file`` (a CSV of every frame's stamp, state and pose written at
shutdown; empty: none). A frame that cannot be used (no calibration yet,
size mismatch, undecodable, no depth) is counted and logged, never fatal.
Needs the optional extra ``sirdiff_ros[slam]``.
"""

from __future__ import annotations

import sys
from collections import Counter, deque
from pathlib import Path
from typing import Any

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from ..core.image_codec import ImageDecodeError
from ..ros.association import ApproxTimeSync
from ..ros.spin import run_node
from ..ros.convert import InputRejected, camera_info_to_intrinsics, depth_from_msg, image_from_msg, stamp_to_ns
from .orbslam import OrbSlam, SlamInput, SlamUnavailable, TrackedFrame, require_slam

__all__ = ["OrbSlamNode", "main", "write_states", "read_states"]

MAX_PIXELS = 4096 * 4096


class OrbSlamNode(Node):
    """See the module docstring."""

    def __init__(self) -> None:
        super().__init__("orbslam3")
        require_slam()  # fail at startup, not on the first CameraInfo
        self.mode = str(self.declare_parameter("mode", "mono").value)
        if self.mode not in ("mono", "rgbd"):
            raise ValueError(f"parameter mode must be mono or rgbd, got {self.mode!r}")
        self.vocabulary_param = str(self.declare_parameter("vocabulary", "").value)
        self.fps = float(self.declare_parameter("fps", 30.0).value)
        # 0: the mode's default (DEFAULT_FEATURES: more for monocular).
        self.features = int(self.declare_parameter("features", 0).value)
        self.world_frame = str(self.declare_parameter("world_frame", "map").value)
        reliability = str(self.declare_parameter("qos_reliability", "reliable").value)
        slop_s = float(self.declare_parameter("sync_slop_s", 0.005).value)
        queue_size = int(self.declare_parameter("queue_size", 200).value)
        self.states_file = str(self.declare_parameter("states_file", "").value)
        from .vocabulary import resolve_vocabulary

        # Resolved now (a missing file is a startup error); ORB-SLAM3 itself starts on the first CameraInfo.
        self.vocabulary = resolve_vocabulary(self.vocabulary_param or None, announce=self.get_logger().info)
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            # Deep: ORB-SLAM3 loads its vocabulary (seconds) on the first CameraInfo while images keep coming.
            depth=queue_size,
            reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT,
        )
        self.slam: OrbSlam | None = None
        self.intrinsics: Any = None
        self.tracked: list[TrackedFrame] = []
        self.drops: Counter[str] = Counter()
        self._last_state = ""
        # Images that came before the first CameraInfo (they often race it), tracked once ORB-SLAM3 starts.
        self._early: deque[tuple[Any, Any]] = deque(maxlen=queue_size)
        self.pose_pub = self.create_publisher(PoseStamped, "pose", 10)
        self.create_subscription(CameraInfo, "camera_info", self._on_info, qos)
        self.create_subscription(Image, "image", self._on_image, qos)
        self._sync: ApproxTimeSync | None = None
        if self.mode == "rgbd":
            self._sync = ApproxTimeSync(2, queue_size=queue_size, slop_ns=int(slop_s * 1e9))
            self.create_subscription(Image, "depth", self._on_depth, qos)
        self.get_logger().info(
            f"ORB-SLAM3 {self.mode}; vocabulary {self.vocabulary.path} ({self.vocabulary.source}); "
            f"publishing {self.pose_pub.topic_name} in frame {self.world_frame!r}"
        )

    # -- inputs ------------------------------------------------------------------
    def _drop(self, reason: str, message: str) -> None:
        self.drops[reason] += 1
        self.get_logger().warning(f"frame dropped ({reason}, {self.drops[reason]} so far): {message}",
                                  throttle_duration_sec=5.0)

    def _on_info(self, msg: Any) -> None:
        try:
            K = camera_info_to_intrinsics(msg)
        except InputRejected as exc:
            return self._drop("bad_camera_info", str(exc))
        if self.slam is not None:
            if (K.width, K.height) != (self.intrinsics.width, self.intrinsics.height):
                self._drop("camera_info_changed", "image size changed; ORB-SLAM3 keeps its first calibration")
            return
        self.intrinsics = K
        self.get_logger().info(f"starting ORB-SLAM3 for a {K.width}x{K.height} camera (fx {K.fx:.1f})")
        self.slam = OrbSlam(self.vocabulary.path, K, self.mode, self.fps, features=self.features or None)
        while self._early:
            self._track(*self._early.popleft())

    def _on_image(self, msg: Any) -> None:
        if self._sync is None:
            self._track(msg, None)
        else:
            self._pair(0, msg)

    def _on_depth(self, msg: Any) -> None:
        self._pair(1, msg)

    def _pair(self, index: int, msg: Any) -> None:
        if self._sync is None:
            return
        matched, evicted = self._sync.add(index, stamp_to_ns(msg.header.stamp), msg, 0.0)
        for ev in evicted:
            if ev.input_index == 0:
                self._drop("no_depth", f"image at {ev.stamp_ns} ns found no depth within the slop")
        for image_msg, depth_msg in matched:
            self._track(image_msg, depth_msg)

    def _track(self, msg: Any, depth_msg: Any) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        if self.slam is None:
            if len(self._early) == self._early.maxlen:
                self._drop("no_camera_info", "no CameraInfo received yet")
            self._early.append((msg, depth_msg))
            return
        try:
            image = image_from_msg(msg, MAX_PIXELS)
            depth = depth_from_msg(depth_msg, MAX_PIXELS) if depth_msg is not None else None
        except (ImageDecodeError, InputRejected) as exc:
            return self._drop("bad_image", str(exc))
        if image.shape[:2] != (self.intrinsics.height, self.intrinsics.width) or (
                depth is not None and depth.shape != image.shape[:2]):
            return self._drop("size_mismatch", f"image {image.shape[1]}x{image.shape[0]} does not match the calibration")
        try:
            tracked = self.slam.track(SlamInput(stamp, image, depth))
        except ValueError as exc:
            return self._drop("slam_rejected", str(exc))
        self.tracked.append(tracked)
        if tracked.state != self._last_state:
            self.get_logger().info(f"tracking state {tracked.state} at frame {len(self.tracked) - 1}")
            self._last_state = tracked.state
        if tracked.pose is None:
            return
        out = PoseStamped()
        out.header.stamp = msg.header.stamp
        out.header.frame_id = self.world_frame
        t, q = tracked.pose.translation, tracked.pose.quaternion
        out.pose.position.x, out.pose.position.y, out.pose.position.z = (float(v) for v in t)
        (out.pose.orientation.x, out.pose.orientation.y, out.pose.orientation.z,
         out.pose.orientation.w) = (float(v) for v in q)
        self.pose_pub.publish(out)

    # -- shutdown ----------------------------------------------------------------
    def close(self) -> None:
        """Stop ORB-SLAM3 and write ``states_file``."""
        if self.slam is not None:
            self.slam.close()
        if self.states_file:
            write_states(Path(self.states_file), self.tracked)
            self.get_logger().info(f"{len(self.tracked)} frame states written to {self.states_file}")


def write_states(path: Path, tracked: list[TrackedFrame]) -> None:
    """CSV ``stamp_ns,state,tx,ty,tz,qx,qy,qz,qw`` (pose columns empty when not tracked)."""
    lines = ["stamp_ns,state,tx,ty,tz,qx,qy,qz,qw"]
    for t in tracked:
        pose = "" if t.pose is None else ",".join(f"{v:.9g}" for v in (*t.pose.translation, *t.pose.quaternion))
        lines.append(f"{t.stamp_ns},{t.state},{pose or ',,,,,,'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def read_states(path: Path) -> tuple[list[int], list[str], list[Any]]:
    """The CSV of :func:`write_states` back as (stamps, states, poses or None)."""
    from ..core.geometry import Pose

    stamps, states, poses = [], [], []
    for line in Path(path).read_text().splitlines()[1:]:
        parts = line.split(",")
        stamps.append(int(parts[0]))
        states.append(parts[1])
        poses.append(Pose.from_quaternion([float(v) for v in parts[2:5]], [float(v) for v in parts[5:9]])
                     if parts[2] else None)
    return stamps, states, poses


def main(args: list[str] | None = None) -> int:
    """``sirdiff-orbslam [--ros-args ...]``; exit code 2 when ORB-SLAM3 or its vocabulary is missing."""
    return run_node("sirdiff-orbslam", OrbSlamNode, (SlamUnavailable, ValueError), args=args)


if __name__ == "__main__":
    sys.exit(main())
