"""Frames to and from ROS bags with rosbags (no ROS installation needed).

Writing (:class:`FrameBagWriter`, :func:`write_frames_bag`) produces a ROS 2
bag (``mcap`` or ``db3``) with, per frame, all stamped with the frame's
``stamp_ns`` (header stamp and bag log time):

===============================  =============================  =====================
topic                            type                           content
===============================  =============================  =====================
``/camera/image_raw``            sensor_msgs/Image ``rgb8``     camera (blurred) image
``/camera/camera_info``          sensor_msgs/CameraInfo         K, P, plumb_bob, d = 0
``/camera/pose``                 geometry_msgs/PoseStamped      T_world_cam, ``world``
``/ground_truth/image_sharp``    sensor_msgs/Image ``rgb8``     ``extras['sharp']``
``/ground_truth/depth``          sensor_msgs/Image ``32FC1``    metric depth, 0 = none
===============================  =============================  =====================

Image, camera-info and ground-truth headers carry the frame's ``frame_id``.

Reading (:func:`read_bag_frames`) takes ROS 1 ``.bag`` and ROS 2 ``.db3`` /
``.mcap`` bags through ``AnyReader``; topics are chosen by
:func:`detect_topics` unless given. Each camera image becomes a
:class:`~sirdiff_ros.core.frame.Frame` with the CameraInfo nearest in stamp,
the pose interpolated at the image stamp (``PoseStamped``,
``PoseWithCovarianceStamped`` or ``Odometry``; used as T_world_cam of the
image's optical frame) and ground truth matched by stamp. A bag that breaks
part-way yields every frame read before the break, then raises
:class:`BagReadError`; an MCAP file cut short (no footer, which rosbags
cannot open) is scanned record by record up to the cut. A truncated
``.db3`` or ROS 1 ``.bag`` cannot be opened and raises at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import numpy as np

from ..core.frame import Frame
from ..core.geometry import CameraIntrinsics, GeometryError, Pose
from ..core.image_codec import ImageDecodeError, decode_compressed, decode_image_msg, encode_image, to_rgb8
from ..core.reasons import DropReason
from ..interfaces import make_typestore
from ..core.pose_history import PoseHistory
from .mcap_scan import mcap_channels, scan_mcap

__all__ = [
    "BagError",
    "BagReadError",
    "TopicDetectionError",
    "BagTopics",
    "DEFAULT_TOPICS",
    "FrameBagWriter",
    "write_frames_bag",
    "detect_topics",
    "read_bag_frames",
    "bag_storage_path",
    "header_msg",
    "image_msg",
    "mcap_file",
    "open_bag_writer",
]

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POSE_TYPES = ("geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped", "nav_msgs/msg/Odometry")
GT_NAMESPACE = "/ground_truth/"


class BagError(RuntimeError):
    """Base class of bag problems."""


class BagReadError(BagError):
    """A bag that cannot be opened, or breaks part-way (truncated, corrupt)."""


class TopicDetectionError(BagError):
    """Topics missing or ambiguous; the message lists the candidates and the argument to pass."""


class BagTopics(NamedTuple):
    image: str
    info: str | None
    pose: str | None
    gt: str | None
    depth: str | None


DEFAULT_TOPICS = BagTopics(
    image="/camera/image_raw",
    info="/camera/camera_info",
    pose="/camera/pose",
    gt="/ground_truth/image_sharp",
    depth="/ground_truth/depth",
)


def bag_storage_path(path: str | Path) -> Path:
    """The path rosbags' readers want: a ROS 1 ``.bag`` file or a ROS 2 bag directory.

    A ``.mcap`` / ``.db3`` file inside a ROS 2 bag directory maps to that directory.
    """
    p = Path(path)
    if p.is_file() and p.suffix in (".mcap", ".db3") and (p.parent / "metadata.yaml").is_file():
        return p.parent
    return p


# ---------------------------------------------------------------------------- writing


def _stamp(store: Any, stamp_ns: int) -> Any:
    Time = store.types["builtin_interfaces/msg/Time"]
    return Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))


def header_msg(store: Any, stamp_ns: int, frame_id: str) -> Any:
    """A rosbags ``std_msgs/Header`` for ``stamp_ns`` (integer ns)."""
    return store.types["std_msgs/msg/Header"](stamp=_stamp(store, stamp_ns), frame_id=frame_id)


def image_msg(store: Any, header: Any, array: np.ndarray, encoding: str) -> Any:
    """A rosbags ``sensor_msgs/Image`` holding ``array`` in ``encoding``."""
    step, data = encode_image(array, encoding)
    return store.types[IMAGE](header=header, height=array.shape[0], width=array.shape[1], encoding=encoding,
                              is_bigendian=0, step=step, data=np.frombuffer(data, np.uint8))


def open_bag_writer(path: Path, fmt: str, what: str = "bag output", hint: str = "") -> tuple[Any, Any]:
    """An unopened rosbags ROS 2 ``Writer`` for ``path`` (``fmt`` 'mcap' or 'db3') and
    a typestore with this package's messages. Refuses to overwrite: ``what`` and
    ``hint`` word the error for the caller."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    if fmt not in ("mcap", "db3"):
        raise ValueError(f"{what} format must be 'mcap' or 'db3', got {fmt!r}")
    if path.exists():
        raise FileExistsError(f"{what} {path} already exists{hint}")
    plugin = StoragePlugin.MCAP if fmt == "mcap" else StoragePlugin.SQLITE3
    return Writer(path, version=9, storage_plugin=plugin), make_typestore()


