"""The restored bag: the source bag's messages plus every backend's output.

Written as a ROS 2 bag (``db3`` by default: sqlite3 storage accepts messages
in any time order, which lets the replay write outputs as they come and copy
the source afterwards). Per backend ``<b>``:

===================================  ============================  ==========================
topic                                type                          content
===================================  ============================  ==========================
``/restored/<b>/image``              sensor_msgs/Image             every frame's output image
                                                                   (restored or passed
                                                                   through), input header
``/restored/<b>/camera_info``        sensor_msgs/CameraInfo        the source CameraInfo
                                                                   nearest in stamp, with the
                                                                   image's header (only when
                                                                   the source has one)
``/restored/<b>/keyframe_set``       sirdiff_ros/KeyframeSet       one per restoration target
===================================  ============================  ==========================

Images are written ``rgb8`` (colour) or ``mono8``, the core's layouts. ROS 1
sources are converted to ROS 2 messages on the way (rosbags' converter).
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..core.pipeline import RestorationOutcome
from ..data.bags import CAMERA_INFO, IMAGE, bag_storage_path, header_msg, image_msg, mcap_file, open_bag_writer
from ..data.mcap_scan import scan_mcap

__all__ = ["RESTORED_NAMESPACE", "KEYFRAME_SET", "RestoredBagWriter", "restored_topics", "build_message"]

RESTORED_NAMESPACE = "/restored"
KEYFRAME_SET = "sirdiff_ros/msg/KeyframeSet"


def restored_topics(backend: str) -> dict[str, str]:
    """``{'image': ..., 'camera_info': ..., 'keyframe_set': ...}`` of one backend."""
    ns = f"{RESTORED_NAMESPACE}/{backend.replace('-', '_')}"  # ROS names allow no '-'
    return {"image": f"{ns}/image", "camera_info": f"{ns}/camera_info", "keyframe_set": f"{ns}/keyframe_set"}


def build_message(store: Any, msgtype: str, values: Any) -> Any:
    """A rosbags message of ``msgtype`` from nested plain values (dicts, lists,
    numbers, strings) with the message's field names — e.g.
    :meth:`RestorationOutcome.keyframe_set_fields`. Missing fields are an error."""
    from rosbags.typesys.store import Nodetype

    _, fields = store.fielddefs[msgtype]

    def convert(desc: Any, value: Any) -> Any:
        kind, detail = desc
        if kind == Nodetype.NAME:
            return build_message(store, detail, value)
        if kind in (Nodetype.SEQUENCE, Nodetype.ARRAY):
            inner = detail[0]
            if inner[0] == Nodetype.BASE and inner[1][0] not in ("string", "bool"):
                # rosbags wants numeric arrays as numpy arrays of the field's type.
                return np.asarray(value, dtype={"byte": "uint8", "char": "uint8"}.get(inner[1][0], inner[1][0]))
            return [convert(inner, v) for v in value]
        return value

    kwargs = {}
    for name, desc in fields:
        if name not in values:
            raise KeyError(f"{msgtype}: field {name!r} missing from the values")
        kwargs[name] = convert(desc, values[name])
    return store.types[msgtype](**kwargs)


class RestoredBagWriter:
    """Context manager; use as the replay's :class:`~sirdiff_ros.evaluation.replay.OutcomeSink`,
    then :meth:`copy_source` once (it reads the whole source bag)."""

    def __init__(
        self,
        source: str | Path,
        dest: str | Path,
        backends: list[str],
        image_topic: str,
        info_topic: str | None,
        fmt: str = "db3",
    ) -> None:
        self.source = bag_storage_path(source)
        self.path = Path(dest)
        self._writer, self.store = open_bag_writer(
            self.path, fmt, "restored bag", "; choose another --out or remove it"
        )
        self.image_topic = image_topic
        self.info_topic = info_topic
        self._backends = list(backends)
        self._conns: dict[str, Any] = {}
        self._infos: list[tuple[int, Any]] = []  # (stamp_ns, CameraInfo) of the source, sorted
        self.written = 0

    def __enter__(self) -> RestoredBagWriter:
        self._writer.open()
        for b in self._backends:
            t = restored_topics(b)
            self._conns[t["image"]] = self._writer.add_connection(t["image"], IMAGE, typestore=self.store)
            self._conns[t["keyframe_set"]] = self._writer.add_connection(t["keyframe_set"], KEYFRAME_SET, typestore=self.store)
            if self.info_topic is not None:
                self._conns[t["camera_info"]] = self._writer.add_connection(t["camera_info"], CAMERA_INFO, typestore=self.store)
        self._load_infos()
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.close()

    def _source_messages(self, topics: set[str] | None) -> Iterator[tuple[str, str, int, bytes]]:
        """``(topic, msgtype, log_ns, ROS 2 CDR bytes)`` of the source bag in order.

        ROS 1 messages are converted with rosbags' converter; an MCAP file cut
        short (rosbags cannot open it) is read with the data package's
        sequential scanner up to the cut. Errors propagate.
        """
        from rosbags.convert.converter import generate_message_converter
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import get_types_from_msg

        try:
            reader = AnyReader([self.source], default_typestore=self.store)
            reader.open()
        except Exception:
            mcap = mcap_file(self.source)
            if mcap is None:
                raise
            for m in scan_mcap(mcap, topics):
                yield m.topic, m.msgtype, m.log_time_ns, m.data
            return
        try:
            conns = [c for c in reader.connections if topics is None or c.topic in topics]
            convert: dict[str, Any] = {}
            cache: dict[str, object] = {}
            for conn, log_ns, raw in reader.messages(connections=conns):
                if reader.is2:
                    yield conn.topic, conn.msgtype, log_ns, raw
                    continue
                # ROS 1 serialisation -> ROS 2 CDR with rosbags' converter, per type.
                if conn.msgtype not in convert:
                    if conn.msgtype not in self.store.fielddefs:  # a type Kilted lacks: take the bag's
                        text = reader.typestore.generate_msgdef(conn.msgtype, ros_version=2)[0]
                        types = get_types_from_msg(text, conn.msgtype)
                        types.pop("std_msgs/msg/Header", None)
                        self.store.register(types)
                    convert[conn.msgtype] = generate_message_converter(
                        reader.typestore, self.store, conn.msgtype, conn.msgtype, cache, src_is2=False, dst_is2=True
                    )
                yield conn.topic, conn.msgtype, log_ns, bytes(convert[conn.msgtype](raw))
        finally:
            reader.close()

    def _load_infos(self) -> None:
        """Read the source CameraInfo messages (small) to mirror them per backend."""
        if self.info_topic is None:
            return
        try:
            for _, msgtype, _, data in self._source_messages({self.info_topic}):
                msg = self.store.deserialize_cdr(data, msgtype)
                st = msg.header.stamp
                self._infos.append((int(st.sec) * 1_000_000_000 + int(st.nanosec), msg))
        except Exception:  # a broken source keeps the infos read so far; copy_source reports the error
            pass
        self._infos.sort(key=lambda si: si[0])

    def _nearest_info(self, stamp_ns: int) -> Any | None:
        if not self._infos:
            return None
        i = bisect.bisect_left([s for s, _ in self._infos], stamp_ns)
        cands = [self._infos[j] for j in (i - 1, i) if 0 <= j < len(self._infos)]
        return min(cands, key=lambda si: abs(si[0] - stamp_ns))[1]

    def _write(self, topic: str, msgtype: str, stamp_ns: int, msg: Any) -> None:
        self._writer.write(self._conns[topic], stamp_ns, self.store.serialize_cdr(msg, msgtype))
        self.written += 1

    def write(self, backend: str, outcome: RestorationOutcome) -> None:
        """Write one frame's output (and KeyframeSet for a target) for ``backend``."""
        frame = outcome.frame
        t = restored_topics(backend)
        stamp = frame.stamp_ns
        header = header_msg(self.store, stamp, frame.frame_id)
        enc = "rgb8" if outcome.image.ndim == 3 else "mono8"
        self._write(t["image"], IMAGE, stamp, image_msg(self.store, header, outcome.image, enc))
        info = self._nearest_info(stamp)
        if info is not None and t["camera_info"] in self._conns:
            from dataclasses import replace

            self._write(t["camera_info"], CAMERA_INFO, stamp, replace(info, header=header))
        if outcome.decision.is_target:
            msg = build_message(self.store, KEYFRAME_SET, outcome.keyframe_set_fields())
            self._write(t["keyframe_set"], KEYFRAME_SET, stamp, msg)

    def copy_source(self) -> str:
        """Copy every message of the source bag (ROS 1 converted to ROS 2).

        Returns ``''``, or the error that stopped the copy part-way (a
        truncated bag): what was copied before stays in the output.
        """
        conns: dict[tuple[str, str], Any] = {}
        try:
            for topic, msgtype, log_ns, data in self._source_messages(None):
                if (topic, msgtype) not in conns:
                    conns[(topic, msgtype)] = self._writer.add_connection(topic, msgtype, typestore=self.store)
                self._writer.write(conns[(topic, msgtype)], log_ns, data)
                self.written += 1
        except Exception as exc:  # rosbags and the scanner raise various types for broken files
            return f"{type(exc).__name__}: {exc}"
        return ""

