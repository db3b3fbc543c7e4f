"""rclpy messages <-> the core's values, with every rejection classified.

Image decoding itself is :mod:`sirdiff_ros.core.image_codec`; this module adds
the ROS message plumbing (headers, stamps, camera_info, poses, output
messages). Each rejection raises :class:`InputRejected` with a short ``kind``
that the node counts and logs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.geometry import CameraIntrinsics, GeometryError, Pose
from ..core.reasons import DropReason
from ..core.image_codec import ImageDecodeError, decode_image_msg, encode_image, from_rgb8, to_rgb8
from . import cdr

__all__ = [
    "InputRejected",
    "stamp_to_ns",
    "ns_to_stamp_fields",
    "camera_info_to_intrinsics",
    "pose_from_msg",
    "image_from_msg",
    "SerializedImage",
    "parse_serialized_image",
    "SerializedCameraInfo",
    "parse_serialized_camera_info",
    "depth_from_msg",
    "output_image_msg",
    "fill_message",
    "frame_messages",
]


class InputRejected(ValueError):
    """An input message the node cannot use; ``kind`` is the counted reason."""

    def __init__(self, kind: DropReason, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp_fields(ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> ``(sec, nanosec)`` (``sec`` may be negative for ns < 0)."""
    sec, nsec = divmod(int(ns), 1_000_000_000)
    return sec, nsec


def camera_info_to_intrinsics(info: Any) -> CameraIntrinsics:
    """Pinhole intrinsics from a ``sensor_msgs/CameraInfo`` (or a :class:`SerializedCameraInfo`): its ``k``,
    width and height; rejects invalid calibrations."""
    try:
        return CameraIntrinsics.from_camera_info(list(info.k), int(info.width), int(info.height))
    except (GeometryError, ValueError) as exc:
        raise InputRejected(DropReason.BAD_CAMERA_INFO, f"camera_info rejected: {exc}") from exc


def pose_from_msg(msg: Any, pose_type: str) -> Pose:
    """``T_world_cam`` from a PoseStamped or an Odometry message; rejects NaN/inf and non-unit quaternions."""
    p = msg.pose if pose_type == "pose_stamped" else msg.pose.pose
    t = (p.position.x, p.position.y, p.position.z)
    q = (p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w)
    if not all(math.isfinite(v) for v in t + q):
        raise InputRejected(DropReason.POSE_NON_FINITE, f"pose has non-finite values: t={t} q={q}")
    try:
        return Pose.from_quaternion(t, q)
    except GeometryError as exc:
        raise InputRejected(DropReason.POSE_BAD_QUATERNION, f"pose rejected: {exc}") from exc


def image_from_msg(msg: Any, max_pixels: int) -> np.ndarray:
    """Camera image as the core's uint8 (H, W, 3) RGB or (H, W) mono array.

    Raises :class:`ImageDecodeError` (``kind`` from the codec) for anything else,
    including float (depth) encodings on an image topic.
    """
    arr = decode_image_msg(msg, max_pixels=max_pixels)
    return to_rgb8(arr, msg.encoding)


@dataclass
class SerializedImage:
    """A ``sensor_msgs/Image`` taken serialized: its fields, and the bytes to republish as they came.

    An image the node passes on unchanged goes out as ``serialized``, byte for
    byte and without serializing it again. ``header`` is an rclpy
    ``std_msgs/Header`` (the outputs share it); ``data`` the pixel bytes (uint8).
    """

    serialized: bytes
    header: Any
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: np.ndarray


def parse_serialized_image(serialized: bytes) -> SerializedImage:
    """A :class:`SerializedImage` from a raw subscription's CDR bytes (``data`` is a
    read-only view of the pixels in ``serialized``); :class:`InputRejected`
    (``bad_message``) when they are not a ``sensor_msgs/Image``."""
    try:
        r = cdr.CdrReader(serialized)
        header = _header(r)
        height, width = r.uint32(2)
        encoding = r.string()
        is_bigendian = r.uint8()
        (step,) = r.uint32()
        offset, size = r.byte_sequence()
        r.end()
    except cdr.READ_ERRORS as exc:
        raise InputRejected(DropReason.BAD_MESSAGE, f"{len(serialized)} bytes are not a sensor_msgs/Image: {exc}") from exc
    data = np.frombuffer(serialized, np.uint8, size, offset)
    return SerializedImage(serialized, header, height, width, encoding, is_bigendian, step, data)


@dataclass
class SerializedCameraInfo:
    """A ``sensor_msgs/CameraInfo`` taken serialized: the calibration the node reads, and
    the bytes to republish as they came.

    ``k`` is the row-major 3x3 intrinsic matrix, as in the message; ``header`` an
    rclpy ``std_msgs/Header``.
    """

    serialized: bytes
    header: Any
    height: int
    width: int
    k: tuple[float, ...]

    def for_header(self, header: Any) -> Any:
        """What to publish beside an image with ``header``: these very bytes when the
        headers agree (a driver stamps both alike), else the message with ``header``
        (an approximate pairing)."""
        if header == self.header:
            return self.serialized
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import CameraInfo

        msg = deserialize_message(self.serialized, CameraInfo)
        msg.header = header
        return msg