class FrameBagWriter:
    """Context manager writing frames one at a time into a new ROS 2 bag directory ``path``."""

    def __init__(self, path: str | Path, fmt: str = "mcap", topics: BagTopics = DEFAULT_TOPICS,
                 world_frame: str = "world") -> None:
        self.path = Path(path)
        self._writer, self.store = open_bag_writer(self.path, fmt, "bag output")
        self.topics = topics
        self.world_frame = world_frame
        self._conns: dict[str, Any] = {}
        self.count = 0

    def __enter__(self) -> FrameBagWriter:
        self._writer.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.close()

    def _write(self, topic: str | None, msgtype: str, stamp_ns: int, msg: Any) -> None:
        if topic is None:
            return
        if topic not in self._conns:
            self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=self.store)
        self._writer.write(self._conns[topic], stamp_ns, self.store.serialize_cdr(msg, msgtype))

    def write(self, frame: Frame) -> None:
        """Write one frame's image, camera info, pose and ground truth (what it has)."""
        s, t = self.store, frame.stamp_ns
        if frame.image.ndim == 3:
            self._write(self.topics.image, IMAGE, t, image_msg(s, header_msg(s, t, frame.frame_id), frame.image, "rgb8"))
        else:
            self._write(self.topics.image, IMAGE, t, image_msg(s, header_msg(s, t, frame.frame_id), frame.image, "mono8"))
        K = frame.intrinsics
        P = np.zeros((3, 4))
        P[:3, :3] = K.K
        info = s.types[CAMERA_INFO](
            header=header_msg(s, t, frame.frame_id), height=K.height, width=K.width, distortion_model="plumb_bob",
            d=np.zeros(5), k=K.K.reshape(-1), r=np.eye(3).reshape(-1), p=P.reshape(-1), binning_x=0, binning_y=0,
            roi=s.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                              do_rectify=False),
        )
        self._write(self.topics.info, CAMERA_INFO, t, info)
        if frame.pose is not None:
            q, p = frame.pose.quaternion, frame.pose.translation
            g = "geometry_msgs/msg/"
            pose = s.types[g + "Pose"](position=s.types[g + "Point"](x=float(p[0]), y=float(p[1]), z=float(p[2])),
                                       orientation=s.types[g + "Quaternion"](x=float(q[0]), y=float(q[1]),
                                                                             z=float(q[2]), w=float(q[3])))
            self._write(self.topics.pose, g + "PoseStamped", t,
                        s.types[g + "PoseStamped"](header=header_msg(s, t, self.world_frame), pose=pose))
        sharp = frame.extras.get("sharp")
        if sharp is not None:
            enc = "rgb8" if sharp.ndim == 3 else "mono8"
            self._write(self.topics.gt, IMAGE, t, image_msg(s, header_msg(s, t, frame.frame_id), sharp, enc))
        if frame.depth is not None:
            depth = np.nan_to_num(frame.depth.astype(np.float32), nan=0.0)
            self._write(self.topics.depth, IMAGE, t, image_msg(s, header_msg(s, t, frame.frame_id), depth, "32FC1"))
        self.count += 1


def write_frames_bag(path: str | Path, frames: Iterable[Frame], fmt: str = "mcap",
                     topics: BagTopics = DEFAULT_TOPICS, world_frame: str = "world") -> int:
    """Write ``frames`` (any iterable, streamed) to a new ROS 2 bag; returns the number written."""
    with FrameBagWriter(path, fmt, topics, world_frame) as w:
        for f in frames:
            w.write(f)
        return w.count


