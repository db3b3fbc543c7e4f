#!/usr/bin/env bash
# Issue 7's measurement of a SIR-Diff checkpoint on the held-out synthetic split.
#
#   scripts/eval_model.sh [CHECKPOINT] [OUT]     (make eval-model CHECKPOINT=... EVAL_OUT=...)
#
# 1. two held-out sequences (seeds 1000000, 1000001; 100 frames, 320x240) as
#    ROS 2 bags with ground truth, replayed by sirdiff-eval with `sirdiff`
#    (4 views), `sirdiff-single` and `fusion` (restoration targets and all
#    keyframes scored against the sharp renders);
# 2. bench/training.py: the blurriest view of 10 held-out view sets.
# Bags are generated once under OUT/bags and reused. Needs the ROS environment
# the Makefile sets (sirdiff-eval writes the restored bags with rosbags only,
# but the package imports are the same).
set -euo pipefail
CHECKPOINT=${1:-}
OUT=${2:-runs/eval_model}
PY=${PY:-python}
mkdir -p "$OUT/bags"
ckpt_args=()
[[ -n "$CHECKPOINT" ]] && ckpt_args=(--checkpoint "$CHECKPOINT")
for seed in 1000000 1000001; do
  bag="$OUT/bags/seq$seed"
  if [[ ! -d "$bag/bag" ]]; then
    "$PY" -m sirdiff_ros.data.cli "$bag" --seed "$seed" --frames 100 --width 320 --height 240 --bag --no-progress
  fi
  "$PY" -m sirdiff_ros.evaluation.cli "$bag/bag" --out "$OUT/seq$seed" --backend sirdiff,sirdiff-single,fusion \
    --views 4 --no-mapping --no-bag "${ckpt_args[@]}"
done
"$PY" bench/training.py --sets 10 --out "$OUT/view_sets.json" "${ckpt_args[@]}"
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"\n{'data':34s} {'targets':>7s} {'input':>13s} {'sirdiff':>13s} {'sirdiff-single':>14s} {'fusion':>13s}")
for seq in sorted(out.glob("seq*/report.json")):
    s = {k: b["targets"] for k, b in json.loads(seq.read_text())["backends"].items()}
    cell = lambda k: f"{s[k]['psnr']:6.2f} / {s[k]['ssim']:.3f}"
    print(f"{'held-out sequence ' + seq.parent.name[3:]:34s} {s['input']['keyframes']:7d} {cell('input'):>13s} "
          f"{cell('sirdiff'):>13s} {cell('sirdiff-single'):>14s} {cell('fusion'):>13s}")
v = json.loads((out / "view_sets.json").read_text())["mean"]
cell = lambda k: f"{v[k]['psnr']:6.2f} / {v[k]['ssim']:.3f}"
print(f"{'held-out view sets, blurriest view':34s} {10:7d} {cell('input'):>13s} {cell('sirdiff'):>13s} "
      f"{cell('sirdiff-single'):>14s} {cell('fusion'):>13s}")
PYEOF
