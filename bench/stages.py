"""Where a restoration's time goes: per-stage wall times of the fusion and sirdiff backends.

    .venv/bin/python bench/stages.py [--baseline REV] [--rounds 3] [--no-model]

Fusion, 640x480, 4 views (target + 3 partners), on two kinds of view sets:

* ``sets``: ``sample_view_set`` seeds 1-4, the most blurred view as target
  (49-60 px of blur, so the alignment takes the half-scale path), by
  reprojection (``depth``) and by optical flow (``flow``, depth removed);
* ``stream``: the targets the pipeline picks in the node benchmark's stream
  (``target_rich_frames``: every third frame blurred 15 px; work scale 0.5),
  each with the view set the pipeline selects, with the frames' depth
  (``stream/depth``, an RGB-D camera) and without (``stream/flow``, a
  monocular one: optical flow), replayed in order.

Stages (:mod:`sirdiff_ros.core.profiling`): ``select`` (which partners are
sharper), ``align.prepare`` (grey images, blur matching), ``align.reprojection``,
``align.flow`` (DIS), ``align.kernel`` (relative blur kernels), ``align.checks``
(photometric and structure checks), ``weigh``, ``blend``.

``--baseline REV`` also times the same sets with the package of git revision
REV (extracted with ``git archive`` into a temporary folder, run in a
subprocess), alternating rounds of the two, so that a load change on this
shared machine hits both alike: the ratio is the speed-up in one run. The
PSNR of every output against ground truth is compared too (a speed-up must
not cost quality).

The model (``sirdiff``, shipped weights, 640x480, 4 views, default steps) in
:data:`MODEL_CASES`: the previous default (float32 in ONNX Runtime on two
threads, tiled, full resolution), float32 at ``work_scale`` auto (the
networks run at 320x240 and the output is upsampled), and the default (also
``dtype`` auto: bf16 on CPUs with native bf16, and half the cores):
``registration``, ``resize``, ``encode``, ``unet`` (all steps), ``decode``,
``refine``.

Writes bench/results/stages.json and prints tables (bench/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "bench" / "results" / "stages.json"
FUSION_STAGES = ("select", "align.prepare", "align.reprojection", "align.flow", "align.kernel", "align.checks",
                 "weigh", "blend")
STREAMS = ("stream/depth", "stream/flow")  # replayed in order, each from an empty frame cache
FUSION_GROUPS = ("sets/depth", "sets/flow", *STREAMS)
MODEL_STAGES = ("registration", "resize", "encode", "unet", "decode", "refine")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def fusion_requests() -> dict[str, tuple[Any, np.ndarray]]:
    """name -> (RestoreRequest, the target's ground truth), the same in every process."""
    from sirdiff_ros.core.pipeline import PipelineConfig, RestorationPipeline
    from sirdiff_ros.core.keyframes import KeyframeConfig
    from sirdiff_ros.core.restorers import RestoreRequest
    from sirdiff_ros.data.synth import generate_sequence, sample_view_set

    out: dict[str, tuple[Any, np.ndarray]] = {}
    for seed in (1, 2, 3, 4):
        views = sample_view_set(seed, 4, 640, 480)
        views = [views[i] for i in np.argsort([-v.extras["blur_strength"] for v in views], kind="stable")]
        gt = views[0].extras["sharp"]
        out[f"sets/depth/{seed}"] = (RestoreRequest(views, [0]), gt)
        out[f"sets/flow/{seed}"] = (RestoreRequest([dataclasses.replace(v, depth=None) for v in views], [0]), gt)
    # The node benchmark's stream (sirdiff_ros.ros.probe.target_rich_frames, without its ROS import).
    import cv2

    pipe = RestorationPipeline(PipelineConfig(keyframe=KeyframeConfig(min_translation=0.0), num_views=4))
    for i, f in enumerate(generate_sequence(3, 36, 640, 480)):
        sharp = f.extras["sharp"]
        blurred = i % 3 == 2
        f = dataclasses.replace(f, image=cv2.blur(sharp, (15, 1)) if blurred else sharp, extras={})
        d = pipe.ingest(f)
        if d.is_target:
            sel = pipe.select(d)
            if len(sel.views) == 4:
                views = list(sel.views)
                out[f"stream/depth/{i}"] = (RestoreRequest(views, [0], list(sel.overlaps)), sharp)
                mono = [dataclasses.replace(v, depth=None) for v in views]
                out[f"stream/flow/{i}"] = (RestoreRequest(mono, [0], list(sel.overlaps)), sharp)
    return out


def time_fusion(rounds: int) -> dict[str, Any]:
    """Per request: median wall ms over ``rounds`` calls, stage ms (of the median call), PSNR in/out.

    ``sets`` are timed cold (the restorer's frame cache emptied before each
    call); the ``stream`` is replayed in order ``rounds`` times, the cache
    emptied before each pass, so each target finds what the targets before
    it left, as in the node.
    """
    from sirdiff_ros.core.restorers import create_restorer

    try:
        from sirdiff_ros.core.profiling import collect_stages
    except ImportError:  # a revision without stage marks: totals only
        from contextlib import nullcontext

        def collect_stages():  # type: ignore[no-redef]
            return nullcontext({})

    restorer = create_restorer("fusion")

    def empty_cache() -> None:
        if hasattr(restorer, "cache"):
            restorer.cache = type(restorer.cache)()

    def call(req: Any) -> tuple[float, dict[str, float], Any]:
        with collect_stages() as st:
            t0, c0 = time.perf_counter(), time.process_time()
            res = restorer.restore(req)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return wall, {**st, "cpu": cpu}, res

    requests = fusion_requests()
    calls: dict[str, list[tuple[float, dict[str, float], Any]]] = {name: [] for name in requests}
    restorer.restore(next(iter(requests.values()))[0])  # warm-up (first-call allocations, DIS set-up)
    for name, (req, _) in requests.items():
        if not name.startswith("stream"):
            for _ in range(rounds):
                empty_cache()
                calls[name].append(call(req))
    for group in STREAMS:
        for _ in range(rounds):
            empty_cache()
            for name, (req, _) in requests.items():
                if name.startswith(group + "/"):
                    calls[name].append(call(req))
    out: dict[str, Any] = {}
    for name, (req, gt) in requests.items():
        wall, st, res = sorted(calls[name], key=lambda c: c[0])[len(calls[name]) // 2]
        rv = res.for_index(0)
        out[name] = {"ms": wall * 1e3, "cpu_ms": st.pop("cpu") * 1e3, "stages_ms": {k: v * 1e3 for k, v in st.items()},
                     "restored": bool(rv.restored), "scale": rv.info.get("work_scale"),
                     "psnr_in": psnr(req.views[0].image, gt), "psnr_out": psnr(rv.image, gt)}
    return out


def baseline_tree(rev: str, dest: Path) -> Path:
    """The package of ``rev`` (git archive) under ``dest``; the repository is not touched."""
    tar = dest / "rev.tar"
    with open(tar, "wb") as f:
        subprocess.run(["git", "-C", str(REPO_ROOT), "archive", "--format=tar", rev, "sirdiff_ros"], stdout=f,
                       check=True)
    with tarfile.open(tar) as t:
        t.extractall(dest / "tree", filter="data")
    # Generated message modules live in the venv, not in the tree: the tree's
    # package extends its __path__ the same way (editable install, compat mode).
    return dest / "tree"


def run_side(tree: Path | None, rounds: int) -> dict[str, Any]:
    """time_fusion in a fresh interpreter whose package is ``tree`` (None: this checkout)."""
    env = dict(os.environ, PYTHONPATH=str(tree or REPO_ROOT))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", "--rounds", str(rounds)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# (label, restorer options): the previous default (PyTorch, whole images) and the current one.
MODEL_CASES = (
    ("previous default: float32, ONNX Runtime, 2 threads, tiles, full resolution",
     {"dtype": "float32", "threads": 2, "work_scale": 1.0}),
    ("float32, ONNX Runtime, default threads, work_scale auto", {"dtype": "float32"}),
    ("default: dtype auto, default threads, work_scale auto", {}),
)


def model_profile(steps: int | None) -> list[dict[str, Any]]:
    """The shipped sirdiff weights on one 640x480 4-view set, per :data:`MODEL_CASES`:
    wall and CPU ms, ms per stage, PSNR."""
    import torch

    from sirdiff_ros.core.profiling import collect_stages
    from sirdiff_ros.core.restorers import RestoreRequest, create_restorer
    from sirdiff_ros.data.synth import sample_view_set

    views = sample_view_set(1, 4, 640, 480)
    views = [views[i] for i in np.argsort([-v.extras["blur_strength"] for v in views], kind="stable")]
    gt = views[0].extras["sharp"]
    req = RestoreRequest(views, [0])
    out = []
    for label, options in MODEL_CASES:
        restorer = create_restorer("sirdiff", steps=steps, **options)
        restorer.restore(req)  # warm-up (and, the first time, the ONNX export)
        with collect_stages() as st:
            t0, c0 = time.perf_counter(), time.process_time()
            res = restorer.restore(req)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out.append({"case": label, "ms": wall * 1e3, "cpu_ms": cpu * 1e3,
                    "stages_ms": {k: v * 1e3 for k, v in st.items()}, "steps": restorer.steps,
                    "engine": restorer.engine, "dtype": str(restorer.dtype).replace("torch.", ""),
                    "tiles": res.for_index(0).info.get("tiles"),
                    "work_scale": res.for_index(0).info.get("work_scale"),
                    "threads": torch.get_num_threads(),
                    "psnr_in": psnr(views[0].image, gt), "psnr_out": psnr(res.for_index(0).image, gt)})
    return out


def summary(per: dict[str, Any], prefix: str) -> dict[str, float]:
    rows = [v for k, v in per.items() if k.startswith(prefix)]
    # Targets the gate picked among sharp frames have no finite input PSNR: left out of the gain.
    gains = [r["psnr_out"] - r["psnr_in"] for r in rows if r["psnr_in"] < 100]
    return {"n": len(rows), "ms_median": float(np.median([r["ms"] for r in rows])),
            "cpu_ms_median": float(np.median([r["cpu_ms"] for r in rows])),
            "ms_max": float(np.max([r["ms"] for r in rows])),
            "psnr_gain_mean": float(np.mean(gains)) if gains else float("nan"), "n_blurred": len(gains),
            **{f"{s}_ms": float(np.median([r["stages_ms"].get(s, 0.0) for r in rows])) for s in FUSION_STAGES}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", help="git revision to compare the fusion timings with")
    ap.add_argument("--rounds", type=int, default=3, help="calls per view set and side (median taken)")
    ap.add_argument("--alternations", type=int, default=2, help="with --baseline: rounds of A then B")
    ap.add_argument("--no-model", action="store_true", help="skip the sirdiff model profile")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps of the model (default: checkpoint's)")
    ap.add_argument("--side", action="store_true", help=argparse.SUPPRESS)  # internal: one side, JSON out
    args = ap.parse_args()
    if args.side:
        print(json.dumps(time_fusion(args.rounds)))
        return 0
    sys.path.insert(0, str(REPO_ROOT))
    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                          "loadavg_start": os.getloadavg()[0],
                                          "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}}
    sides: dict[str, list[dict[str, Any]]] = {"current": []}
    with tempfile.TemporaryDirectory() as tmp:
        tree = None
        if args.baseline:
            tree = baseline_tree(args.baseline, Path(tmp))
            sides["baseline"] = []
        for _ in range(args.alternations if args.baseline else 1):
            sides["current"].append(run_side(None, args.rounds))
            if tree is not None:
                sides["baseline"].append(run_side(tree, args.rounds))
    # Per request, the median over alternations.
    merged: dict[str, dict[str, Any]] = {}
    for side, runs in sides.items():
        per: dict[str, Any] = {}
        for name in runs[0]:
            rows = sorted((r[name] for r in runs), key=lambda r: r["ms"])
            per[name] = rows[len(rows) // 2]
        merged[side] = per
    result["fusion"] = {side: {"per_request": per, **{p: summary(per, p) for p in FUSION_GROUPS}}
                        for side, per in merged.items()}
    if args.baseline:
        cur, base = merged["current"], merged["baseline"]
        result["fusion"]["ratio_current_over_baseline"] = {
            p: float(np.median([cur[k]["ms"] / base[k]["ms"] for k in cur if k.startswith(p)]))
            for p in FUSION_GROUPS}
        result["fusion"]["psnr_change_db"] = {
            p: float(np.mean([cur[k]["psnr_out"] - base[k]["psnr_out"] for k in cur if k.startswith(p)]))
            for p in FUSION_GROUPS}
        result["baseline"] = args.baseline
    if not args.no_model:
        result["model"] = model_profile(args.steps)
    result["machine"]["loadavg_end"] = os.getloadavg()[0]
    print_tables(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


def print_tables(result: dict[str, Any]) -> None:
    sides = [s for s in ("baseline", "current") if s in result["fusion"]]
    print("\nfusion, 640x480, 4 views: median ms per target (wall, CPU of all threads, per-stage wall medians)")
    head = ["sets", "side", "n", "wall", "CPU", *FUSION_STAGES, "gain dB"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for p in FUSION_GROUPS:
        for side in sides:
            s = result["fusion"][side][p]
            cells = [p, side, str(s["n"]), f"{s['ms_median']:.0f}", f"{s['cpu_ms_median']:.0f}", *(f"{s[f'{st}_ms']:.1f}" for st in FUSION_STAGES),
                     f"{s['psnr_gain_mean']:+.3f}"]
            print("| " + " | ".join(cells) + " |")
    if "ratio_current_over_baseline" in result["fusion"]:
        print("ratio current/baseline (median per set):", json.dumps(result["fusion"]["ratio_current_over_baseline"]))
        print("PSNR change current-baseline (dB, mean):", json.dumps(result["fusion"]["psnr_change_db"]))
    if "model" in result:
        print("\nsirdiff (shipped weights), 640x480, 4 views: ms per target")
        head = ["case", "engine", "dtype", "threads", "work scale", "tiles", "wall", "CPU", *MODEL_STAGES, "PSNR in -> out"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for m in result["model"]:
            cells = [m["case"], m["engine"], m["dtype"], str(m["threads"]), f"{m['work_scale']:.2f}", str(m["tiles"]), f"{m['ms']:.0f}", f"{m['cpu_ms']:.0f}",
                     *(f"{m['stages_ms'].get(st, 0.0):.0f}" for st in MODEL_STAGES),
                     f"{m['psnr_in']:.2f} -> {m['psnr_out']:.2f}"]
            print("| " + " | ".join(cells) + " |")
    print(f"machine: {result['machine']}")


if __name__ == "__main__":
    raise SystemExit(main())
