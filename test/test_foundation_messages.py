"""Our custom messages over real DDS between processes, and through ROS 2 bags.

One content per message type (every field set to a non-default value,
including a NaN, a uint64 above 2**63 and non-ASCII text) travels:
  * from a publisher in a subprocess to a subscriber in this process, over
    Fast DDS with localhost discovery (test/conftest.py sets the environment);
  * through rosbags-written .db3 and .mcap bags, with rosbags' CDR bytes
    compared to rclpy's ``serialize_message`` for the same content (equal
    except alignment padding, which rclpy leaves uninitialised).
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
sirdiff_msg = pytest.importorskip("sirdiff_ros.msg", reason="messages not built: run `make venv`")

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402

from sirdiff_ros.interfaces import MESSAGE_NAMES, make_typestore  # noqa: E402
from sirdiff_ros.ros.convert import fill_message  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def _header(sec: int, nanosec: int, frame_id: str) -> dict[str, Any]:
    return {"stamp": {"sec": sec, "nanosec": nanosec}, "frame_id": frame_id}


def _view(i: int, target: bool) -> dict[str, Any]:
    # float32-exact values so that equality is exact after the round trip.
    return {
        "header": _header(1_700_000_000 + i, 250_000_000 * i + 7, f"cam{i}_optical"),
        "pose": {
            "position": {"x": 0.5 * i, "y": -1.25, "z": 3.0 + i},
            "orientation": {"x": 0.0, "y": 0.6, "z": 0.0, "w": 0.8},
        },
        "overlap": 1.0 if target else 0.75 - 0.25 * i,
        "sharpness_before": 12.5 + i,
        "sharpness_after": float("nan") if i == 2 else 40.25 + i,
        "is_target": target,
    }


CONTENT: dict[str, dict[str, Any]] = {
    "ViewInfo": _view(1, True),
    "KeyframeSet": {
        "header": _header(1_700_000_000, 123_456_789, "camera_optical"),
        "target_stamp": {"sec": 1_700_000_000, "nanosec": 123_456_789},
        "target_index": 1,
        "views": [_view(0, False), _view(1, True), _view(2, False)],
        "backend": "sirdiff",
        "device": "cuda:0",
        "latency_ms": 812.5,
        "end_to_end_ms": 901.75,
        "outcome": 1,
        "reason": "backend_error: résumé ✓",
    },
    "RestoreStatus": {
        "header": _header(1_700_000_123, 5, "restore_node"),
        "backend": "fusion",
        "device": "cpu",
        "mode": "keyframes",
        "images_received": 2**63 + 5,
        "images_published": 1000,
        "images_restored": 17,
        "images_passed_through": 983,
        "keyframes": 120,
        "restoration_targets": 18,
        "in_flight": 1,
        "dropped_total": 7,
        "drop_reasons": ["queue_full", "bad_encoding"],
        "drop_counts": [6, 1],
        "input_rate_hz": 30.0,
        "output_rate_hz": 29.5,
        "latency_ms_p50": 3.25,
        "latency_ms_p90": 8.5,
        "latency_ms_p99": 120.0,
        "queue_depth": 2,
        "queue_capacity": 4,
        "time_jumps": 1,
        "last_error": "CUDA out of memory",
    },
}


def build_rclpy(name: str, content: dict[str, Any]) -> Any:
    """The rclpy message ``sirdiff_ros/msg/<name>`` holding ``content``."""
    return fill_message(getattr(sirdiff_msg, name)(), content, {"views": sirdiff_msg.ViewInfo})


# ROS base types whose numpy dtype is spelled differently (rosbags wants arrays).
_NUMPY_DTYPE = {"byte": "uint8", "char": "uint8", "bool": "bool"}


def build_rosbags(store: Any, msgtype: str, content: dict[str, Any]) -> Any:
    """The rosbags message ``msgtype`` holding ``content`` (all fields required)."""
    from rosbags.typesys.store import Nodetype

    _, fields = store.fielddefs[msgtype]
    if set(content) != {f for f, _ in fields}:
        raise ValueError(f"{msgtype}: content fields {sorted(content)} != {sorted(f for f, _ in fields)}")
    kwargs = {}
    for fname, (kind, desc) in fields:
        value = content[fname]
        if kind == Nodetype.NAME:
            value = build_rosbags(store, desc, value)
        elif kind in (Nodetype.SEQUENCE, Nodetype.ARRAY):
            (sub_kind, sub_desc), _ = desc
            if sub_kind == Nodetype.NAME:
                value = [build_rosbags(store, sub_desc, v) for v in value]
            elif sub_desc[0] != "string":
                value = np.array(value, dtype=_NUMPY_DTYPE.get(sub_desc[0], sub_desc[0]))
        kwargs[fname] = value
    return store.types[msgtype](**kwargs)


def to_plain(msg: Any) -> Any:
    """Nested plain values of an rclpy or a rosbags message (lists for sequences)."""
    if hasattr(msg, "get_fields_and_field_types"):
        return {f: to_plain(getattr(msg, f)) for f in msg.get_fields_and_field_types()}
    if hasattr(msg, "__msgtype__"):
        # rosbags dataclasses also hold __msgtype__ and the constants (upper
        # case); ROS field names start with a lower-case letter.
        return {f.name: to_plain(getattr(msg, f.name)) for f in dataclasses.fields(msg) if f.name[0].islower()}
    if isinstance(msg, (list, tuple, np.ndarray)) or type(msg).__name__ == "array":
        return [to_plain(v) for v in msg]
    if isinstance(msg, np.generic):
        return msg.item()
    return msg


def assert_same(got: Any, want: Any, path: str = "") -> None:
    """Field-by-field equality, NaN equal to NaN, naming the first differing field."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{path}: fields {got!r} vs {want!r}"
        for k in want:
            assert_same(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and math.isnan(want):
        assert isinstance(got, float) and math.isnan(got), f"{path}: {got!r} is not NaN"
    else:
        assert type(got) is type(want) and got == want, f"{path}: {got!r} != {want!r}"


def test_content_sets_every_field_of_every_message() -> None:
    # The round-trip tests only mean "all fields intact" if every field is set.
    assert set(CONTENT) == set(MESSAGE_NAMES)
    for name, content in CONTENT.items():
        msg = build_rclpy(name, content)
        assert set(content) == set(msg.get_fields_and_field_types()), name
        default = to_plain(getattr(sirdiff_msg, name)())
        assert all(to_plain(getattr(msg, f)) != default[f] for f in content), name
    assert_same(to_plain(build_rclpy("KeyframeSet", CONTENT["KeyframeSet"])), CONTENT["KeyframeSet"])


_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)