# ---------------------------------------------------------------------------- topics


def mcap_file(path: str | Path) -> Path | None:
    """The single ``.mcap`` file of a bag path, or None (other storage, or several files)."""
    p = bag_storage_path(path)
    if p.is_file():
        return p if p.suffix == ".mcap" else None
    found = sorted(p.glob("*.mcap")) if p.is_dir() else []
    return found[0] if len(found) == 1 else None


class _Source:
    """A bag's messages as ``(topic, msgtype, log_ns, message)``; failures become :class:`BagReadError`.

    Opens with rosbags' ``AnyReader``; an MCAP file that it refuses (cut short:
    no footer/summary) is read by a sequential scan of its complete records
    (:mod:`sirdiff_ros.data.mcap_scan`) instead.
    """

    def __init__(self, path: str | Path) -> None:
        from rosbags.highlevel import AnyReader

        self.path = bag_storage_path(path)
        self.reader: Any = None
        self.salvage: Path | None = None
        self.store = make_typestore()
        if not self.path.exists():
            raise BagReadError(f"bag {self.path} does not exist")
        try:
            self.reader = AnyReader([self.path], default_typestore=self.store)
            self.reader.open()
        except Exception as exc:  # rosbags raises several unrelated types for unreadable files
            self.reader = None
            self.salvage = mcap_file(self.path)
            if self.salvage is None or not mcap_channels(self.salvage):
                raise BagReadError(f"cannot open bag {self.path}: {exc}") from exc

    def topics(self) -> dict[str, str]:
        if self.salvage is not None:
            return mcap_channels(self.salvage)
        return {name: info.msgtype for name, info in self.reader.topics.items()}

    def messages(self, topics: set[str]) -> Iterator[tuple[str, str, int, Any]]:
        try:
            if self.salvage is not None:
                for m in scan_mcap(self.salvage, topics):
                    yield m.topic, m.msgtype, m.log_time_ns, self.store.deserialize_cdr(m.data, m.msgtype)
            else:
                conns = [c for c in self.reader.connections if c.topic in topics]
                for conn, log_ns, raw in self.reader.messages(connections=conns):
                    yield conn.topic, conn.msgtype, log_ns, self.reader.deserialize(raw, conn.msgtype)
        except Exception as exc:  # truncated chunk, corrupt record, bad CDR
            raise BagReadError(f"bag {self.path} is unreadable past this point: {exc}") from exc

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


def _namespace(topic: str) -> str:
    return topic.rsplit("/", 1)[0]


def _choose(kind: str, candidates: list[str], image: str | None, arg: str, required: bool) -> str | None:
    """One topic of ``candidates``: the only one, else the one in the image's namespace."""
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        if required:
            raise TopicDetectionError(f"no {kind} topic in the bag; pass {arg}=")
        return None
    if image is not None:
        same = [c for c in candidates if _namespace(c) == _namespace(image)]
        if len(same) == 1:
            return same[0]
    raise TopicDetectionError(f"several {kind} topics: {', '.join(sorted(candidates))}; pass {arg}= to choose one")


def _detect(types: dict[str, str], image_topic: str | None, info_topic: str | None, pose_topic: str | None,
            gt_topic: str | None, depth_topic: str | None, require_info: bool) -> BagTopics:
    for arg, topic in (("image_topic", image_topic), ("info_topic", info_topic), ("pose_topic", pose_topic),
                       ("gt_topic", gt_topic), ("depth_topic", depth_topic)):
        if topic is not None and topic not in types:
            raise TopicDetectionError(f"{arg} {topic!r} is not in the bag (topics: {', '.join(sorted(types))})")
    images = [t for t, m in types.items() if m in (IMAGE, COMPRESSED)]
    camera = [t for t in images if not t.startswith(GT_NAMESPACE) and "depth" not in t.lower()]
    if image_topic is None:
        if len(camera) > 1:  # the conventional raw topic wins over derived ones
            raw = [t for t in camera if t.endswith("/image_raw")]
            camera = raw if len(raw) == 1 else camera
        image_topic = _choose("camera image", camera, None, "image_topic", True)
        if image_topic is None:  # _choose raises for a required kind; this keeps the type exact
            raise TopicDetectionError("no camera image topic in the bag; pass image_topic=")
    if info_topic is None:
        info_topic = _choose("CameraInfo", [t for t, m in types.items() if m == CAMERA_INFO], image_topic,
                             "info_topic", require_info)
    if pose_topic is None:
        pose_topic = _choose("pose", [t for t, m in types.items() if m in POSE_TYPES], image_topic, "pose_topic",
                             False)
    if gt_topic is None:
        gt_topic = _choose("ground-truth sharp image",
                           [t for t in images if t.startswith(GT_NAMESPACE) and "depth" not in t.lower()],
                           None, "gt_topic", False)
    if depth_topic is None:
        depth_topic = _choose("depth", [t for t in images if "depth" in t.lower()], image_topic, "depth_topic",
                              False)
    return BagTopics(image_topic, info_topic, pose_topic, gt_topic, depth_topic)


