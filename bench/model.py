"""CPU inference cost of the sampling pipeline per small preset.

One 4-view set at 256x192 and at 640x480, 4 and 10 DDIM steps, random
weights (cost does not depend on the values), space-to-depth factor-4
encoder as shipped. Each (preset, size) runs in a fresh subprocess so that
the peak resident memory (ru_maxrss) belongs to that case alone.

    .venv/bin/python bench/model.py [--presets tiny,small,base] [--threads 1]

Writes bench/results/model.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SIZES = ((256, 192), (640, 480))
STEPS = (4, 10)


def run_case(preset: str, width: int, height: int, threads: int, budget: float | None) -> dict:
    import torch

    from sirdiff_ros.model.encoders import SpaceToDepthEncoder
    from sirdiff_ros.model.pipeline import SirDiffPipeline, make_scheduler
    from sirdiff_ros.model.presets import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    enc = SpaceToDepthEncoder(4)
    c = enc.latent_channels
    unet = build_model(preset, in_channels=c, cond_channels=c, out_channels=c).eval()
    pipe = SirDiffPipeline(unet, make_scheduler("ddim"), enc)
    views = torch.rand(1, 4, 3, height, width) * 2 - 1
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"preset": preset, "width": width, "height": height, "views": 4, "threads": threads,
           "params_m": sum(p.numel() for p in unet.parameters()) / 1e6, "memory_budget_mb": budget}
    for steps in STEPS:
        t0 = time.perf_counter()
        res = pipe(views, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                   memory_budget_mb=budget)
        out[f"seconds_{steps}"] = time.perf_counter() - t0
        out["tiles"] = res.tiles
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["rss_before_mb"] = rss0 / 1024
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,small,base")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-budget-mb", type=float, default=None, help="pass a budget (tiling) to every case")
    ap.add_argument("--case-timeout", type=float, default=900, help="seconds per (preset, size) before giving up")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: preset:WxH, run in this process
    ap.add_argument("--out", default="bench/results/model.json")
    args = ap.parse_args(argv)
    if args.case:
        preset, size = args.case.split(":")
        w, h = (int(v) for v in size.split("x"))
        print(json.dumps(run_case(preset, w, h, args.threads, args.memory_budget_mb)))
        return 0
    rows = []
    for preset in args.presets.split(","):
        for w, h in SIZES:
            cmd = [sys.executable, __file__, "--case", f"{preset}:{w}x{h}", "--threads", str(args.threads)]
            if args.memory_budget_mb:
                cmd += ["--memory-budget-mb", str(args.memory_budget_mb)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.case_timeout)
            except subprocess.TimeoutExpired:
                rows.append({"preset": preset, "width": w, "height": h, "error": f"over {args.case_timeout:.0f} s"})
                print(f"{preset:6s} {w}x{h}  over {args.case_timeout:.0f} s", flush=True)
                continue
            if proc.returncode != 0:
                rows.append({"preset": preset, "width": w, "height": h, "error": proc.stderr[-500:]})
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{preset:6s} {w}x{h}  4 steps {r['seconds_4']:7.2f} s  10 steps {r['seconds_10']:7.2f} s  "
                  f"peak {r['peak_rss_mb']:7.0f} MB  tiles {r['tiles']}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cases": rows, "note": "CPU, shared machine; see docs/model.md"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
