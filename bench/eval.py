"""Offline replay throughput of sirdiff-eval, per backend, on this machine's CPUs.

Writes a synthetic bag (held-out scene, ground truth), replays it with every
backend that can be created here side by side, and records:

* ``replay_fps``: frames per second of the pipeline alone for that backend
  (keyframe decision + view selection + restoration; what a replay without
  metrics would sustain);
* ``latency_ms_median`` / ``p90``: the backend's restoration calls;
* ``eval_fps``: frames per second of the whole evaluation (all backends,
  all metrics), and the mapping time per stream;
* the quality aggregates of the report (PSNR/SSIM/consistency/inliers).

Usage: ``python bench/eval.py [--width 640 --height 480 --frames 40]``;
results go to ``bench/results/eval.json`` and the run's report folder to
``bench/results/eval_report/`` (report.md, crops, gains.png; the restored
bag is not kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sirdiff_ros.core.restorers import available_restorers, create_restorer  # noqa: E402
from sirdiff_ros.data.bags import write_frames_bag  # noqa: E402
from sirdiff_ros.data.synth import generate_sequence  # noqa: E402
from sirdiff_ros.data.textures import heldout_seeds  # noqa: E402
from sirdiff_ros.evaluation.replay import ReplayConfig, evaluate_bag  # noqa: E402


def usable_backends(requested: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """Backends that can be created here; the others with the reason."""
    preferred = ["passthrough", "fusion", "sirdiff", "sirdiff-single"]
    names = requested or sorted(available_restorers(), key=lambda n: (preferred + [n]).index(n))
    ok, skipped = [], {}
    for name in names:
        try:
            create_restorer(name)
            ok.append(name)
        except Exception as exc:  # e.g. shipped weights not present
            skipped[name] = f"{type(exc).__name__}: {exc}"
    return ok, skipped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--backends", default="", help="comma list (default: every backend that can be created)")
    ap.add_argument("--no-mapping", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "eval.json")
    args = ap.parse_args()

    backends, skipped = usable_backends([b for b in args.backends.split(",") if b] or None)
    seed = heldout_seeds(1)[0]
    work = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    try:
        bag = work / "synth"
        t0 = time.perf_counter()
        write_frames_bag(bag, generate_sequence(seed, args.frames, args.width, args.height), fmt="mcap")
        gen_s = time.perf_counter() - t0
        report_dir = work / "report"
        t0 = time.perf_counter()
        result = evaluate_bag(
            bag,
            report_dir,
            ReplayConfig(backends=tuple(backends), mapping=not args.no_mapping),
            progress=False,
        )
        wall = time.perf_counter() - t0
        report = json.loads((report_dir / "report.json").read_text())
        keep = args.out.parent / "eval_report"
        shutil.rmtree(keep, ignore_errors=True)
        # Keep the readable part; report.json's per-keyframe records and the
        # crops stay out of the repository (docs/images/eval_crops.png is one).
        keep.mkdir(parents=True)
        for name in ("report.md", "gains.png"):
            shutil.copy(report_dir / name, keep / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    per_backend = {}
    for name, agg in report["backends"].items():
        entry = {k: agg.get(k) for k in ("psnr", "ssim", "consistency", "inliers", "sift_inliers", "match_success")}
        entry["targets"] = {k: agg["targets"].get(k) for k in ("keyframes", "psnr", "ssim", "consistency", "inliers")}
        if name != "input":
            entry.update(
                replay_fps=agg.get("throughput_fps"),
                latency_ms_median=agg.get("latency_ms_median"),
                latency_ms_p90=agg.get("latency_ms_p90"),
                restored=agg.get("restored"),
                gain_mean_db=agg["targets"].get("gain_mean"),
            )
        if "mapping" in agg:
            entry["mapping"] = agg["mapping"]
        per_backend[name] = entry
    out = {
        "what": "sirdiff-eval offline replay of a synthetic bag, all backends side by side",
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "note": "2 shared cores; other jobs ran at the same time, so times are upper bounds",
        },
        "bag": {"width": args.width, "height": args.height, "frames": args.frames, "seed": seed, "generate_s": gen_s},
        "frames": result.frames,
        "keyframes": len(result.records),
        "targets": len(result.targets),
        "eval_wall_s": wall,
        "eval_fps": result.frames / wall,
        "backends": per_backend,
        "skipped_backends": skipped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=lambda v: None))
    print(json.dumps({k: out[k] for k in ("frames", "keyframes", "targets", "eval_wall_s", "eval_fps")}, indent=1))
    for name, e in per_backend.items():
        print(name, {k: e.get(k) for k in ("replay_fps", "latency_ms_median", "psnr", "consistency", "inliers")})
    if skipped:
        print("skipped:", skipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