def detect_topics(path: str | Path, image_topic: str | None = None, info_topic: str | None = None,
                  pose_topic: str | None = None, gt_topic: str | None = None, depth_topic: str | None = None,
                  require_info: bool = True) -> BagTopics:
    """Choose the camera, CameraInfo, pose and ground-truth topics of a bag.

    Given topics are checked to exist. Otherwise: the camera image is the
    only Image/CompressedImage topic outside ``/ground_truth/`` without
    "depth" in its name (a unique ``.../image_raw`` wins among several);
    CameraInfo, pose (PoseStamped / PoseWithCovarianceStamped / Odometry) and
    depth are the only one of their kind or the one in the image's namespace;
    the sharp ground truth is the only non-depth image under ``/ground_truth/``.
    Raises :class:`TopicDetectionError` naming the candidates when ambiguous,
    or when the image (or, with ``require_info``, the CameraInfo) is missing.
    """
    source = _Source(path)
    try:
        return _detect(source.topics(), image_topic, info_topic, pose_topic, gt_topic, depth_topic, require_info)
    finally:
        source.close()


# ---------------------------------------------------------------------------- reading


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _decode_camera_image(msg: Any, msgtype: str) -> np.ndarray:
    if msgtype == COMPRESSED:
        return decode_compressed(msg.data, msg.format)
    return to_rgb8(decode_image_msg(msg), msg.encoding)


def _decode_depth(msg: Any) -> np.ndarray:
    arr = decode_image_msg(msg)
    if msg.encoding in ("16UC1", "mono16"):
        return arr.astype(np.float32) / 1000.0  # REP 118: 16-bit depth is millimetres
    if msg.encoding == "32FC1":
        return np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    raise ImageDecodeError(DropReason.BAD_ENCODING, f"depth image encoding {msg.encoding!r} is not 16UC1 or 32FC1")


def _pose_of(msg: Any, msgtype: str) -> Pose:
    p = msg.pose if msgtype == "geometry_msgs/msg/PoseStamped" else msg.pose.pose
    o = p.orientation
    return Pose.from_quaternion([p.position.x, p.position.y, p.position.z], [o.x, o.y, o.z, o.w])


@dataclass
class _Pending:
    stamp_ns: int
    log_ns: int
    image: np.ndarray
    frame_id: str
    seq: int


class _FrameAssembler:
    """Joins images with camera info, poses and ground truth arriving in bag order."""

    def __init__(self, intrinsics: CameraIntrinsics | None, max_pose_gap_ns: int, gt_tolerance_ns: int,
                 cam_from_pose: Pose | None) -> None:
        self.intrinsics = intrinsics
        self.max_pose_gap_ns = max_pose_gap_ns
        self.gt_tolerance_ns = gt_tolerance_ns
        self.cam_from_pose = cam_from_pose
        self.infos: list[tuple[int, CameraIntrinsics]] = []
        # Bags hold a whole trajectory; the history only bounds pathological ones.
        self.poses = PoseHistory(capacity=10_000_000, max_extrapolation_ns=max_pose_gap_ns)
        self.sharp: dict[int, np.ndarray] = {}
        self.depth: dict[int, np.ndarray] = {}

    def add_pose(self, stamp: int, pose: Pose) -> None:
        if self.cam_from_pose is not None:
            pose = pose @ self.cam_from_pose
        self.poses.add(stamp, pose)  # out-of-order stamps are dropped by the history

    def pose_at(self, stamp: int) -> Pose | None:
        found = self.poses.lookup(stamp, final=True)
        return found if isinstance(found, Pose) else None

    def _nearest(self, table: dict[int, np.ndarray], stamp: int) -> np.ndarray | None:
        if stamp in table:
            return table.pop(stamp)
        best = min(table, key=lambda s: abs(s - stamp), default=None)
        if best is not None and abs(best - stamp) <= self.gt_tolerance_ns:
            return table.pop(best)
        return None

    def finish(self, p: _Pending) -> Frame:
        if self.infos:
            K = min(self.infos, key=lambda si: abs(si[0] - p.stamp_ns))[1]
        elif self.intrinsics is not None:
            K = self.intrinsics
        else:
            raise TopicDetectionError("no CameraInfo received before the image and no intrinsics= given")
        extras: dict[str, Any] = {}
        sharp = self._nearest(self.sharp, p.stamp_ns)
        if sharp is not None:
            extras["sharp"] = sharp
        depth = self._nearest(self.depth, p.stamp_ns)
        return Frame(image=p.image, stamp_ns=p.stamp_ns, intrinsics=K, pose=self.pose_at(p.stamp_ns), depth=depth,
                     frame_id=p.frame_id, seq=p.seq, extras=extras)

    def drop_stale(self, before_ns: int) -> None:
        """Forget ground truth far older than anything still pending (bounded memory)."""
        for table in (self.sharp, self.depth):
            for s in [s for s in table if s < before_ns]:
                del table[s]