# Runs in a separate interpreter: publish one message after a subscriber
# matched, then stay alive (transient-local keeps it for late joiners) until
# the test writes a second line.
_PUBLISHER = r"""
import json, sys, time
import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
import sirdiff_ros.msg as m
from sirdiff_ros.ros.convert import fill_message

name, topic = sys.argv[1], sys.argv[2]
content = json.loads(sys.stdin.readline())
rclpy.init()
node = rclpy.create_node("foundation_publisher")
qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
pub = node.create_publisher(getattr(m, name), topic, qos)
deadline = time.monotonic() + 60
while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
    time.sleep(0.02)
pub.publish(fill_message(getattr(m, name)(), content, {"views": m.ViewInfo}))
print("published", pub.get_subscription_count(), flush=True)
sys.stdin.readline()  # until the test says it received
node.destroy_node()
rclpy.shutdown()
"""


@pytest.mark.parametrize("name", MESSAGE_NAMES)
def test_message_crosses_processes_over_dds(name: str, rclpy_context: Any, ros_executor: Any) -> None:
    topic = f"/foundation_test/{name.lower()}"
    received: list[Any] = []
    got = threading.Event()
    node = rclpy.create_node(f"foundation_subscriber_{name.lower()}", context=rclpy_context)
    node.create_subscription(getattr(sirdiff_msg, name), topic, lambda m: (received.append(m), got.set()), _QOS)
    ros_executor.add_node(node)

    proc = subprocess.Popen(
        [sys.executable, "-c", _PUBLISHER, name, topic],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        proc.stdin.write(json.dumps(CONTENT[name]) + "\n")
        proc.stdin.flush()
        ok = got.wait(timeout=60)
    finally:
        try:
            out, err = proc.communicate(input="done\n", timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert ok, f"nothing received on {topic}; publisher rc={proc.returncode} stdout={out!r} stderr={err[-2000:]!r}"
    assert proc.returncode == 0, err[-2000:]
    assert len(received) == 1
    msg = received[0]
    assert type(msg) is getattr(sirdiff_msg, name)
    assert_same(to_plain(msg), CONTENT[name])


def assert_same_cdr(ours: bytes, theirs: bytes, store: Any, msgtype: str) -> None:
    """rosbags' CDR equals rclpy's byte for byte, except alignment padding.

    Fast CDR (rclpy) leaves padding bytes uninitialised, rosbags writes zeros:
    the two agree at every other byte, and rosbags re-serialises rclpy's bytes
    to exactly its own.
    """
    assert len(ours) == len(theirs), msgtype
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert all(ours[i] == 0 for i in differ), f"{msgtype}: non-padding bytes differ at {differ}"
    assert bytes(store.serialize_cdr(store.deserialize_cdr(theirs, msgtype), msgtype)) == ours, msgtype


@pytest.mark.parametrize("storage", ["db3", "mcap"])
def test_messages_round_trip_through_rosbags_bag(storage: str, tmp_path: Path) -> None:
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    store = make_typestore()
    plugin = {"db3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
    bag = tmp_path / f"messages_{storage}"
    expected_cdr: dict[str, bytes] = {}
    with Writer(bag, version=9, storage_plugin=plugin) as writer:
        for i, name in enumerate(MESSAGE_NAMES):
            msgtype = f"sirdiff_ros/msg/{name}"
            conn = writer.add_connection(f"/sirdiff/{name.lower()}", msgtype, typestore=store)
            cdr = bytes(store.serialize_cdr(build_rosbags(store, msgtype, CONTENT[name]), msgtype))
            assert_same_cdr(cdr, serialize_message(build_rclpy(name, CONTENT[name])), store, msgtype)
            expected_cdr[name] = cdr
            writer.write(conn, 1_700_000_000_000_000_000 + i, cdr)

    files = sorted(p.suffix for p in bag.iterdir())
    assert f".{storage}" in files and ".yaml" in files

    seen = set()
    with Reader(bag) as reader:
        for conn, stamp, raw in reader.messages():
            name = conn.msgtype.rsplit("/", 1)[1]
            seen.add(name)
            assert bytes(raw) == expected_cdr[name]
            assert stamp == 1_700_000_000_000_000_000 + MESSAGE_NAMES.index(name)
            # Readable by rosbags (evaluation) and by rclpy (a node replaying the bag).
            assert_same(to_plain(store.deserialize_cdr(raw, conn.msgtype)), CONTENT[name])
            assert_same(to_plain(deserialize_message(bytes(raw), getattr(sirdiff_msg, name))), CONTENT[name])
            # The bag carries the definition, so other tools can decode it.
            assert all(f in conn.msgdef.data for f in CONTENT[name]), conn.msgdef
    assert seen == set(MESSAGE_NAMES)
