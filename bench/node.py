"""Restore node latency and throughput over DDS, 640x480.

1. Added latency in passthrough mode: one image/camera_info/pose stream goes
   at the same time to (a) a bare rclpy relay process (subscribe image,
   publish it again, as rclpy's Image messages) and (b) ``sirdiff-restore`` with backend ``passthrough``;
   latency is send -> receive of each output image in this process (one
   clock), compared frame by frame, so background load hits both alike;
   also split into the gate's targets (a KeyframeSet each) and other frames.
2. End to end with the ``fusion`` backend, 4 views: targets' restore call and
   arrival-to-publication latency (from KeyframeSet), output rate, restored
   targets per second, and the node's CPU time per thread; once without a
   depth topic (a monocular camera: the fusion aligns by optical flow) and
   once with the frames' metric depth on ``depth`` (an RGB-D camera: it
   aligns by reprojection). Quality: each target's PSNR against its
   sharp ground truth, output minus input (0 dB for a target passed through).
   Under load the node restores with ``num_views_under_load`` views
   (``--views-under-load`` sets it; 0: always 4).

    .venv/bin/python bench/node.py [--seconds 10] [--rate 20]

Writes bench/results/node.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", "59")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO_ROOT / "config" / "fastdds.xml"))

from geometry_msgs.msg import PoseStamped  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from sirdiff_ros.msg import KeyframeSet, RestoreStatus  # noqa: E402
from sirdiff_ros.ros.convert import depth_message, frame_messages, image_from_msg, ns_to_stamp_fields, stamp_to_ns  # noqa: E402
from sirdiff_ros.ros.probe import NodeProcess, Probe, target_rich_frames  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "node.json"
INPUTS = {"image": Image, "camera_info": CameraInfo, "pose": PoseStamped}

RELAY = """
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("bare_relay")
qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
pub = node.create_publisher(Image, "relay/image", qos)
node.create_subscription(Image, "image", pub.publish, qos)
try:
    rclpy.spin(node)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
"""


def _stream(probe: Probe, msgs: list[tuple[Any, ...]], seconds: float, rate: float, start_index: int) -> dict[int, float]:
    """Publish at ``rate`` Hz for ``seconds`` (image, camera_info, pose and, where the
    tuple has one, depth); returns send time by stamp."""
    sent: dict[int, float] = {}
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < seconds:
        img, info, pose, *depth = msgs[i % len(msgs)]
        stamp_ns = int((start_index + i) * 1e9 / rate)
        for m in (img, info, pose, *depth):
            m.header.stamp.sec, m.header.stamp.nanosec = ns_to_stamp_fields(stamp_ns)
        probe.publish("pose", pose)
        probe.publish("camera_info", info)
        for d in depth:
            probe.publish("depth", d)
        sent[stamp_ns] = time.monotonic()
        probe.publish("image", img)
        i += 1
        time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
    return sent


def _thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each live thread of process ``pid``, by thread id and name (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue  # ended meanwhile
        # Python threads keep the process's name: the main thread (the executor) gets its own.
        name = "main" if tid == str(pid) else stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[f"{tid} {name}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _cpu_by_thread_name(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds spent between two :func:`_thread_cpu_s` readings, summed over threads of one name."""
    spent: dict[str, float] = {}
    for key, t in after.items():
        name = key.split(" ", 1)[1]
        spent[name] = round(spent.get(name, 0.0) + t - before.get(key, 0.0), 2)
    return dict(sorted(spent.items(), key=lambda kv: -kv[1]))


def _latencies(probe: Probe, topic: str, sent: dict[int, float]) -> np.ndarray:
    return np.array([(r.t - sent[r.stamp_ns]) * 1e3 for r in probe.get(topic) if r.stamp_ns in sent])


