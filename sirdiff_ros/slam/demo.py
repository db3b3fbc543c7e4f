"""``make demo-slam``: ORB-SLAM3 in the loop over DDS, on a synthetic burst bag.

1. write a ``--preset slam`` sequence (held-out seed: fast pans blur the
   exposures) as a ROS 2 bag;
2. *input*: play the camera topics into ``sirdiff-orbslam`` directly;
3. *restored*: the deployment loop. ``sirdiff-restore`` takes the camera
   image and ORB-SLAM3's own pose topic (no ground-truth pose is played),
   ``sirdiff-orbslam`` tracks the restore node's output and publishes that
   pose: camera bag -> restore node -> ORB-SLAM3 node -> pose -> restore node.
   The restore node extrapolates the newest pose to each new image's stamp
   (``pose_extrapolation_s``): ORB-SLAM3 publishes a frame's pose only after
   it has tracked that frame, which comes after the restore node released it.
   While ORB-SLAM3 is lost (or not yet initialised) it publishes no pose; with
   ``--fallback-poses`` (the default) the bag's camera pose topic plays the
   robot's odometry on the restore node's ``fallback_pose_topic``, which then
   continues ORB-SLAM3's last pose with that motion. The bag's poses are the
   ground truth: a perfect odometry, so this run shows what the loop does with
   good odometry, not with what a real robot has. ``--no-fallback-poses``: the
   restore node has ORB-SLAM3's poses only;
4. print the tracking table of both runs against the bag's ground-truth
   poses, with where the restore node's poses came from, and write
   ``report.md`` / ``report.json`` under ``--out``.

    python -m sirdiff_ros.slam.demo [--out DIR] [--frames 90] [--mode rgbd] [--backend fusion]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from ..ros.probe import NodeProcess
from .orbslam import SlamRun, slam_metrics

__all__ = ["run_demo_slam", "main"]

CAMERA = {"image": "/camera/image_raw", "camera_info": "/camera/camera_info", "depth": "/ground_truth/depth",
          "pose": "/camera/pose"}
RESTORED = {"image": "/restored/image", "camera_info": "/restored/camera_info"}
SLAM_POSE = "/slam/pose"


def _slam_node(out: Path, name: str, remaps: dict[str, str], mode: str, vocabulary: str, fps: float) -> NodeProcess:
    cmd = [sys.executable, "-m", "sirdiff_ros.slam.node", "--ros-args", "-r", f"__node:=orbslam3_{name}"]
    for src, dst in remaps.items():
        cmd += ["-r", f"{src}:={dst}"]
    params = {"mode": mode, "vocabulary": vocabulary, "fps": fps, "states_file": str(out / f"{name}_states.csv")}
    return NodeProcess(params, command=cmd, log_path=out / f"{name}_orbslam.log")


def _wait_log(node: NodeProcess, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in node.output():
            return
        if not node.alive():
            raise RuntimeError(f"node exited early:\n{node.output()[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"node did not log {text!r} in {timeout_s:.0f} s:\n{node.output()[-3000:]}")


def _states_count(path: Path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0


def _play(bag: Path, topics: list[str], rate: float, nodes: list[NodeProcess], settle_s: float,
          drain_s: float = 0.0) -> dict[str, int]:
    """Play ``topics`` of ``bag``; with ``drain_s`` > 0 (the loop), wait up to that long for the restore
    node to publish every image played (it restores slower than real time on a few cores), so that
    ORB-SLAM3 sees the whole restored stream; then ``settle_s`` for ORB-SLAM3's last frames."""
    from sensor_msgs.msg import CameraInfo

    from ..ros.bag_tools import play_bag
    from ..ros.probe import Probe

    probe = Probe({}, {RESTORED["camera_info"]: CameraInfo}, name="demo_slam_probe") if drain_s > 0 else None
    try:
        played = play_bag(bag, rate, topics, wait_subscribers_s=60.0)
        if probe is not None:
            images = played.published.get(CAMERA["image"], 0)
            probe.wait_for(lambda: len(probe.get(RESTORED["camera_info"])) >= images, drain_s)
    finally:
        if probe is not None:
            probe.close()
    time.sleep(settle_s)  # the last frames through the restore node and ORB-SLAM3
    for n in nodes:
        n.interrupt(30.0)
        n.close()
    return {k: int(v) for k, v in played.published.items()}


