"""``make demo``: a synthetic blurred bag through the restore node over DDS, with a report.

Steps (all local, CPU, no downloads):

1. generate a blurred camera sequence with ground truth (``sirdiff_ros.data.synth``)
   and write it to a ROS 2 bag;
2. start ``sirdiff-restore`` in its own process with ``config/restore.yaml``
   (backend ``fusion`` by default: it restores a 640x480 target in a fraction of a
   second on 2 CPU cores; ``--backend sirdiff`` runs the shipped diffusion weights,
   which take seconds per target there, see docs/model.md);
3. record its outputs with the bag recorder and play the bag into it with the
   bag player, both over DDS;
4. read the recorded bag back and write ``report.md``, ``report.json`` and
   ``demo_grid.png`` (blurred | restored | ground truth crops) under ``--out``.

    python -m sirdiff_ros.ros.demo [--out DIR] [--frames 60] [--backend fusion]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .probe import REPO_ROOT, NodeProcess

__all__ = ["DEFAULT_BACKEND", "run_demo", "main"]

TOPICS = {"image_topic": "/camera/image_raw", "camera_info_topic": "/camera/camera_info", "pose_topic": "/camera/pose"}
OUT_TOPICS = ["/restored/image", "/restored/camera_info", "/keyframe_set", "/status"]


# The fast CPU backend (docs/model.md compares them); `--backend sirdiff` runs the
# shipped diffusion weights, seconds per 640x480 target on 2 CPU cores.
DEFAULT_BACKEND = "fusion"


def _params_file() -> Path:
    here = REPO_ROOT / "config" / "restore.yaml"
    if here.is_file():
        return here
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        p = Path(prefix) / "share" / "sirdiff_ros" / "config" / "restore.yaml"
        if prefix and p.is_file():
            return p
    raise FileNotFoundError("config/restore.yaml not found in the source tree or AMENT_PREFIX_PATH")


def _read_outputs(bag: Path) -> tuple[dict[int, np.ndarray], list[Any], Any]:
    """Restored images by stamp, KeyframeSet messages, last RestoreStatus from the recorded bag."""
    from rosbags.highlevel import AnyReader

    from ..core.image_codec import decode_image_msg, to_rgb8
    from ..interfaces import make_typestore
    from .convert import stamp_to_ns

    images: dict[int, np.ndarray] = {}
    sets: list[Any] = []
    status = None
    with AnyReader([bag], default_typestore=make_typestore()) as reader:
        for conn, _, raw in reader.messages(connections=reader.connections):
            msg: Any = reader.deserialize(raw, conn.msgtype)
            if conn.topic == "/restored/image":
                images[stamp_to_ns(msg.header.stamp)] = to_rgb8(decode_image_msg(msg), msg.encoding)
            elif conn.topic == "/keyframe_set":
                sets.append(msg)
            elif conn.topic == "/status":
                status = msg
    return images, sets, status


def _grid(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]], crop: tuple[int, int]) -> np.ndarray:
    """Rows of (blurred, restored, sharp) centre crops with a label strip, RGB uint8."""
    cw, ch = crop
    tiles = []
    for blurred, restored, sharp, label in rows:
        h, w = blurred.shape[:2]
        y0, x0 = max(0, (h - ch) // 2), max(0, (w - cw) // 2)
        row = np.concatenate([im[y0 : y0 + ch, x0 : x0 + cw] for im in (blurred, restored, sharp)], axis=1)
        strip = np.full((22, row.shape[1], 3), 255, np.uint8)
        cv2.putText(strip, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        tiles += [strip, row]
    head = np.full((22, tiles[0].shape[1], 3), 255, np.uint8)
    for i, name in enumerate(("blurred input", "restored (node output)", "ground truth")):
        cv2.putText(head, name, (4 + i * cw, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([head] + tiles, axis=0)


def _save_png(path: Path, rgb: np.ndarray) -> None:
    # 256-colour palette: photographic crops stay readable at a fraction of the size.
    from PIL import Image as PILImage

    PILImage.fromarray(rgb).quantize(colors=256, method=PILImage.Quantize.MEDIANCUT).save(path, optimize=True)


def run_demo(out: Path, frames: int, width: int, height: int, backend: str, seed: int, rate: float) -> dict[str, Any]:
    from ..data.bags import read_bag_frames, write_frames_bag
    from ..data.synth import SynthConfig, generate_sequence
    from ..evaluation.metrics import psnr, ssim
    from .bag_tools import play_bag, record_bag

    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    in_bag, out_bag = out / "input_bag", out / "restored_bag"
    for b in (in_bag, out_bag):
        if b.exists():
            raise FileExistsError(f"{b} exists; choose an empty --out folder")
    print(f"[demo] generating {frames} blurred {width}x{height} frames (seed {seed}) -> {in_bag}", flush=True)
    write_frames_bag(in_bag, generate_sequence(seed, frames, width, height))
    timings["generate_s"] = time.monotonic() - t0

    print(f"[demo] starting sirdiff-restore with backend {backend!r}", flush=True)
    # Replay settings: every target may take its time (stream order is kept), the
    # config's defaults favour latency on a live camera instead.
    params = {**TOPICS, "backend": backend, "qos_reliability": "reliable", "latency_budget_s": 600.0, "queue_size": 100,
              # The generated rooms: walls 1-8 m away (the depth a monocular camera cannot see).
              "min_depth": 1.0, "max_depth": 8.0}
    # The generator's exposure time is known: let the camera's motion predict the blur.
    params["exposure_s"] = SynthConfig().exposure_s
    node = NodeProcess(params, params_file=_params_file(), log_path=out / "node.log")
    stop, ready = threading.Event(), threading.Event()
    counts: dict[str, int] = {}
    rec_error: list[BaseException] = []

    def record() -> None:
        try:
            counts.update(record_bag(out_bag, OUT_TOPICS, None, 60.0, stop=stop, ready=ready))
        except BaseException as exc:  # noqa: BLE001 - reported below
            rec_error.append(exc)
            ready.set()

    rec = threading.Thread(target=record, name="demo-recorder")
    rec.start()
    try:
        t1 = time.monotonic()
        if not ready.wait(90) or rec_error:
            raise RuntimeError(f"recorder did not start: {rec_error}\n{node.output()}")
        print(f"[demo] playing {in_bag.name} into the node at rate {rate}", flush=True)
        played = play_bag(in_bag, rate, list(TOPICS.values()), wait_subscribers_s=30.0)
        timings["play_s"] = played.duration_s
        _wait_outputs(node, frames, time.monotonic() + 600)
        time.sleep(1.5)  # one more /status after the last image
        timings["node_s"] = time.monotonic() - t1
    finally:
        stop.set()
        rec.join(30)
        rc, exit_s = node.interrupt()
        node.close()
    if rec_error:
        raise RuntimeError(f"recording failed: {rec_error[0]}")

    truth = {f.stamp_ns: f for f in read_bag_frames(in_bag)}
    restored, sets, status = _read_outputs(out_bag)
    rows, per_target = [], []
    for k in sets:
        stamp = k.header.stamp.sec * 1_000_000_000 + k.header.stamp.nanosec
        f, img = truth.get(stamp), restored.get(stamp)
        if f is None or img is None or "sharp" not in f.extras:
            continue
        sharp = f.extras["sharp"]
        rec_ = {
            "stamp_ns": stamp,
            "restored": k.outcome == 0,
            "reason": k.reason,
            "views": len(k.views),
            "latency_ms": round(float(k.latency_ms), 1),
            "end_to_end_ms": round(float(k.end_to_end_ms), 1),
            "psnr_before": round(psnr(f.image, sharp), 2),
            "psnr_after": round(psnr(img, sharp), 2),
            "ssim_before": round(ssim(f.image, sharp), 4),
            "ssim_after": round(ssim(img, sharp), 4),
        }
        per_target.append(rec_)
        rows.append((rec_["psnr_after"] - rec_["psnr_before"], f.image, img, sharp, rec_))
    done = [r for r in per_target if r["restored"]]
    rows.sort(key=lambda r: -r[0])
    grid_rows = [
        (b, r, s, f"t={rec['stamp_ns'] / 1e9:.1f}s  PSNR {rec['psnr_before']:.2f} -> {rec['psnr_after']:.2f} dB  ({rec['views']} views)")
        for _, b, r, s, rec in rows[:3]
    ]
    if grid_rows:
        _save_png(out / "demo_grid.png", _grid(grid_rows, (min(240, width), min(180, height))))

    def mean(key: str) -> float | None:
        return round(float(np.mean([r[key] for r in done])), 3) if done else None

    def pct(key: str, q: float) -> float | None:
        return round(float(np.percentile([r[key] for r in done], q)), 1) if done else None

    report = {
        "backend": backend,
        "frames": frames,
        "size": [width, height],
        "seed": seed,
        "node": {
            "played": int(played.published.get(TOPICS["image_topic"], 0)),
            "received": int(status.images_received) if status else None,
            "published": int(status.images_published) if status else None,
            "dropped": dict(zip(status.drop_reasons, map(int, status.drop_counts))) if status else None,
            "keyframes": int(status.keyframes) if status else None,
            "restoration_targets": int(status.restoration_targets) if status else None,
            "restored": int(status.images_restored) if status else None,
            "passed_through": int(status.images_passed_through) if status else None,
            "exit_code": rc,
            "sigint_exit_s": round(exit_s, 2),
        },
        "recorded_images": len(restored),
        "restored_targets": len(done),
        "psnr_before": mean("psnr_before"),
        "psnr_after": mean("psnr_after"),
        "ssim_before": mean("ssim_before"),
        "ssim_after": mean("ssim_after"),
        "restore_latency_ms_p50": pct("latency_ms", 50),
        "restore_latency_ms_p90": pct("latency_ms", 90),
        "end_to_end_ms_p50": pct("end_to_end_ms", 50),
        "end_to_end_ms_p90": pct("end_to_end_ms", 90),
        "timings_s": {k: round(v, 1) for k, v in timings.items()} | {"total_s": round(time.monotonic() - t0, 1)},
        "targets": per_target,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    return report


def _wait_outputs(node: NodeProcess, frames: int, deadline: float, settle_s: float = 5.0) -> None:
    """Until the node has accounted for every frame (its /status says so), or the
    deadline. A frame lost in transport never reaches the node: once everything
    the node received is published or counted and nothing new arrived for
    ``settle_s``, stop waiting; the report then shows played vs received."""
    from sirdiff_ros.msg import RestoreStatus

    from .probe import Probe

    last = {"received": -1, "since": time.monotonic()}

    def done(probe: Probe) -> bool:
        if not node.alive() or time.monotonic() > deadline:
            return True
        statuses = probe.get("/status")
        if not statuses:
            return False
        st = statuses[-1].msg
        accounted = st.images_published + st.dropped_total
        if accounted >= frames:
            return True
        if st.images_received != last["received"]:
            last.update(received=st.images_received, since=time.monotonic())
        return accounted >= st.images_received and time.monotonic() - last["since"] > settle_s

    with Probe({}, {"/status": RestoreStatus}, name="sirdiff_demo_watch") as probe:
        probe.wait_for(lambda: done(probe), max(1.0, deadline - time.monotonic()))


def _markdown(r: dict[str, Any]) -> str:
    n = r["node"]
    lines = [
        "# sirdiff_ros demo",
        "",
        f"Synthetic blurred sequence: {r['frames']} frames, {r['size'][0]}x{r['size'][1]}, seed {r['seed']}; "
        f"backend `{r['backend']}`; played over DDS into `sirdiff-restore`, outputs recorded to `restored_bag/`.",
        "",
        "| counts | |",
        "|---|---|",
        f"| images played / received / published | {n['played']} / {n['received']} / {n['published']} |",
        f"| dropped (by reason) | {n['dropped']} |",
        f"| keyframes / restoration targets | {n['keyframes']} / {n['restoration_targets']} |",
        f"| restored / passed through | {n['restored']} / {n['passed_through']} |",
        f"| node exit after SIGINT | code {n['exit_code']} in {n['sigint_exit_s']} s |",
        "",
        "| restored targets vs ground truth | before | after |",
        "|---|---|---|",
        f"| PSNR (dB) | {r['psnr_before']} | {r['psnr_after']} |",
        f"| SSIM | {r['ssim_before']} | {r['ssim_after']} |",
        "",
        f"Restore latency p50/p90: {r['restore_latency_ms_p50']} / {r['restore_latency_ms_p90']} ms; "
        f"arrival to publication p50/p90: {r['end_to_end_ms_p50']} / {r['end_to_end_ms_p90']} ms.",
        "",
        f"Timings: {r['timings_s']}",
        "",
        "![before/after](demo_grid.png)",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sirdiff_ros.ros.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: ./out/demo-<date>-<time>)")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rate", type=float, default=1.0, help="bag playback rate")
    ap.add_argument("--backend", default=DEFAULT_BACKEND, help=f"restoration backend (default: {DEFAULT_BACKEND})")
    args = ap.parse_args(argv)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    out = (args.out or Path("out") / time.strftime("demo-%Y%m%d-%H%M%S")).resolve()
    report = run_demo(out, args.frames, args.width, args.height, args.backend, args.seed, args.rate)
    n = report["node"]
    print(
        f"[demo] {n['received']} images in, {n['published']} out, {report['restored_targets']} restored; "
        f"PSNR of restored targets {report['psnr_before']} -> {report['psnr_after']} dB"
    )
    print(f"[demo] report: {out / 'report.md'}")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
