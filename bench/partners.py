"""Which partner policies give a blurred target a sharper view: keyframes, a frame ring, the near future.

    .venv/bin/python bench/partners.py [--sequences 12] [--frames 40]

For every restoration target of real-photo hand-held sequences (the real-image
validation split, ``sirdiff_ros.data.real_photos``) and of synthetic burst
sequences (``sirdiff_ros.data.synth``), the online pipeline decides targets as
the node does (exposure known); then, per policy, we ask whether a candidate
partner is at least 2x sharper than the target (true blur length of the
partner <= half the target's). Policies:

* ``keyframes``: the keyframe buffer before the target (today's candidates);
* ``ring8``: also the last 8 frames, keyframes or not;
* ``ring8+100ms`` / ``ring8+300ms``: also frames up to 100 / 300 ms after the
  target (the restore waits that long: the latency it costs).

Prints a table and writes bench/results/partners.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
RESULTS = REPO_ROOT / "bench" / "results" / "partners.json"

POLICIES = {"keyframes": (0, 0.0), "ring8": (8, 0.0), "ring8+100ms": (8, 0.1), "ring8+300ms": (8, 0.3)}
MAX_ROTATION_DEG = 25.0  # a candidate must look roughly the same way (overlap)
MAX_TRANSLATION_M = 0.5


def _share(frames: list[Any], exposure_s: float) -> dict[str, list[bool]]:
    from sirdiff_ros.core.pipeline import PipelineConfig, RestorationPipeline

    pipe = RestorationPipeline(PipelineConfig(exposure_s=exposure_s), "passthrough")
    decisions = [pipe.ingest(f) for f in frames]
    keyframe_idx: list[int] = []
    out: dict[str, list[bool]] = {p: [] for p in POLICIES}
    for i, d in enumerate(decisions):
        if d.is_target:
            blur = frames[i].extras["blur_px"]
            t = frames[i].stamp_ns
            for name, (ring, future_s) in POLICIES.items():
                cands = set(keyframe_idx)
                cands |= set(range(max(0, i - ring), i))
                cands |= {j for j in range(i + 1, len(frames)) if (frames[j].stamp_ns - t) * 1e-9 <= future_s}
                ok = False
                for j in cands:
                    p, q = frames[j].pose, frames[i].pose
                    if p is None or q is None:
                        continue
                    close = (np.degrees(p.rotation_angle_to(q)) <= MAX_ROTATION_DEG
                             and p.distance_to(q) <= MAX_TRANSLATION_M)
                    if close and frames[j].extras["blur_px"] <= 0.5 * blur:
                        ok = True
                        break
                out[name].append(ok)
        if d.is_keyframe:
            keyframe_idx.append(i)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sequences", type=int, default=12)
    ap.add_argument("--frames", type=int, default=40)
    args = ap.parse_args()
    from sirdiff_ros.data.real_photos import photo_plane_sequence, real_photo_paths
    from sirdiff_ros.data.synth import SynthConfig, generate_sequence

    sets: dict[str, dict[str, list[bool]]] = {}
    try:
        paths = real_photo_paths("val")
    except FileNotFoundError as exc:
        print(f"real-photo rows skipped: {exc}")
        paths = []
    if paths:
        acc: dict[str, list[bool]] = {p: [] for p in POLICIES}
        step = max(1, len(paths) // args.sequences)
        for k in range(args.sequences):
            seq = list(photo_plane_sequence(paths[k * step % len(paths)], 20_000 + k, args.frames, 320, 240))
            for name, v in _share(seq, float(seq[0].extras["exposure_s"])).items():
                acc[name] += v
        sets["real photos, hand-held (val split)"] = acc
    for fps in (10.0, 30.0):
        acc = {p: [] for p in POLICIES}
        for k in range(max(2, args.sequences // 4)):
            seq = list(generate_sequence(1_000_100 + k, args.frames, 320, 240, fps=fps, burst_rate=1.0))
            for name, v in _share(seq, SynthConfig().exposure_s).items():
                acc[name] += v
        sets[f"synthetic bursts, {fps:.0f} Hz"] = acc
    table: dict[str, Any] = {}
    print("| sequences | targets | " + " | ".join(POLICIES) + " |")
    print("|---|---|" + "---|" * len(POLICIES))
    for label, acc in sets.items():
        n = len(acc["keyframes"])
        row = {p: (float(np.mean(v)) if v else None) for p, v in acc.items()}
        table[label] = {"targets": n, "share_with_2x_sharper_partner": row}
        print(f"| {label} | {n} | " + " | ".join("-" if row[p] is None else f"{100 * row[p]:.0f} %" for p in POLICIES) + " |")
    print("latency cost: keyframes / ring8 0 ms; ring8+100ms 100 ms; ring8+300ms 300 ms (the restore waits for the future frames)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"policies": {k: {"ring": r, "future_s": f} for k, (r, f) in POLICIES.items()},
                                   "rows": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