def _summary(ms: np.ndarray, n_sent: int) -> dict[str, Any]:
    return {
        "frames_sent": n_sent,
        "frames_received": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


def bench_added_latency(msgs: list[tuple[Any, Any, Any]], seconds: float, rate: float) -> dict[str, Any]:
    """Relay and node subscribe to the same stream at once; per-frame latency pairs."""
    relay = NodeProcess(command=[sys.executable, "-c", RELAY], log_path=f"/tmp/bench_node_relay_{os.getpid()}.log")
    node = NodeProcess({"backend": "passthrough", "qos_reliability": "reliable"}, log_path=f"/tmp/bench_node_node_{os.getpid()}.log")
    try:
        outputs = {"relay/image": Image, "restored/image": Image, "keyframe_set": KeyframeSet}
        with Probe(INPUTS, outputs, depth=10) as probe:
            if not probe.wait_matched(30):
                raise RuntimeError(f"no match:\n{relay.output()}\n{node.output()}")
            sent = _stream(probe, msgs, seconds, rate, 0)
            time.sleep(1.0)
            got = {t: {r.stamp_ns: (r.t - sent[r.stamp_ns]) * 1e3 for r in probe.get(t) if r.stamp_ns in sent}
                   for t in ("relay/image", "restored/image")}
            targets = {r.stamp_ns for r in probe.get("keyframe_set")}  # the node publishes a KeyframeSet per target
    finally:
        relay.close()
        node.close()
    skip = sorted(sent)[int(rate)]  # first second: discovery and warm-up
    both = sorted(s for s in got["relay/image"] if s in got["restored/image"] and s >= skip)
    r = np.array([got["relay/image"][s] for s in both])
    n = np.array([got["restored/image"][s] for s in both])
    is_target = np.array([s in targets for s in both], bool)

    def added_p50(sel: np.ndarray) -> float | None:
        return round(float(np.percentile(n[sel] - r[sel], 50)), 3) if sel.any() else None

    return {
        "rate_hz": rate,
        "seconds": seconds,
        "relay": _summary(r, len(sent)),
        "node_passthrough": _summary(n, len(sent)),
        "added_per_frame_p50_ms": round(float(np.percentile(n - r, 50)), 3),
        "added_per_frame_mean_ms": round(float(np.mean(n - r)), 3),
        "added_p50_ms": round(float(np.percentile(n, 50) - np.percentile(r, 50)), 3),
        # Targets (the gate's picks) go through a restore worker and view selection even with passthrough.
        "targets": int(is_target.sum()),
        "added_per_frame_p50_ms_targets": added_p50(is_target),
        "added_per_frame_p50_ms_other_frames": added_p50(~is_target),
        "goal_added_ms": 1.0,
    }


def _psnr_gains(probe: Probe, frames: list[Any], sent: dict[int, float], targets: set[int]) -> dict[int, float]:
    """Per blurred target stamp: PSNR of the node's output against the frame's sharp ground truth, minus the input's (dB)."""
    index = {stamp: i for i, stamp in enumerate(sorted(sent))}
    gains = {}
    for r in probe.get("restored/image"):
        if r.stamp_ns in targets and r.stamp_ns in index:
            frame = frames[index[r.stamp_ns] % len(frames)]  # _stream cycles through the frames
            if not frame.extras["blurred"]:
                continue  # its input is the ground truth: no gain to measure
            gt = frame.extras["sharp"]
            gains[r.stamp_ns] = cv2.PSNR(image_from_msg(r.msg, 1 << 30), gt) - cv2.PSNR(frame.image, gt)
    return gains


def bench_fusion(msgs: list[tuple[Any, ...]], frames: list[Any], seconds: float, rate: float, budget_s: float,
                 worker_threads: int | None = None, views_under_load: int | None = None) -> dict[str, Any]:
    with_depth = len(msgs[0]) > 3
    params = {"backend": "fusion", "num_views": 4, "qos_reliability": "reliable", "min_translation": 0.0,
              "latency_budget_s": budget_s, "depth_topic": "depth" if with_depth else ""}
    if worker_threads is not None:
        params["worker_threads"] = worker_threads
    if views_under_load is not None:
        params["num_views_under_load"] = views_under_load
    proc = NodeProcess(
        params,
        log_path=f"/tmp/bench_node_fusion_{os.getpid()}.log",
    )
    try:
        out = {"restored/image": Image, "keyframe_set": KeyframeSet, "status": RestoreStatus}
        with Probe({**INPUTS, "depth": Image} if with_depth else INPUTS, out, depth=10) as probe:
            if not probe.wait_matched(30):
                raise RuntimeError(proc.output())
            cpu0 = _thread_cpu_s(proc.proc.pid)
            t0 = time.monotonic()
            sent = _stream(probe, msgs, seconds, rate, 0)
            wall = time.monotonic() - t0
            time.sleep(3.0)
            node_cpu = _cpu_by_thread_name(cpu0, _thread_cpu_s(proc.proc.pid))
            e2e = _latencies(probe, "restored/image", sent)
            sets = [r.msg for r in probe.get("keyframe_set")]
            status = probe.get("status")[-1].msg
            gains = _psnr_gains(probe, frames, sent, {stamp_to_ns(k.header.stamp) for k in sets})
    finally:
        proc.close()
    restored = [k for k in sets if k.outcome == KeyframeSet.OUTCOME_RESTORED]
    restored_stamps = {stamp_to_ns(k.header.stamp) for k in restored}
    restored_gains = [g for stamp, g in gains.items() if stamp in restored_stamps]
    reasons: dict[str, int] = {}
    for k in sets:
        if k.outcome != KeyframeSet.OUTCOME_RESTORED:
            reasons[k.reason] = reasons.get(k.reason, 0) + 1
    call = np.array([k.latency_ms for k in restored])
    target_e2e = np.array([k.end_to_end_ms for k in restored])
    views = [len(k.views) for k in restored]
    return {
        "rate_hz": rate,
        "depth": with_depth,
        "latency_budget_s": budget_s,
        "worker_threads": worker_threads,
        "seconds": seconds,
        "frames_sent": len(sent),
        "frames_out": int(e2e.size),
        "output_rate_hz": round(e2e.size / wall, 2),
        "all_frames_send_to_receive_ms": _summary(e2e, len(sent)),
        "targets": len(sets),
        "restored": len(restored),
        "passed_through_by_reason": reasons,
        "restored_per_s": round(len(restored) / wall, 2),
        "views_per_set_mean": round(float(np.mean(views)), 2) if views else None,
        "restored_by_views": {str(n): views.count(n) for n in sorted(set(views), reverse=True)},
        # Over every target (a target passed through gains 0 dB), and over the restored ones.
        "psnr_gain_db_mean_targets": round(float(np.mean(list(gains.values()))), 3) if gains else None,
        "psnr_gain_db_mean_restored": round(float(np.mean(restored_gains)), 3) if restored_gains else None,
        "restore_call_ms_p50": round(float(np.percentile(call, 50)), 1) if call.size else None,
        "restore_call_ms_p90": round(float(np.percentile(call, 90)), 1) if call.size else None,
        "target_arrival_to_publish_ms_p50": round(float(np.percentile(target_e2e, 50)), 1) if call.size else None,
        "target_arrival_to_publish_ms_p90": round(float(np.percentile(target_e2e, 90)), 1) if call.size else None,
        # Python threads other than main: the restore workers (and OpenCV's pool).
        "node_cpu_s_per_s": round(sum(node_cpu.values()) / wall, 3),
        "node_cpu_s_by_thread": node_cpu,
        "node_status": {"received": status.images_received, "published": status.images_published, "dropped": status.dropped_total},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per measurement round")
    ap.add_argument("--rate", type=float, default=20.0, help="input frame rate, Hz")
    ap.add_argument("--budget", type=float, default=1.0, help="latency_budget_s of the fusion run (the node's default)")
    ap.add_argument("--fusion-rate", type=float, default=30.0, help="input frame rate of the fusion run, Hz")
    ap.add_argument("--only-fusion", action="store_true")
    ap.add_argument("--only-passthrough", action="store_true", help="the added latency alone (no fusion runs, no results file)")
    ap.add_argument("--worker-threads", type=int, default=None, help="the fusion run's worker_threads (default: the node's)")
    ap.add_argument("--views-under-load", type=int, default=None,
                    help="the fusion run's num_views_under_load (default: the node's; 0: always 4 views)")
    ap.add_argument("--fusion-depth", choices=("without", "with", "both"), default="both",
                    help="fusion runs without a depth topic, with one, or both (default)")
    args = ap.parse_args()
    print("generating 640x480 frames ...", flush=True)
    frames = target_rich_frames(12, 640, 480)
    msgs = [frame_messages(f) for f in frames]
    added = None
    if not args.only_fusion:
        print("added latency, passthrough vs bare relay:", flush=True)
        added = bench_added_latency(msgs, args.seconds * 2, args.rate)
        print(json.dumps({k: v for k, v in added.items() if not isinstance(v, dict)}), flush=True)
    if args.only_passthrough:
        return 0
    runs = {"without": [False], "with": [True], "both": [False, True]}[args.fusion_depth]
    fusion: dict[str, Any] = {}
    for with_depth in runs:
        name = "fusion_4_views_depth" if with_depth else "fusion_4_views"
        print(f"fusion backend, 4 views, {'with' if with_depth else 'without'} depth:", flush=True)
        run_msgs = [(*m, depth_message(f, m[0].header)) if with_depth else m for f, m in zip(frames, msgs)]
        fusion[name] = bench_fusion(run_msgs, frames, args.seconds * 2, args.fusion_rate, args.budget, args.worker_threads,
                                    args.views_under_load)
        print(json.dumps(fusion[name], indent=2), flush=True)
    if added is None:
        return 0
    result = {
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "fastdds_profile": os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", ""),
        "image": "640x480 rgb8",
        "added_latency_passthrough": added,
        **fusion,
        "note": "2 shared CPU cores; other jobs ran at the same time, so absolute numbers are noisy",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
