"""Image transport between two processes, with and without config/fastdds.xml.

Publishes 640x480 rgb8 ``sensor_msgs/Image`` messages (921,600 bytes) from one
process to another over Fast DDS with localhost discovery and reports the
latency (receive time - header stamp; one host, one clock) and how many
arrive, with Fast DDS defaults and with the project's profile (16 MB
shared-memory segment), for reliable and for sensor-data (best effort) QoS. It also reads the packet counters of every non-loopback interface
before and after each run: they must not move because of us (the counters
are machine-wide, so other processes can add packets; zero is conclusive).

    make bench          (or: .venv/bin/python bench/foundation.py)

Writes bench/results/foundation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "bench" / "results" / "foundation.json"
PROFILE = REPO_ROOT / "config" / "fastdds.xml"
TOPIC = "/foundation_bench/image"


def _tx_packets_off_loopback() -> int:
    total = 0
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, stats = line.split(":", 1)
        if name.strip() != "lo":
            total += int(stats.split()[9])  # transmit packets
    return total


def _qos(name: str) -> Any:
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    if name == "sensor_data":  # best effort, depth 5: what camera drivers publish
        return qos_profile_sensor_data
    return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def _publisher(n: int, rate_hz: float, width: int, height: int, qos: str) -> None:
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("foundation_bench_pub")
    pub = node.create_publisher(Image, TOPIC, _qos(qos))
    deadline = time.monotonic() + 30
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # let the match settle: the first samples are lost otherwise
    data = np.random.default_rng(0).integers(0, 255, width * height * 3, dtype=np.uint8).tobytes()
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
    msg.data = data
    for _ in range(n):
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
        pub.publish(msg)
        time.sleep(1.0 / rate_hz)
    time.sleep(1.0)
    node.destroy_node()
    rclpy.shutdown()


def _subscriber(n: int, timeout_s: float, qos: str) -> None:
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("foundation_bench_sub")
    lat_ms: list[float] = []

    def cb(m: Image) -> None:
        sent = m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec
        lat_ms.append((time.time_ns() - sent) / 1e6)

    node.create_subscription(Image, TOPIC, cb, _qos(qos))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(lat_ms) < n:
        rclpy.spin_once(node, timeout_sec=0.05)
    print(json.dumps(lat_ms))
    node.destroy_node()
    rclpy.shutdown()


def run_pair(profile: bool, qos: str, n: int, rate_hz: float, width: int, height: int) -> dict[str, Any]:
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", "57")
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    if profile:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
    me = [sys.executable, __file__]
    tx0 = _tx_packets_off_loopback()
    sub = subprocess.Popen(me + ["--role", "sub", "--qos", qos, "-n", str(n)], env=env, stdout=subprocess.PIPE, text=True)
    pub = subprocess.Popen(me + ["--role", "pub", "--qos", qos, "-n", str(n), "--rate", str(rate_hz),
                                 "--width", str(width), "--height", str(height)], env=env)
    pub.wait(timeout=120)
    out, _ = sub.communicate(timeout=120)
    tx1 = _tx_packets_off_loopback()
    lat = np.array(json.loads(out.strip().splitlines()[-1]))
    return {
        "profile": str(PROFILE.relative_to(REPO_ROOT)) if profile else None,
        "qos": qos,
        "sent": n,
        "received": int(lat.size),
        "latency_ms_median": round(float(np.median(lat)), 2) if lat.size else None,
        "latency_ms_p90": round(float(np.percentile(lat, 90)), 2) if lat.size else None,
        "latency_ms_max": round(float(lat.max()), 2) if lat.size else None,
        "tx_packets_off_loopback_during_run": tx1 - tx0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", choices=["pub", "sub"], help=argparse.SUPPRESS)
    ap.add_argument("--qos", choices=["sensor_data", "reliable"], default="reliable", help=argparse.SUPPRESS)
    ap.add_argument("-n", type=int, default=100, help="images per run")
    ap.add_argument("--rate", type=float, default=20.0, help="publish rate, Hz")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    args = ap.parse_args()
    if args.role == "pub":
        return _publisher(args.n, args.rate, args.width, args.height, args.qos)
    if args.role == "sub":
        return _subscriber(args.n, timeout_s=30 + args.n / args.rate, qos=args.qos)

    runs = [
        run_pair(p, q, args.n, args.rate, args.width, args.height)
        for q in ("reliable", "sensor_data")
        for p in (False, True)
    ]
    result = {
        "bench": "foundation: 640x480 rgb8 image between two processes, Fast DDS, localhost discovery",
        "image_bytes": args.width * args.height * 3,
        "rate_hz": args.rate,
        "machine": f"{platform.node()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
