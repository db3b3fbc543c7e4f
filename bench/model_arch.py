"""CPU cost of the SirDiffUNet presets: parameters, forward time, training-step time, peak memory.

One 4-view set per forward (float32, 2 threads, random weights). Latent
sizes: 16x16x4 (the CPU training size of DESIGN.md) and 64x48x48 (a 256x192
image through the small presets' 4x space-to-depth encoding). The training
step is forward + backward + AdamW on 4 sets of 4 views at 16x16x4, the
DESIGN.md measurement (~6,000 steps/hour for the 7M model). ``sd21`` is
counted on the meta device only (parameters and the FLOPs of one forward,
the floor for an achieved-TFLOP/s figure on a GPU).

Every case runs in its own process, so peak RSS belongs to that case. Wall
times depend on what else runs on the machine: each row records the 1-minute
load average and the CPU seconds a step used (``median_cpu_s``; on an idle
2-core machine the wall time is about half of it).

    .venv/bin/python bench/model_arch.py            (writes bench/results/model_arch.json)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT = REPO_ROOT / "bench" / "results" / "model_arch.json"
PRESETS = ("tiny", "small", "base")
# name -> (kind, latent channels, latent H, latent W, sets per batch)
CASES: dict[str, tuple[str, int, int, int, int]] = {
    "forward_16x16x4": ("forward", 4, 16, 16, 1),
    "forward_64x48x48": ("forward", 48, 64, 48, 1),
    "train_step_16x16x4_b4": ("train", 4, 16, 16, 4),
}
VIEWS = 4


def _run_case(preset: str, case: str, repeats: int) -> dict[str, Any]:
    import torch

    from sirdiff_ros.model import build_model

    torch.set_num_threads(2)
    torch.manual_seed(0)
    kind, channels, height, width, sets = CASES[case]
    model = build_model(preset, in_channels=channels, cond_channels=channels, out_channels=channels)
    sample = torch.randn(sets, VIEWS, channels, height, width)
    cond = torch.randn_like(sample)
    timesteps = torch.randint(0, 1000, (sets,))
    if kind == "forward":
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model(sample, timesteps, cond)

    else:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss = (model(sample, timesteps, cond).sample - sample).square().mean()
            loss.backward()
            optimizer.step()

    step()  # warm-up: allocator, kernels
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    times.sort()
    cpu_times.sort()
    median = times[len(times) // 2]
    result = {
        "preset": preset,
        "case": case,
        "latent": [channels, height, width],
        "views": VIEWS,
        "sets": sets,
        "median_s": round(median, 4),
        "min_s": round(times[0], 4),
        # CPU seconds of all threads: less sensitive than wall time to other processes on a busy machine
        "median_cpu_s": round(cpu_times[len(cpu_times) // 2], 4),
        "load_avg_1min": os.getloadavg()[0],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if kind == "train":
        result["steps_per_hour"] = round(3600 / median)
    return result


def _param_counts() -> dict[str, int]:
    import torch

    from sirdiff_ros.model import build_model

    with torch.device("meta"):
        return {name: build_model(name).num_parameters() for name in ("tiny", "small", "base", "sd21")}


def _forward_tflops() -> dict[str, dict[str, float]]:
    """Counted FLOPs of one forward (one set), on the meta device (no memory, no time).

    sd21 at 64x48 latents (a 512x384 image through SD's VAE) for N in 1..16;
    the CPU presets at this bench's latent sizes, N = 4.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sirdiff_ros.model import build_model

    def count(model, views: int, channels: int, height: int, width: int) -> float:
        x = torch.empty(1, views, channels, height, width)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x, torch.tensor([500]), x)
        return round(counter.get_total_flops() / 1e12, 4)

    out: dict[str, dict[str, float]] = {}
    with torch.device("meta"):
        sd21 = build_model("sd21").eval()
        out["sd21_64x48x4"] = {f"N={n}": count(sd21, n, 4, 64, 48) for n in (1, 2, 4, 8, 16)}
        for preset in PRESETS:
            for case, (_, channels, height, width, _) in CASES.items():
                if case.startswith("forward"):
                    model = build_model(preset, in_channels=channels, cond_channels=channels, out_channels=channels)
                    out.setdefault(preset, {})[f"{case} N=4"] = count(model.eval(), VIEWS, channels, height, width)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help="internal: run one case (PRESET:CASE) and print JSON")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--presets", nargs="*", default=list(PRESETS))
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    parser.add_argument("--counts-only", action="store_true", help="parameters and FLOPs only; keep the timed rows")
    args = parser.parse_args()
    if args.case:
        preset, case = args.case.split(":")
        print(json.dumps(_run_case(preset, case, args.repeats)))
        return

    if args.counts_only:
        report = json.loads(RESULT.read_text()) if RESULT.is_file() else {"rows": []}
        report.update(parameters=_param_counts(), forward_tflops=_forward_tflops())
        RESULT.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["forward_tflops"]))
        return

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "2"}
    rows = []
    for preset in args.presets:
        for case in CASES:
            cmd = [sys.executable, __file__, "--case", f"{preset}:{case}", "--repeats", str(args.repeats)]
            try:
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                row = {"preset": preset, "case": case, "error": f"over {args.timeout:.0f} s"}
            except subprocess.CalledProcessError as exc:
                row = {"preset": preset, "case": case, "error": exc.stderr.strip().splitlines()[-1]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_at_end": os.getloadavg()},
        "parameters": _param_counts(),
        "forward_tflops": _forward_tflops(),
        "rows": rows,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["parameters"]))


if __name__ == "__main__":
    main()
