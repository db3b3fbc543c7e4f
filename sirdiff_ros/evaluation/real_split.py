"""Restoration measured on real photographs: the real-image validation table.

``sirdiff-eval-real OUT`` builds hand-held sequences from one split of the
real-image corpus (:mod:`sirdiff_ros.data.real_photos`; every frame is real
image content, blurred physically by the trajectory the pose stream reports),
replays each through the online pipeline with every backend (the exposure
time of the sequence given, as a user gives ``exposure_s``), and writes:

* ``report.json``: per backend, over all restoration targets: PSNR, SSIM, ORB
  and SIFT inliers, gain over the input, targets ending more than 0.5 dB below
  their input, and the same per blur-length bucket;
* ``report.md``: the tables; ``examples.png``: input / restored / truth crops.

Sequences are fixed by ``--seed`` and the split's photo list: the same
command gives the same frames.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.frame import Frame
from ..core.pipeline import PipelineConfig
from ..data.real_photos import ShakeConfig, photo_plane_sequence, real_photo_paths
from .replay import ReplayConfig, evaluate_frames
from .report import INPUT, EvaluationResult

__all__ = ["BLUR_BUCKETS_PX", "real_split_frames", "evaluate_real_split", "report_markdown", "main"]

# Blur-length buckets (px at the evaluated resolution), upper bounds exclusive.
BLUR_BUCKETS_PX: tuple[tuple[float, float], ...] = ((0, 8), (8, 16), (16, 32), (32, math.inf))
# A target this far below its input counts as made worse.
WORSE_DB = 0.5
_METRICS = ("psnr", "ssim", "inliers", "sift_inliers")


def real_split_frames(split: str, sequences: int, frames: int, width: int, height: int, seed: int = 0,
                      root: str | Path | None = None) -> list[tuple[Path, list[Frame]]]:
    """``sequences`` sequences of ``frames`` frames, photos spread evenly over ``split``."""
    paths = real_photo_paths(split, root)
    if not paths:
        raise FileNotFoundError(f"no images in split {split!r}")
    step = max(1, len(paths) // max(1, sequences))
    out = []
    for k in range(sequences):
        path = paths[(k * step + seed) % len(paths)]
        out.append((path, list(photo_plane_sequence(path, 10_000 * (seed + 1) + k, frames, width=width,
                                                     height=height, shake=ShakeConfig()))))
    return out


class _TargetImages:
    """Outcome sink keeping each backend's restored image of every target (for the example crops)
    and the gate's decision on every keyframe (why it was, or was not, a target)."""

    def __init__(self) -> None:
        self.images: dict[int, dict[str, np.ndarray]] = {}
        self.decisions: dict[int, dict[str, Any]] = {}

    def write(self, backend: str, outcome: Any) -> None:
        d = outcome.decision
        if d.is_target:
            self.images.setdefault(outcome.frame.stamp_ns, {})[backend] = outcome.image
        # Every frame the gate made a target (keyframe or not), and every keyframe.
        if (d.is_keyframe or d.is_target) and outcome.frame.stamp_ns not in self.decisions:
            ratio = d.sharpness / d.reference_sharpness if d.reference_sharpness > 0 else math.nan
            self.decisions[outcome.frame.stamp_ns] = {
                "target": bool(d.is_target), "keyframe": bool(d.is_keyframe), "gate": str(d.gate), "reason": str(d.reason),
                "predicted_blur_px": float(d.predicted_blur_px), "sharpness_ratio": float(ratio)}


def _bucket(blur: float) -> str:
    for lo, hi in BLUR_BUCKETS_PX:
        if lo <= blur < hi:
            return f"{lo:g}-{hi:g}px" if math.isfinite(hi) else f">={lo:g}px"
    return "unknown"


