#!/usr/bin/env bash
# One prepared GPU check for an NVIDIA machine (written for an H200) that has
# PyTorch (2.11 cu130), transformers, accelerate and safetensors but NOT
# diffusers, rosbags or ROS, and no internet.
#
#   bash bench/gpu_check.sh              # full check, results under $OUT (or out/gpu_check)
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh --cpu-smoke  # the same code path at toy size on the CPU (run here)
#
# Needs bench/wheels/ (git-ignored; carry it to the machine) filled here by
#   bash bench/gpu_check.sh --fetch-wheels
# which runs `pip download --no-deps` for diffusers and huggingface_hub at the
# versions pinned in requirements/lock.txt (pure-Python wheels: any CPython).
#
# What it does (under 10 minutes on an H200):
#  1. installs the carried wheels if `import diffusers` fails;
#  2. times the `sd21` preset (SD 2.1 UNet sizes + SD VAE sizes, random weights)
#     in bf16: N=4 views at 512x384 with 10 and 25 DDIM steps, and N in
#     {2, 4, 8, 16} at 10 steps; latency, peak GPU memory, FLOPs counted with
#     torch.utils.flop_counter, achieved TFLOP/s and the time floor at the
#     GPU's dense bf16 peak (989 TFLOP/s for an H200 SXM);
#  3. if OpenCV and scikit-image are importable (the synthetic generator needs
#     them), renders a small training cache and trains the `small` preset for
#     a few minutes with sirdiff-train, writing the checkpoint, the exported
#     weights and loss.jsonl to $OUT/train.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
WHEELS="$REPO/bench/wheels"
OUT="${OUT:-$REPO/out/gpu_check}"
MODE="gpu"
case "${1:-}" in
  --cpu-smoke) MODE="cpu-smoke" ;;
  --fetch-wheels)
    mkdir -p "$WHEELS"
    for pkg in diffusers huggingface_hub; do
      ver="$(grep -i "^${pkg}==" "$REPO/requirements/lock.txt" | cut -d= -f3)"
      "$PY" -m pip download --no-deps --only-binary=:all: -d "$WHEELS" "${pkg}==${ver}"
    done
    ls -la "$WHEELS"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--cpu-smoke|--fetch-wheels]" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if ! "$PY" -c "import diffusers" 2>/dev/null; then
  ls "$WHEELS"/diffusers-*.whl >/dev/null 2>&1 || { echo "no diffusers wheel in $WHEELS (run --fetch-wheels where pip can download)" >&2; exit 3; }
  "$PY" -m pip install --no-index --no-deps "$WHEELS"/diffusers-*.whl
  # The machine's huggingface_hub (from transformers) may be too old for diffusers: use the carried one then.
  "$PY" -c "import diffusers" 2>/dev/null || "$PY" -m pip install --no-index --no-deps "$WHEELS"/huggingface_hub-*.whl
fi

"$PY" - "$MODE" "$OUT" <<'PYEOF' 2>&1 | tee "$OUT/log.txt"
import json, sys, time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from sirdiff_ros.model.encoders import VaeEncoder
from sirdiff_ros.model.pipeline import Parametrization, SirDiffPipeline, make_scheduler
from sirdiff_ros.model.presets import build_model

mode, out = sys.argv[1], Path(sys.argv[2])
smoke = mode == "cpu-smoke"
dev = "cpu" if smoke else "cuda"
dtype = torch.float32 if smoke else torch.bfloat16
PEAK_TFLOPS = 989.0  # H200 SXM dense bf16
report = {"mode": mode, "torch": torch.__version__,
          "device": "cpu" if smoke else torch.cuda.get_device_name(0)}
print(json.dumps(report), flush=True)


def sd_vae(small: bool):
    from diffusers import AutoencoderKL
    # SD 2.1's VAE architecture (random weights: cost only); toy-sized for the smoke run.
    ch = (32, 32) if small else (128, 256, 512, 512)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=ch,
                         down_block_types=("DownEncoderBlock2D",) * len(ch),
                         up_block_types=("UpDecoderBlock2D",) * len(ch), layers_per_block=2,
                         norm_num_groups=32, sample_size=768, scaling_factor=0.18215)


