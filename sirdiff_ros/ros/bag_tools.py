"""Play and record ROS 2 bags without ``ros2 bag`` (rosbags + rclpy).

``sirdiff-play BAG [--rate R] [--topics T ...] [--loop] [--clock]`` publishes a
bag's messages with their original timing scaled by ``--rate`` (with ``--clock``
also ``/clock`` at the bag's time, for nodes with ``use_sim_time``);
``sirdiff-record OUT --topics T ... [--duration S]`` subscribes and writes a
bag. Messages are never converted: a ROS 2 bag stores the same CDR bytes
rclpy publishes and receives (DESIGN.md), so the player publishes the raw
bytes and the recorder writes what it receives (``raw=True``). The rclpy
class for each type is still needed to create publishers/subscriptions; it
is imported from the type name (custom ``sirdiff_ros/msg/*`` types come
from the generated module). Each run uses its own rclpy Context: no global
state, and SIGINT ends either tool cleanly.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import rclpy
from rclpy.context import Context
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

__all__ = ["message_class", "play_bag", "record_bag", "PlayResult", "play_main", "record_main"]

# Time given to DDS after the publisher sees its subscribers (see play_bag).
MATCH_SETTLE_S = 0.5
# Longest wait, after the last message, for reliable subscribers to acknowledge it.
ACK_TIMEOUT_S = 10.0


def message_class(msgtype: str) -> type:
    """rclpy class for ``pkg/msg/Name`` (also accepts ``pkg/Name``)."""
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3:
        raise ValueError(f"not a message type name: {msgtype!r}")
    pkg, kind, name = parts
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"message type {msgtype!r} is not available to rclpy here: {exc}") from exc


def _qos(reliability: str, depth: int) -> QoSProfile:
    rel = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=rel)


@dataclass
class PlayResult:
    published: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    interrupted: bool = False


def _open_reader(bag: Path) -> Any:
    from rosbags.rosbag2 import Reader

    if bag.suffix == ".bag":
        raise ValueError(f"{bag} is a ROS 1 bag; convert it first (rosbags-convert --src {bag} --dst OUT)")
    if not bag.exists():
        raise FileNotFoundError(f"bag not found: {bag}")
    return Reader(bag)


def play_bag(
    bag: str | Path,
    rate: float = 1.0,
    topics: Sequence[str] | None = None,
    loop: bool = False,
    wait_subscribers_s: float = 0.0,
    reliability: str = "reliable",
    qos_depth: int = 100,
    stop: threading.Event | None = None,
    context: Context | None = None,
    clock: bool = False,
) -> PlayResult:
    """Publish the bag's messages (all topics, or ``topics``) with bag timing / ``rate``.

    ``rate <= 0`` publishes as fast as possible. With ``wait_subscribers_s`` the
    player first waits (up to that long) until every topic has a subscriber,
    since messages published before matching are lost. ``stop`` ends playback.
    With ``clock``, ``/clock`` carries the bag time of each message just before
    it (``ros2 bag play --clock``): it jumps back at every ``loop``.
    """
    bag = Path(bag)
    stop = stop or threading.Event()
    own_context = context is None
    ctx = context or Context()
    if own_context:
        rclpy.init(context=ctx, signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    result = PlayResult()
    node = Node("sirdiff_play", context=ctx, start_parameter_services=False)
    try:
        with _open_reader(bag) as reader:
            conns = [c for c in reader.connections if topics is None or c.topic in topics]
            missing = sorted(set(topics or ()) - {c.topic for c in conns})
            if missing:
                raise ValueError(f"topics not in {bag}: {', '.join(missing)}; it has {', '.join(sorted({c.topic for c in reader.connections}))}")
            pubs: dict[str, Any] = {}
            for c in conns:
                if c.topic not in pubs:
                    pubs[c.topic] = node.create_publisher(message_class(c.msgtype), c.topic, _qos(reliability, qos_depth))
                    result.published[c.topic] = 0
            clock_pub = None
            if clock:
                from rosgraph_msgs.msg import Clock

                clock_pub = node.create_publisher(Clock, "/clock", _qos("reliable", 10))
                clock_msg = Clock()
            deadline = time.monotonic() + wait_subscribers_s
            while time.monotonic() < deadline and not stop.is_set():
                if all(p.get_subscription_count() > 0 for p in pubs.values()):
                    # The publisher sees the match before the subscriber's side has
                    # matched it back; a message sent in between is lost (seen in CI).
                    stop.wait(MATCH_SETTLE_S)
                    break
                time.sleep(0.02)
            t_start = time.monotonic()
            while not stop.is_set():
                t0_wall, t0_bag = time.monotonic(), None
                for conn, stamp_ns, raw in reader.messages(connections=conns):
                    if stop.is_set():
                        break
                    if t0_bag is None:
                        t0_bag = stamp_ns
                    if rate > 0:
                        delay = t0_wall + (stamp_ns - t0_bag) / 1e9 / rate - time.monotonic()
                        if delay > 0 and stop.wait(delay):
                            break
                    if clock_pub is not None:
                        clock_msg.clock.sec, clock_msg.clock.nanosec = divmod(stamp_ns, 1_000_000_000)
                        clock_pub.publish(clock_msg)
                    pubs[conn.topic].publish(bytes(raw))
                    result.published[conn.topic] += 1
                if not loop:
                    break
            result.duration_s = time.monotonic() - t_start
            result.interrupted = stop.is_set()
            if reliability == "reliable" and not result.interrupted:
                # Destroying a publisher discards what a reliable subscriber has not yet
                # acknowledged: the bag's last image was lost once in a fresh-clone test run.
                for pub in pubs.values():
                    pub.wait_for_all_acked(Duration(seconds=ACK_TIMEOUT_S))
    finally:
        node.destroy_node()
        if own_context:
            rclpy.try_shutdown(context=ctx)
    return result


def record_bag(
    out: str | Path,
    topics: Sequence[str],
    duration_s: float | None = None,
    discover_timeout_s: float = 10.0,
    reliability: str = "reliable",
    qos_depth: int = 100,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
    context: Context | None = None,
) -> dict[str, int]:
    """Record ``topics`` into a new ROS 2 bag at ``out`` until ``duration_s`` or ``stop``.

    Topic types are discovered from the graph (waits up to ``discover_timeout_s``
    for each topic to appear); ``ready`` is set once all subscriptions exist.
    Returns messages written per topic. Receive time is the bag timestamp.
    """
    from rosbags.rosbag2 import Writer

    from ..interfaces import make_typestore

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"output bag already exists: {out}")
    stop = stop or threading.Event()
    own_context = context is None
    ctx = context or Context()
    if own_context:
        rclpy.init(context=ctx, signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = Node("sirdiff_record", context=ctx, start_parameter_services=False)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    counts = {t: 0 for t in topics}
    try:
        types = _discover(node, executor, topics, discover_timeout_s, stop)
        store = make_typestore()
        with Writer(out, version=9) as writer:
            conns = {t: writer.add_connection(t, types[t], typestore=store) for t in topics}

            def make_cb(topic: str) -> Any:
                def cb(raw: bytes) -> None:
                    writer.write(conns[topic], time.time_ns(), raw)
                    counts[topic] += 1

                return cb

            for t in topics:
                node.create_subscription(message_class(types[t]), t, make_cb(t), _qos(reliability, qos_depth), raw=True)
            if ready is not None:
                ready.set()
            end = None if duration_s is None else time.monotonic() + duration_s
            while not stop.is_set() and (end is None or time.monotonic() < end):
                executor.spin_once(timeout_sec=0.05)
    finally:
        executor.shutdown()
        node.destroy_node()
        if own_context:
            rclpy.try_shutdown(context=ctx)
    return counts


def _discover(node: Node, executor: SingleThreadedExecutor, topics: Sequence[str], timeout_s: float, stop: threading.Event) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    wanted = {node.resolve_topic_name(t): t for t in topics}
    found: dict[str, str] = {}
    while True:
        for name, type_names in node.get_topic_names_and_types():
            if name in wanted and type_names:
                found[wanted[name]] = type_names[0]
        if len(found) == len(topics) or stop.is_set() or time.monotonic() > deadline:
            break
        executor.spin_once(timeout_sec=0.05)
    missing = [t for t in topics if t not in found]
    if missing:
        raise TimeoutError(f"no publisher seen within {timeout_s} s for: {', '.join(missing)}")
    return found


def _stop_on_signals(stop: threading.Event) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())


def play_main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sirdiff-play", description="Publish a ROS 2 bag's topics with original timing.")
    ap.add_argument("bag", type=Path)
    ap.add_argument("--rate", type=float, default=1.0, help="time scale (2 = twice as fast; 0 = as fast as possible)")
    ap.add_argument("--topics", nargs="+", default=None, help="only these topics (default: all)")
    ap.add_argument("--loop", action="store_true", help="replay until interrupted")
    ap.add_argument("--clock", action="store_true", help="publish /clock with the bag's time (for use_sim_time)")
    ap.add_argument("--wait-subscribers", type=float, default=0.0, metavar="S", help="wait up to S s for a subscriber on every topic first")
    ap.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable")
    ap.add_argument("--qos-depth", type=int, default=100)
    args = ap.parse_args(argv)
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        res = play_bag(args.bag, args.rate, args.topics, args.loop, args.wait_subscribers, args.reliability, args.qos_depth, stop,
                       clock=args.clock)
    except (ValueError, FileNotFoundError) as exc:
        print(f"sirdiff-play: {exc}", file=sys.stderr)
        return 2
    total = sum(res.published.values())
    print(f"published {total} messages in {res.duration_s:.2f} s: {res.published}" + (" (interrupted)" if res.interrupted else ""))
    return 0


def record_main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sirdiff-record", description="Record topics to a ROS 2 bag (rosbags).")
    ap.add_argument("out", type=Path)
    ap.add_argument("--topics", nargs="+", required=True)
    ap.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds (default: until SIGINT)")
    ap.add_argument("--discover-timeout", type=float, default=10.0, metavar="S")
    ap.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable")
    ap.add_argument("--qos-depth", type=int, default=100)
    args = ap.parse_args(argv)
    stop = threading.Event()
    _stop_on_signals(stop)
    ready = threading.Event()
    try:
        counts = record_bag(args.out, args.topics, args.duration, args.discover_timeout, args.reliability, args.qos_depth, stop, ready)
    except (TimeoutError, FileExistsError, ValueError) as exc:
        print(f"sirdiff-record: {exc}", file=sys.stderr)
        return 2
    print(f"recorded {sum(counts.values())} messages to {args.out}: {counts}")
    return 0