def _summaries(rows: list[dict[str, Any]], streams: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for stream in streams:
        vals = [r for r in rows if stream in r]
        s: dict[str, Any] = {"targets": len(vals)}
        for m in _METRICS:
            xs = [r[stream][m] for r in vals if np.isfinite(r[stream].get(m, math.nan))]
            s[m] = float(np.mean(xs)) if xs else None
        if stream != INPUT:
            gains = [r[stream]["psnr"] - r[INPUT]["psnr"] for r in vals
                     if np.isfinite(r[stream].get("psnr", math.nan)) and np.isfinite(r[INPUT].get("psnr", math.nan))]
            s["gain_db"] = float(np.mean(gains)) if gains else None
            s["worse_than_input"] = int(sum(g < -WORSE_DB for g in gains))
        out[stream] = s
    return out


def evaluate_real_split(out_dir: str | Path, split: str = "val", sequences: int = 12, frames: int = 24,
                        width: int = 320, height: int = 240, backends: Sequence[str] = ("deblur", "fusion"),
                        seed: int = 0, num_views: int = 4, root: str | Path | None = None,
                        backend_options: dict[str, dict[str, Any]] | None = None,
                        partner_ring: int = PipelineConfig.partner_ring, log: Any = print) -> dict[str, Any]:
    """Run the table (module docstring) and write it under ``out_dir``; returns the report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    streams = [INPUT, *backends]
    rows: list[dict[str, Any]] = []
    examples: list[dict[str, np.ndarray]] = []
    gated: list[dict[str, Any]] = []
    t_start = time.time()
    for path, seq in real_split_frames(split, sequences, frames, width, height, seed, root):
        exposure = float(seq[0].extras["exposure_s"])
        blur_by_stamp = {f.stamp_ns: float(f.extras["blur_px"]) for f in seq}
        cfg = ReplayConfig(backends=tuple(backends), num_views=num_views, mapping=False,
                           pipeline=PipelineConfig(exposure_s=exposure, partner_ring=partner_ring),
                           backend_options=backend_options or {})
        keep = _TargetImages()
        result: EvaluationResult = evaluate_frames(seq, cfg, sink=keep, source=str(path))
        images = keep.images
        for stamp, dec in sorted(keep.decisions.items()):
            gated.append({"source": path.name, "stamp_ns": stamp, "blur_px": blur_by_stamp.get(stamp, math.nan), **dec})
        for rec in result.targets:
            row: dict[str, Any] = {"source": path.name, "stamp_ns": rec.stamp_ns, "exposure_s": exposure,
                                   "blur_px": blur_by_stamp.get(rec.stamp_ns, math.nan)}
            for s in streams:
                if s in rec.streams:
                    row[s] = {m: float(rec.streams[s].get(m, math.nan)) for m in _METRICS}
            rows.append(row)
        gains = [r[backends[-1]]["psnr"] - r[INPUT]["psnr"] for r in rows[-len(result.targets):]] if result.targets else []
        log(f"{path.parent.name}/{path.name}: exposure {exposure * 1e3:.0f} ms, {len(result.targets)} targets, "
            f"{backends[-1]} {np.mean(gains) if gains else math.nan:+.2f} dB ({time.time() - t_start:.0f} s)")
        by_stamp = {f.stamp_ns: f for f in seq}
        for stamp, imgs in images.items():
            f = by_stamp.get(stamp)
            if f is not None and len(examples) < 4 and blur_by_stamp[stamp] > 12:
                examples.append({"input": f.image, **imgs, "truth": f.extras["sharp"]})
    report: dict[str, Any] = {
        "split": split, "sequences": sequences, "frames_per_sequence": frames, "size": [width, height],
        "seed": seed, "num_views": num_views, "partner_ring": partner_ring, "backends": list(backends),
        "worse_db": WORSE_DB,
        "overall": _summaries(rows, streams),
        "buckets": {b: _summaries([r for r in rows if _bucket(r["blur_px"]) == b], streams)
                    for b in dict.fromkeys(_bucket(r["blur_px"]) for r in sorted(rows, key=lambda r: r["blur_px"]))},
        "gate": _gate_summary(gated),
        "targets": rows,
        "gated_frames": gated,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    (out / "report.md").write_text(report_markdown(report))
    if examples:
        _write_examples(examples, ["input", *backends, "truth"], out / "examples.png")
    return report


def _gate_summary(frames: list[dict[str, Any]]) -> dict[str, Any]:
    """Per gate rule: frames decided (keyframes and other targets), targets among them, and their true blur (median px)."""
    out: dict[str, Any] = {}
    for rule in sorted({k["gate"] for k in frames}):
        ks = [k for k in frames if k["gate"] == rule]
        blur = [k["blur_px"] for k in ks if np.isfinite(k["blur_px"])]
        out[rule] = {"frames": len(ks), "targets": sum(k["target"] for k in ks),
                     "true_blur_px_median": float(np.median(blur)) if blur else None}
    return out


def report_markdown(report: dict[str, Any]) -> str:
    streams = [INPUT, *report["backends"]]
    lines = [f"# Real-image {report['split']} split: {report['overall'][INPUT]['targets']} restoration targets, "
             f"{report['sequences']} sequences at {report['size'][0]}x{report['size'][1]}", "",
             "| stream | PSNR | gain | SSIM | ORB inliers | SIFT inliers | targets > 0.5 dB worse |",
             "|---|---|---|---|---|---|---|"]

    def f(x: Any, d: int = 2) -> str:
        return "-" if x is None else f"{x:.{d}f}"

    for s in streams:
        v = report["overall"][s]
        lines.append(f"| {s} | {f(v['psnr'])} | {f(v.get('gain_db'))} | {f(v['ssim'], 3)} | {f(v['inliers'], 1)} | "
                     f"{f(v['sift_inliers'], 1)} | {v.get('worse_than_input', '-')} |")
    lines += ["", "PSNR gain over the input per blur length:", "",
              "| blur | targets | input PSNR | " + " | ".join(report["backends"]) + " |",
              "|---|---|---|" + "---|" * len(report["backends"])]
    for b, v in report["buckets"].items():
        lines.append(f"| {b} | {v[INPUT]['targets']} | {f(v[INPUT]['psnr'])} | "
                     + " | ".join(f(v[s].get('gain_db')) for s in report["backends"]) + " |")
    lines += ["", "Why frames were, or were not, targets (the gate's rule over the keyframes and every target; per frame in report.json's gated_frames):", "",
              "| rule | frames | targets | true blur, median px |", "|---|---|---|---|"]
    for rule, g in report.get("gate", {}).items():
        lines.append(f"| {rule} | {g['frames']} | {g['targets']} | {f(g['true_blur_px_median'], 1)} |")
    return "\n".join(lines) + "\n"


def _write_examples(examples: list[dict[str, np.ndarray]], columns: list[str], path: Path, crop: int = 160) -> None:
    import cv2

    rows = []
    for ex in examples:
        h, w = ex["input"].shape[:2]
        y0, x0 = (h - crop) // 2, (w - crop) // 2
        tiles = []
        for c in columns:
            img = ex.get(c, np.zeros_like(ex["input"]))
            tile = np.ascontiguousarray(img[y0:y0 + crop, x0:x0 + crop])
            cv2.putText(tile, c, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(tile)
        rows.append(np.concatenate(tiles, 1))
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sirdiff-eval-real", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder (report.json, report.md, examples.png)")
    p.add_argument("--split", default="val", choices=("train", "val"))
    p.add_argument("--sequences", type=int, default=12)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--backend", default="deblur,fusion,sirdiff-single,sirdiff",
                   help="comma-separated backends (default %(default)s)")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--partner-ring", type=int, default=PipelineConfig.partner_ring,
                   help="recent non-keyframes that are partner candidates too (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None, help="sirdiff checkpoint folder (default: the shipped weights)")
    p.add_argument("--root", default=None, help="real-image corpus (default: ../shared/data/real_images)")
    args = p.parse_args(argv)
    backends = [b for b in args.backend.split(",") if b]
    opts = {b: {"checkpoint": args.checkpoint} for b in backends if b.startswith("sirdiff") and args.checkpoint}
    try:
        report = evaluate_real_split(args.out, args.split, args.sequences, args.frames, args.width, args.height,
                                     backends, args.seed, args.views, args.root, opts, args.partner_ring)
    except FileNotFoundError as exc:
        print(f"sirdiff-eval-real: {exc}", file=sys.stderr)
        return 2
    print(report_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