def _run(out: Path, states: Path, ground_truth: dict[int, Any], mode: str) -> dict[str, Any]:
    from .node import read_states

    stamps, st, poses = read_states(states)
    metrics = slam_metrics(SlamRun(mode, stamps, st, poses, [0] * len(st)), ground_truth)
    metrics["timeline"] = "".join({"OK": ".", "RECENTLY_LOST": "r", "LOST": "L", "NOT_INITIALIZED": "n"}.get(s, "?")
                                  for s in st)
    return metrics


def _pose_sources(log: str) -> dict[str, int]:
    """Images the restore node admitted per pose source, from its shutdown line."""
    found = re.findall(r"pose sources (\{[^}]*\})", log)
    return {str(k): int(v) for k, v in ast.literal_eval(found[-1]).items()} if found else {}


def run_demo_slam(out: Path, frames: int, seed: int, mode: str, backend: str, rate: float,
                  vocabulary: str, fallback_poses: bool = True) -> dict[str, Any]:
    from ..data.bags import read_bag_frames, write_frames_bag
    from ..data.synth import PRESETS, generate_sequence
    from ..ros.demo import _params_file
    from .vocabulary import resolve_vocabulary

    out.mkdir(parents=True, exist_ok=True)
    bag = out / "camera_bag"
    if bag.exists():
        raise FileExistsError(f"{bag} exists; choose an empty --out folder")
    voc = resolve_vocabulary(vocabulary or None, announce=lambda m: print(f"[demo-slam] {m}", flush=True))
    fps = PRESETS["slam"]["fps"]
    print(f"[demo-slam] generating {frames} frames of held-out seed {seed} (preset slam, {fps:.0f} fps) -> {bag}",
          flush=True)
    write_frames_bag(bag, generate_sequence(seed, frames, 640, 480, preset="slam"), fmt="db3")
    truth = {f.stamp_ns: f.pose for f in read_bag_frames(bag)}
    camera_topics = [CAMERA["image"], CAMERA["camera_info"]] + ([CAMERA["depth"]] if mode == "rgbd" else [])
    settle = max(8.0, 0.2 * frames)
    report: dict[str, Any] = {"frames": frames, "seed": seed, "mode": mode, "backend": backend, "rate": rate,
                              "vocabulary": voc.as_dict(), "played": {}, "fallback_poses": fallback_poses}

    print(f"[demo-slam] run 1/2: the camera stream into ORB-SLAM3 ({mode})", flush=True)
    slam = _slam_node(out, "input", {"image": CAMERA["image"], "camera_info": CAMERA["camera_info"],
                                     "depth": CAMERA["depth"], "pose": "/slam_input/pose"}, mode, str(voc.path), fps)
    _wait_log(slam, "ORB-SLAM3 " + mode, 120.0)
    report["played"]["input"] = _play(bag, camera_topics, rate, [slam], settle)
    report["input"] = _run(out, out / "input_states.csv", truth, mode)

    print(f"[demo-slam] run 2/2: camera -> sirdiff-restore ({backend}) -> ORB-SLAM3 -> {SLAM_POSE} -> sirdiff-restore",
          flush=True)
    params = {"image_topic": CAMERA["image"], "camera_info_topic": CAMERA["camera_info"], "pose_topic": SLAM_POSE,
              "backend": backend, "qos_reliability": "reliable", "latency_budget_s": 30.0, "queue_size": 64,
              "exposure_s": PRESETS["slam"]["exposure_s"],
              # The player shares one thread among image, camera_info and depth; a depth message held
              # back by a busy subscriber delays the camera_info after it: pair them patiently.
              "sync_timeout_s": 5.0,
              # The newest image has no pose yet: ORB-SLAM3 is still behind it. Do not wait for one;
              # extrapolate the last poses over ORB-SLAM3's latency (a few frames).
              "pose_wait_s": 0.0, "pose_extrapolation_s": 0.3}
    restored_topics = list(camera_topics)
    if fallback_poses:
        params.update(fallback_pose_topic=CAMERA["pose"], fallback_pose_type="pose_stamped")
        restored_topics.append(CAMERA["pose"])
    restore = NodeProcess(params, params_file=_params_file(), log_path=out / "restore_node.log")
    slam = _slam_node(out, "restored", {"image": RESTORED["image"], "camera_info": RESTORED["camera_info"],
                                        "depth": CAMERA["depth"], "pose": SLAM_POSE}, mode, str(voc.path), fps)
    _wait_log(slam, "ORB-SLAM3 " + mode, 120.0)
    report["played"]["restored"] = _play(bag, restored_topics, rate, [restore, slam], settle, drain_s=30.0 + 5.0 * frames)
    report["restored"] = _run(out, out / "restored_states.csv", truth, mode)
    report["restore_node_pose_sources"] = _pose_sources(restore.output())
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(_markdown(report))
    return report