def parse_serialized_camera_info(serialized: bytes) -> SerializedCameraInfo:
    """A :class:`SerializedCameraInfo` from a raw subscription's CDR bytes;
    :class:`InputRejected` (``bad_message``) when they are not a ``sensor_msgs/CameraInfo``.

    Every field is read, to check the message's length; size and K are kept."""
    try:
        r = cdr.CdrReader(serialized)
        header = _header(r)
        height, width = r.uint32(2)
        r.string()  # distortion_model
        (n_d,) = r.uint32()
        if n_d > len(serialized) // 8:
            raise ValueError(f"{n_d} distortion coefficients cannot fit in {len(serialized)} bytes")
        r.float64(n_d)  # d
        k = r.float64(9)
        r.float64(9 + 12)  # r, p
        r.uint32(6)  # binning_x, binning_y, roi.x_offset, roi.y_offset, roi.height, roi.width
        r.uint8()  # roi.do_rectify
        r.end()
    except cdr.READ_ERRORS as exc:
        raise InputRejected(DropReason.BAD_MESSAGE, f"{len(serialized)} bytes are not a sensor_msgs/CameraInfo: {exc}") from exc
    return SerializedCameraInfo(serialized, header, height, width, k)


def _header(r: cdr.CdrReader) -> Any:
    """The ``std_msgs/Header`` at the reader's position, as an rclpy message."""
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    sec, nanosec, frame_id = r.stamp_and_frame_id()
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def depth_from_msg(msg: Any, max_pixels: int) -> np.ndarray:
    """Metric depth, float32 metres (0 invalid), from 32FC1 (m) or 16UC1/mono16 (mm)."""
    arr = decode_image_msg(msg, max_pixels=max_pixels)
    if msg.encoding == "32FC1":
        depth = np.where(np.isfinite(arr), arr, 0.0).astype(np.float32)
        return np.maximum(depth, 0.0)
    if msg.encoding in ("16UC1", "mono16"):
        return arr.astype(np.float32) / 1000.0
    raise ImageDecodeError(DropReason.BAD_ENCODING, f"depth encoding must be 32FC1 or 16UC1, got {msg.encoding!r}")


def output_image_msg(template: Any, rgb: np.ndarray) -> Any:
    """A new Image like ``template`` (an Image or a :class:`SerializedImage`: same header,
    encoding, size) carrying ``rgb``.

    ``rgb`` is the core's layout; it is converted back to the input's encoding.
    """
    from sensor_msgs.msg import Image

    out = Image()
    out.header = template.header
    out.height, out.width = int(rgb.shape[0]), int(rgb.shape[1])
    out.encoding = template.encoding
    out.is_bigendian = 0
    step, data = encode_image(from_rgb8(rgb, template.encoding), template.encoding)
    out.step = step
    out.data = data
    return out


def fill_message(msg: Any, values: dict[str, Any], factories: dict[str, type] | None = None) -> Any:
    """Set ``msg``'s fields from a nested dict of plain values; returns ``msg``.

    Nested dicts fill sub-messages; a list of dicts fills a sequence of
    sub-messages built by ``factories[field]``; an ``int`` for a
    ``builtin_interfaces/Time`` field is nanoseconds; numpy scalars become
    Python numbers. Unknown field names raise ``AttributeError`` (a typo must
    not be silently ignored).
    """
    factories = factories or {}
    for key, value in values.items():
        if not hasattr(msg, key):
            raise AttributeError(f"{type(msg).__name__} has no field {key!r}")
        current = getattr(msg, key)
        if isinstance(value, dict):
            fill_message(current, value, factories)
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
            if key not in factories:
                raise TypeError(f"no message type given for the sequence field {key!r}")
            setattr(msg, key, [fill_message(factories[key](), v, factories) for v in value])
        elif _is_time(current) and isinstance(value, (int, np.integer)):
            current.sec, current.nanosec = ns_to_stamp_fields(int(value))
        else:
            if isinstance(value, np.generic):
                value = value.item()
            if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            setattr(msg, key, value)
    return msg


def _is_time(obj: Any) -> bool:
    return hasattr(obj, "sec") and hasattr(obj, "nanosec")


def frame_messages(frame: Any, pose_frame: str = "world") -> tuple[Any, Any, Any]:
    """``(Image rgb8/mono8, CameraInfo, PoseStamped)`` rclpy messages of a core Frame.

    Used to feed the node from generated frames (bench, tests, tools); all
    three share the frame's stamp. The pose message is None without a pose.
    """
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CameraInfo, Image

    sec, nsec = ns_to_stamp_fields(frame.stamp_ns)
    img = Image()
    img.header.stamp.sec, img.header.stamp.nanosec = sec, nsec
    img.header.frame_id = frame.frame_id
    img.height, img.width = frame.height, frame.width
    img.encoding = "rgb8" if frame.image.ndim == 3 else "mono8"
    img.step, img.data = encode_image(frame.image, img.encoding)
    info = CameraInfo()
    info.header = img.header
    info.height, info.width = frame.height, frame.width
    K = frame.intrinsics
    info.k = [K.fx, 0.0, K.cx, 0.0, K.fy, K.cy, 0.0, 0.0, 1.0]
    info.p = [K.fx, 0.0, K.cx, 0.0, 0.0, K.fy, K.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    pose = None
    if frame.pose is not None:
        pose = PoseStamped()
        pose.header.stamp = img.header.stamp
        pose.header.frame_id = pose_frame
        t, q = frame.pose.translation, frame.pose.quaternion
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in t)
        o = pose.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in q)
    return img, info, pose


def depth_message(frame: Any, header: Any) -> Any:
    """The frame's metric depth as a ``sensor_msgs/Image`` (32FC1, metres) with ``header``
    (the colour image's: a depth camera registered to it)."""
    from sensor_msgs.msg import Image

    if frame.depth is None:
        raise ValueError("the frame has no depth")
    msg = Image(header=header, height=frame.height, width=frame.width, encoding="32FC1")
    msg.step, msg.data = encode_image(np.ascontiguousarray(frame.depth, dtype=np.float32), "32FC1")
    return msg