torch.manual_seed(0)
unet = build_model("tiny" if smoke else "sd21", in_channels=4, cond_channels=4, out_channels=4).eval()
pipe = SirDiffPipeline(unet, make_scheduler("ddim"), VaeEncoder(sd_vae(smoke), chunk_size=4),
                       Parametrization(residual=False)).to(dev, dtype)
report["unet_params_m"] = sum(p.numel() for p in unet.parameters()) / 1e6


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


def count_flops(views, steps):
    with FlopCounterMode(display=False) as fc:
        pipe(views, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
    return fc.get_total_flops()


def case(n, w, h, steps):
    views = (torch.rand(1, n, 3, h, w) * 2 - 1).to(dev, dtype)
    pipe(views, num_inference_steps=1, generator=torch.Generator().manual_seed(0))  # warm-up
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(); t0 = time.perf_counter()
    pipe(views, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
    sync(); dt = time.perf_counter() - t0
    f1, f2 = count_flops(views, 1), count_flops(views, 2)
    flops = f1 + (steps - 1) * (f2 - f1)  # encode + decode + steps UNet forwards
    row = {"views": n, "width": w, "height": h, "steps": steps, "seconds": dt,
           "unet_forward_tflop": (f2 - f1) / 1e12, "total_tflop": flops / 1e12,
           "achieved_tflops": flops / dt / 1e12,
           "floor_seconds_at_peak": flops / (PEAK_TFLOPS * 1e12),
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None}
    print(json.dumps(row), flush=True)
    return row


w, h = (64, 48) if smoke else (512, 384)
cases = [(4, 10), (4, 25)] + [(n, 10) for n in (2, 4, 8, 16)]
if smoke:
    cases = [(2, 1), (2, 2)]
report["latency"] = []
for n, steps in cases:
    try:
        report["latency"].append(case(n, w, h, steps))
    except torch.OutOfMemoryError as exc:
        report["latency"].append({"views": n, "steps": steps, "error": f"OOM: {exc}"[:300]})
        torch.cuda.empty_cache()
(out / "latency.json").write_text(json.dumps(report, indent=2))
PYEOF

# 3. A few minutes of training of the `small` preset on the synthetic generator.
if "$PY" -c "import cv2, skimage" 2>/dev/null; then
  if [ "$MODE" = "cpu-smoke" ]; then SETS=4; STEPS=3; SIZE=64x48; CROP=32x32; BS=2; else SETS=192; STEPS=1500; SIZE=320x240; CROP=128x128; BS=16; fi
  "$PY" -m sirdiff_ros.training.cli cache --out "$OUT/cache" --sets "$SETS" --views 4 --size "$SIZE" --shard-size 32 \
      --register --flow-fraction 0.3   # partners in each target's grid, as the shipped recipe
  timeout 330 "$PY" -m sirdiff_ros.training.cli train --run "$OUT/train" --cache "$OUT/cache" --preset small \
      --steps "$STEPS" --crop "$CROP" --batch-size "$BS" --views 1-4 --lr 3e-4 --save-every 100 \
      --high-t-fraction 0.75 --high-t-start 0.9 --lr-schedule cosine --soften-fraction 0.3 --threads 8 || echo "training stopped by the time limit (resumable from $OUT/train)"
  "$PY" -m sirdiff_ros.training.cli export --run "$OUT/train" --out "$OUT/weights" --default-steps 1
  cp "$OUT/train/loss.jsonl" "$OUT/loss.jsonl" 2>/dev/null || true
  rm -rf "$OUT/cache" "$OUT/train/checkpoints"  # keep what comes back small: weights + loss curve
else
  echo "OpenCV / scikit-image missing: skipping the training part (the synthetic generator needs them)" | tee -a "$OUT/log.txt"
fi
echo "results in $OUT"
