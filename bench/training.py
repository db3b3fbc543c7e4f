"""Held-out view-set restoration: does the shipped (or any) checkpoint restore,
and does it gain from the other views?

For each held-out seed, B's generator renders a set of N overlapping views
whose blur varies per view; the *blurriest* view is the target, as in the
online pipeline (a blurred keyframe with sharper partners). Reported per
backend: PSNR / SSIM of the target against its sharp ground truth, for the
blurred input, ``sirdiff`` (all views jointly), ``sirdiff-single`` (target
alone, same weights) and ``fusion`` (geometric, uses poses and depth-free flow).

    .venv/bin/python bench/training.py --checkpoint sirdiff_ros/weights/sirdiff-cpu --sets 12

Results: bench/results/training.json (or --out). This is the training
monitor; the sequence-level numbers of the acceptance table come from ``sirdiff-eval``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sirdiff_ros.core.restorers.base import RestoreRequest, create_restorer
from sirdiff_ros.data.synth import sample_view_set
from sirdiff_ros.data.textures import heldout_seeds, training_seeds
from sirdiff_ros.evaluation.metrics import psnr, ssim


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the shipped weights)")
    ap.add_argument("--sets", type=int, default=12)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--baseline", type=float, nargs=2, default=(0.05, 0.3))
    ap.add_argument("--backends", default="input,sirdiff,sirdiff-single,fusion")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--split", choices=("heldout", "val"), default="heldout",
                    help="val: training-split seeds never cached (50000+), for choosing sampler settings")
    ap.add_argument("--out", default="bench/results/training.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.split("x"))
    names = args.backends.split(",")
    backends = {}
    for name in names:
        if name == "input":
            continue
        opts = {}
        if name.startswith("sirdiff"):
            opts = {"checkpoint": args.checkpoint, "steps": args.steps}
        backends[name] = create_restorer(name, **opts)

    rows = {n: {"psnr": [], "ssim": [], "seconds": []} for n in names}
    seeds = heldout_seeds(args.sets) if args.split == "heldout" else training_seeds(args.sets, 50000)
    for seed in seeds:
        frames = sample_view_set(seed, args.views, w, h, baseline_m=tuple(args.baseline))
        target = int(np.argmax([f.extras["blur_px"] for f in frames]))
        sharp = frames[target].extras["sharp"]
        for name in names:
            t0 = time.perf_counter()
            if name == "input":
                img = frames[target].image
            else:
                res = backends[name].restore(RestoreRequest(views=frames, targets=[target]))
                img = res.for_index(target).image
            rows[name]["seconds"].append(time.perf_counter() - t0)
            rows[name]["psnr"].append(psnr(img, sharp))
            rows[name]["ssim"].append(ssim(img, sharp))
        print(seed, {n: round(rows[n]["psnr"][-1], 2) for n in names}, flush=True)

    summary = {n: {k: float(np.mean(v)) for k, v in r.items()} for n, r in rows.items()}
    report = {
        "checkpoint": args.checkpoint or "shipped", "split": args.split,
        "sets": args.sets, "views": args.views, "size": [w, h], "steps": args.steps,
        "baseline_m": list(args.baseline), "target": "blurriest view of each held-out set",
        "mean": summary, "per_set": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"{'backend':16s} {'PSNR':>7s} {'SSIM':>6s} {'s/set':>6s}")
    for n, s in summary.items():
        print(f"{n:16s} {s['psnr']:7.2f} {s['ssim']:6.3f} {s['seconds']:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
