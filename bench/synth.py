"""Synthetic data throughput: sequences at 640x480 with 8 sub-frames, view sets, degrader, bags.

    .venv/bin/python bench/synth.py [--frames 20] [--quick]

Prints a table and writes bench/results/synth.json. Wall-clock frames/s is
the figure of merit (goal: >= 5 frames/s at 640x480, 8 sub-frames, 2 cores);
CPU seconds per frame and the load average are recorded too, because this
machine's 2 cores are shared and wall time depends on the load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
RESULTS = REPO_ROOT / "bench" / "results" / "synth.json"

from sirdiff_ros.data.bags import read_bag_frames, write_frames_bag  # noqa: E402
from sirdiff_ros.data.degrade import blur_frame  # noqa: E402
from sirdiff_ros.data.synth import generate_sequence, sample_view_set  # noqa: E402


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def write_montage(path: Path) -> None:
    """Two rows of blurred | sharp | depth: the most blurred of 20 sequence frames, a view-set view."""
    import cv2
    import numpy as np

    seq = list(generate_sequence(3, 20, 224, 168))
    f = max(seq, key=lambda fr: fr.extras["blur_px"])
    v = max(sample_view_set(4, 4, 224, 168), key=lambda fr: fr.extras["blur_strength"])
    rows = []
    for fr in (f, v):
        d = fr.depth
        depth = cv2.applyColorMap((255 * np.clip(d / d.max(), 0, 1)).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
        rows.append(np.concatenate([fr.image, fr.extras["sharp"], depth], axis=1))
        print(f"seq {fr.seq}: blur {fr.extras['blur_px']:.1f} px")
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    ap.add_argument("--montage", type=Path, help="only write a blurred | sharp | depth PNG montage here")
    args = ap.parse_args()
    if args.montage:
        write_montage(args.montage)
        return 0
    n = 4 if args.quick else args.frames
    rows: list[dict[str, Any]] = []

    def add(name: str, count: int, unit: str, wall: float, cpu: float) -> None:
        rows.append({"case": name, "count": count, "unit": unit, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                     "per_s_wall": round(count / wall, 2), "cpu_s_per_item": round(cpu / count, 4)})

    load0 = os.getloadavg()[0]
    # Warm caches (textures, imports) outside the timings.
    list(generate_sequence(0, 1, 64, 48))
    for w, h, sub in ((640, 480, 8), (640, 480, 1), (320, 240, 8)):
        gen = generate_sequence(7, n + 1, w, h, subframes=sub)
        next(gen)  # scene build and first frame excluded: steady-state rate
        frames, wall, cpu = _timed(lambda: list(gen))
        add(f"generate_sequence {w}x{h}, {sub} sub-frames", len(frames), "frames", wall, cpu)
    sets = 5 if args.quick else 20
    _, wall, cpu = _timed(lambda: [sample_view_set(s, 4, 128, 96) for s in range(sets)])
    add("sample_view_set 4 views 128x96 (incl. scene build)", sets, "sets", wall, cpu)
    _, wall, cpu = _timed(lambda: [sample_view_set(s, 4, 256, 192) for s in range(sets // 2)])
    add("sample_view_set 4 views 256x192 (incl. scene build)", sets // 2, "sets", wall, cpu)
    seq = list(generate_sequence(3, n, 640, 480))
    _, wall, cpu = _timed(lambda: [blur_frame(f, i, subframes=16) for i, f in enumerate(seq)])
    add("blur_frame (degrader) 640x480, 16 sub-frames", len(seq), "frames", wall, cpu)
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("mcap", "db3"):
            bag = Path(tmp) / fmt
            _, wall, cpu = _timed(lambda: write_frames_bag(bag, seq, fmt))
            add(f"write_frames_bag {fmt} 640x480 (5 topics)", len(seq), "frames", wall, cpu)
            _, wall, cpu = _timed(lambda: list(read_bag_frames(bag)))
            add(f"read_bag_frames {fmt} 640x480", len(seq), "frames", wall, cpu)
    load1 = os.getloadavg()[0]

    print(f"{'case':58s} {'items/s':>8s} {'cpu s/item':>10s}")
    for r in rows:
        print(f"{r['case']:58s} {r['per_s_wall']:8.2f} {r['cpu_s_per_item']:10.4f}")
    print(f"load average (1 min) before/after: {load0:.1f} / {load1:.1f} on {os.cpu_count()} cpus")
    result = {
        "bench": "synthetic data generator, degrader and bag I/O",
        "goal": ">= 5 frames/s for generate_sequence 640x480 with 8 sub-frames on 2 cores",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, load {load0:.1f}->{load1:.1f}",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
    }
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULTS.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