def read_bag_frames(
    path: str | Path,
    image_topic: str | None = None,
    info_topic: str | None = None,
    pose_topic: str | None = None,
    gt_topic: str | None = None,
    depth_topic: str | None = None,
    *,
    intrinsics: CameraIntrinsics | None = None,
    cam_from_pose: Pose | None = None,
    lookahead_s: float = 1.0,
    max_pose_gap_s: float = 0.2,
    gt_tolerance_s: float = 0.001,
) -> Iterator[Frame]:
    """Yield one :class:`Frame` per camera image of the bag at ``path``, in bag order.

    ``intrinsics`` replaces a missing CameraInfo topic (e.g. bags from
    drivers that publish none). ``cam_from_pose`` (T_posebody_cam) is
    right-multiplied onto every pose message, for pose topics that track a
    body rather than the optical frame. An image is completed ``lookahead_s``
    of bag time after it arrived (poses after its stamp are needed for
    interpolation); a pose is interpolated between its neighbours, or
    extrapolated at most ``max_pose_gap_s`` past the first/last pose, else ``None``. Ground truth is matched by
    stamp within ``gt_tolerance_s``. Undecodable images raise
    :class:`~sirdiff_ros.core.image_codec.ImageDecodeError`; a bag that breaks
    part-way raises :class:`BagReadError` after the frames before the break.
    """
    source = _Source(path)
    try:
        topics = _detect(source.topics(), image_topic, info_topic, pose_topic, gt_topic, depth_topic,
                         require_info=intrinsics is None)
        asm = _FrameAssembler(intrinsics, int(max_pose_gap_s * 1e9), int(gt_tolerance_s * 1e9), cam_from_pose)
        lookahead_ns = int(lookahead_s * 1e9)
        pending: deque[_Pending] = deque()
        seq = 0
        error: BagReadError | None = None
        messages = source.messages({t for t in topics if t is not None})
        while True:
            try:
                item = next(messages, None)
            except BagReadError as exc:
                error = BagReadError(f"{exc} (after {seq} images)")
                error.__cause__ = exc.__cause__
                break
            if item is None:
                break
            topic, msgtype, log_ns, msg = item
            if topic == topics.image:
                pending.append(_Pending(_stamp_ns(msg.header), log_ns, _decode_camera_image(msg, msgtype),
                                        msg.header.frame_id, seq))
                seq += 1
            elif topic == topics.info:
                # ROS 1 CameraInfo spells the matrix ``K`` (ROS 2: ``k``).
                k = msg.k if hasattr(msg, "k") else msg.K
                asm.infos.append((_stamp_ns(msg.header), CameraIntrinsics.from_camera_info(k, int(msg.width),
                                                                                          int(msg.height))))
                del asm.infos[:-16]  # calibration rarely changes; keep the recent ones
            elif topic == topics.pose:
                try:
                    asm.add_pose(_stamp_ns(msg.header), _pose_of(msg, msgtype))
                except GeometryError:
                    pass  # a corrupt pose message is skipped, its neighbours interpolate
            elif topic == topics.gt:
                asm.sharp[_stamp_ns(msg.header)] = _decode_camera_image(msg, msgtype)
            elif topic == topics.depth:
                asm.depth[_stamp_ns(msg.header)] = _decode_depth(msg)
            while pending and log_ns - pending[0].log_ns > lookahead_ns:
                done = pending.popleft()
                yield asm.finish(done)
                asm.drop_stale(done.stamp_ns - lookahead_ns - int(gt_tolerance_s * 1e9))
        while pending:
            yield asm.finish(pending.popleft())
        if error is not None:
            raise error
    finally:
        source.close()