def table(report: dict[str, Any]) -> str:
    rows = ["| stream | frames seen | tracked % | lost | not initialised | first tracked | map resets | ATE cm |",
            "|---|---|---|---|---|---|---|---|"]
    for name in ("input", "restored"):
        m = report[name]
        ate = m.get("ate_rmse_m")
        rows.append(
            f"| {name} | {m['frames']} | {100 * m['tracked_fraction']:.1f} | {m['lost_frames']} | "
            f"{m['not_initialized_frames']} | {m['first_tracked_frame'] if m['first_tracked_frame'] is not None else '-'} | "
            f"{m['map_resets']} | {'-' if ate is None or ate != ate else f'{100 * ate:.2f}'} |"
        )
    return "\n".join(rows)


def _markdown(r: dict[str, Any]) -> str:
    return "\n".join([
        "# ORB-SLAM3 in the loop",
        "",
        f"Held-out synthetic burst sequence (seed {r['seed']}, {r['frames']} frames, preset `slam`), ORB-SLAM3 "
        f"`{r['mode']}`, restore backend `{r['backend']}`, bag played at rate {r['rate']} over DDS; vocabulary "
        f"`{r['vocabulary']['path']}` ({r['vocabulary']['source']}).",
        "",
        table(r),
        "",
        "Poses of the restore node (images per source): " + (
            ", ".join(f"{k} {v}" for k, v in r.get("restore_node_pose_sources", {}).items()) or "unknown") + ". "
        + ("`fallback` = the bag's camera pose topic (ground truth, standing in for odometry) continuing "
           "ORB-SLAM3's last pose while it had none." if r.get("fallback_poses") else
           "No fallback: images without an ORB-SLAM3 pose (`none`) cannot be restored."),
        "",
        "Timelines (`.` OK, `r` recently lost, `L` lost, `n` not initialised):",
        "",
        f"    input    {r['input']['timeline']}",
        f"    restored {r['restored']['timeline']}",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sirdiff_ros.slam.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: ./out/demo-slam-<date>-<time>)")
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--seed", type=int, default=1_000_007, help="held-out scene seed (1000007: four fast pans in 4 s)")
    ap.add_argument("--mode", choices=("mono", "rgbd"), default="mono",
                    help="ORB-SLAM3 mode (mono: blur decides tracking; rgbd: metric poses, but on 2 shared cores "
                         "the extra depth stream delays the camera_info the restore node pairs images with)")
    ap.add_argument("--backend", default="fusion")
    ap.add_argument("--rate", type=float, default=0.5, help="bag playback rate (2 shared CPU cores: below real time)")
    ap.add_argument("--orb-vocab", default="", help="DBoW2 vocabulary (default: $PYORBSLAM3_VOCAB or the built-in one)")
    ap.add_argument("--fallback-poses", action=argparse.BooleanOptionalAction, default=True,
                    help="the bag's camera poses (ground truth, standing in for odometry) on the restore node's "
                         "fallback_pose_topic while ORB-SLAM3 has no pose (default: on)")
    args = ap.parse_args(argv)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    out = (args.out or Path("out") / time.strftime("demo-slam-%Y%m%d-%H%M%S")).resolve()
    report = run_demo_slam(out, args.frames, args.seed, args.mode, args.backend, args.rate, args.orb_vocab,
                           args.fallback_poses)
    print(table(report))
    print(f"[demo-slam] restore node poses per source: {report.get('restore_node_pose_sources')}")
    print(f"[demo-slam] report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
