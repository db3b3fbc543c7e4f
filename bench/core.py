"""Online core: sharpness, view selection over large buffers, fusion at 640x480, buffer memory.

    .venv/bin/python bench/core.py [--quick] [--picture]

Prints a table and writes bench/results/core.json (and, with --picture,
docs/images/fusion_example.png). Goals: view selection with 1,000
keyframes < 1 ms; fusion of a 640x480 target with 3 partners < 100 ms on 2
cores; the memory of 1,000 640x480 keyframes stated with its bound. Wall times
depend on the load of this shared 2-core machine, so the load average and
CPU seconds are recorded with them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
RESULTS = REPO_ROOT / "bench" / "results" / "core.json"
PICTURE = REPO_ROOT / "docs" / "images" / "fusion_example.png"

from sirdiff_ros.core.blur import sharpness  # noqa: E402
from sirdiff_ros.core.frame import Frame  # noqa: E402
from sirdiff_ros.core.keyframes import KeyframeBuffer, KeyframeConfig, keyframe_nbytes  # noqa: E402
from sirdiff_ros.core.restorers import RestoreRequest, create_restorer  # noqa: E402
from sirdiff_ros.core.reblur import center_kernel, estimate_kernel, reblur  # noqa: E402
from sirdiff_ros.core.alignment import lands_inside, match_blur, reprojection_flow, warp  # noqa: E402
from sirdiff_ros.core.selection import select_views  # noqa: E402
from sirdiff_ros.data.synth import default_intrinsics, generate_sequence, sample_view_set  # noqa: E402
from sirdiff_ros.data.trajectory import SmoothTrajectory, TrajectoryConfig  # noqa: E402
from sirdiff_ros.data.scene import build_scene  # noqa: E402


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, float]:
    """(median wall s, min wall s, mean CPU s) over ``repeat`` calls after one warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.min(wall)), float(np.mean(cpu))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_sharpness() -> dict:
    img = next(generate_sequence(1, 1, 640, 480, subframes=1)).image
    med, mn, cpu = timed(lambda: sharpness(img), 300)
    return {"sharpness_640x480_ms": med * 1e3, "sharpness_640x480_min_ms": mn * 1e3}


def trajectory_buffer(n: int, seed: int = 5) -> KeyframeBuffer:
    """``n`` keyframes with poses along a synthetic trajectory (images share one array)."""
    K = default_intrinsics(640, 480)
    scene = build_scene(seed, 128)
    traj = SmoothTrajectory(seed, scene.camera_region, TrajectoryConfig(), duration_s=n * 0.1 + 2)
    img = np.zeros((480, 640, 3), np.uint8)
    buf = KeyframeBuffer(KeyframeConfig(min_translation=0.0, max_keyframes=n, max_bytes=2**62))
    rng = np.random.default_rng(seed)
    for i in range(n):
        t = i * 0.1
        buf.consider(Frame(img, int(t * 1e9), K, traj.pose(t), seq=i), sharpness=float(rng.uniform(0.005, 0.03)))
    return buf


def bench_selection(sizes: list[int]) -> dict:
    out: dict[str, Any] = {}
    for n in sizes:
        buf = trajectory_buffer(n + 1)
        snap = buf.snapshot()
        target = snap.keyframes[-1].frame
        med, mn, _ = timed(lambda: select_views(target, snap, 4), 50)
        sel = select_views(target, snap, 4)
        out[f"select_{n}_keyframes_ms"] = med * 1e3
        out[f"select_{n}_keyframes_min_ms"] = mn * 1e3
        out[f"select_{n}_partners"] = len(sel.partners)
        t0 = time.perf_counter()
        KeyframeBuffer.snapshot(buf)  # cached: free
        buf._snapshot = None  # force a rebuild, as after an admission
        buf.snapshot()
        out[f"snapshot_rebuild_{n}_ms"] = (time.perf_counter() - t0) * 1e3
    return out


def bench_fusion(seeds: list[int]) -> dict:
    restorer = create_restorer("fusion")
    res: dict[str, Any] = {}
    for path in ("depth", "flow"):
        lat, cpu, gains = [], [], []
        for seed in seeds:
            views = sample_view_set(seed, 4, 640, 480)
            views = [views[i] for i in np.argsort([-v.extras["blur_strength"] for v in views], kind="stable")]
            if path == "flow":
                views = [dataclasses.replace(v, depth=None) for v in views]
            req = RestoreRequest(views, [0])
            med, _, c = timed(lambda: restorer.restore(req), 3)
            lat.append(med)
            cpu.append(c)
            out = restorer.restore(req).for_index(0)
            gt = views[0].extras["sharp"]
            gains.append(psnr(out.image, gt) - psnr(views[0].image, gt))
        res[f"fusion_640x480_4views_{path}_ms"] = float(np.median(lat)) * 1e3
        res[f"fusion_640x480_4views_{path}_cpu_s"] = float(np.mean(cpu))
        res[f"fusion_640x480_{path}_psnr_gain_db"] = float(np.mean(gains))
    return res


def bench_flow_bias(seeds: list[int]) -> dict:
    """DIS end-point error (half resolution) from a blurred target to a sharper
    partner: plain; partner Gaussian-blurred to the target's score; partner
    re-blurred with the relative kernel estimated from the second (the flow
    path's two passes)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    errs: dict[str, list[float]] = {"plain": [], "blur_matched": [], "kernel_reblurred": []}
    for seed in seeds:
        views = sample_view_set(seed, 4, 320, 240)
        views = [views[i] for i in np.argsort([-v.extras["blur_strength"] for v in views], kind="stable")]
        t = views[0]
        size = (160, 120)
        tg = cv2.resize(cv2.cvtColor(t.image, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA)
        for p in views[1:]:
            true, _, valid = reprojection_flow(t, p, size)
            pg = cv2.resize(cv2.cvtColor(p.image, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA)
            pm = np.clip(match_blur(pg.astype(np.float32), sharpness(tg))[0], 0, 255).astype(np.uint8)
            first = dis.calc(tg, pm, None)
            k = center_kernel(estimate_kernel(warp(pg.astype(np.float32), first), tg.astype(np.float32),
                                              lands_inside(first, pg.shape), 25))
            pk = np.clip(reblur(pg.astype(np.float32), k), 0, 255).astype(np.uint8)
            for name, img in (("plain", pg), ("blur_matched", pm), ("kernel_reblurred", pk)):
                err = np.linalg.norm(dis.calc(tg, img, None) - true, axis=-1)[valid]
                errs[name].append(float(np.median(err)))
    return {f"flow_epe_{k}_px": float(np.mean(v)) for k, v in errs.items()}


def bench_real_views() -> dict:
    """robustmvd_sample at 640x360 (flow path, no depth), an 18 px motion blur
    synthesised on views 0 and 3: PSNR gain with and without the re-blurred
    second flow pass. Skipped where ../shared/data is absent."""
    root = REPO_ROOT.parent / "shared" / "data" / "robustmvd_sample"
    if not root.is_dir():
        return {}
    from sirdiff_ros.data.readers.shared import read_robustmvd_sample

    frames = [Frame(cv2.resize(f.image, (640, 360), interpolation=cv2.INTER_AREA), f.stamp_ns,
                    f.intrinsics.scaled(0.5), f.pose, None, f.frame_id, f.seq) for f in read_robustmvd_sample(root)]
    k = np.zeros((21, 21), np.float32)
    cv2.line(k, (2, 6), (18, 14), 1.0, 1)
    k /= k.sum()
    out: dict[str, Any] = {}
    for refine in (True, False):
        restorer = create_restorer("fusion", refine_flow=refine)
        gains, lat = [], []
        for ti in (0, 3):
            sharp = frames[ti].image
            target = dataclasses.replace(frames[ti], image=cv2.filter2D(sharp, -1, k, borderType=cv2.BORDER_REFLECT))
            req = RestoreRequest([target] + [f for i, f in enumerate(frames) if i != ti][:3], [0])
            med, _, _ = timed(lambda: restorer.restore(req), 2)
            lat.append(med)
            gains.append(psnr(restorer.restore(req).for_index(0).image, sharp) - psnr(target.image, sharp))
        tag = "two_pass" if refine else "one_pass"
        out[f"robustmvd_640x360_{tag}_psnr_gain_db"] = float(np.mean(gains))
        out[f"robustmvd_640x360_{tag}_ms"] = float(np.median(lat)) * 1e3
    return out


def bench_gate(seeds: list[int]) -> dict:
    """Blur gate against the generator's blur extent on 60-frame 320x240
    sequences: keyframes gated as targets vs keyframes blurred over 3 / 6 px,
    with the sharpness score alone and with the exposure time known (motion)."""
    from sirdiff_ros.core.pipeline import PipelineConfig, RestorationPipeline

    out: dict[str, Any] = {}
    frames = {seed: list(generate_sequence(seed, 60, 320, 240)) for seed in seeds}
    for mode, exposure in (("score", 0.0), ("motion", 0.03)):
        counts = {t: {"tp": 0, "fp": 0, "fn": 0, "tn": 0} for t in (3, 6)}
        for seed in seeds:
            pipe = RestorationPipeline(PipelineConfig(exposure_s=exposure), "passthrough")
            for f in frames[seed]:
                d = pipe.ingest(f)
                if not d.is_keyframe or d.reason == "no_reference":
                    continue
                for t, c in counts.items():
                    blurred = f.extras["blur_px"] > t
                    c[("t" if d.is_target == blurred else "f") + ("p" if d.is_target else "n")] += 1
        out.update({f"gate_{mode}_blur_over_{t}px_{k}": v for t, c in counts.items() for k, v in c.items()})
    return out


def bench_memory() -> dict:
    K = default_intrinsics(640, 480)
    rgb = Frame(np.zeros((480, 640, 3), np.uint8), 0, K, None)
    rgbd = Frame(np.zeros((480, 640, 3), np.uint8), 0, K, None, np.zeros((480, 640), np.float32))
    cfg = KeyframeConfig()
    out = {
        "keyframe_640x480_rgb_bytes": keyframe_nbytes(rgb),
        "keyframe_640x480_rgbd_bytes": keyframe_nbytes(rgbd),
        "keyframes_1000_640x480_rgb_mib": 1000 * keyframe_nbytes(rgb) / 2**20,
        "keyframes_1000_640x480_rgbd_mib": 1000 * keyframe_nbytes(rgbd) / 2**20,
        "default_max_keyframes": cfg.max_keyframes,
        "default_max_bytes_mib": cfg.max_bytes / 2**20,
    }
    # Feed 1,000 distinct 640x480 RGB-D frames into a default buffer: resident
    # memory must stay within the byte bound.
    base = rss_bytes()
    buf = KeyframeBuffer(cfg)
    frames = list(generate_sequence(9, 2, 640, 480, subframes=1))
    from sirdiff_ros.core.geometry import Pose

    for i in range(1000):
        f = frames[i % 2]
        buf.consider(Frame(f.image.copy(), i * 100_000_000, f.intrinsics, Pose(np.eye(3), np.array([0.1 * i, 0, 0])),
                           f.depth.copy()), sharpness=1.0)
    out["buffer_after_1000_rgbd_admissions_keyframes"] = len(buf)
    out["buffer_after_1000_rgbd_admissions_mib"] = buf.nbytes / 2**20
    out["rss_growth_after_1000_rgbd_admissions_mib"] = (rss_bytes() - base) / 2**20
    return out


def write_picture(path: Path) -> None:
    """Blurred target | fused | ground truth: a 640x480 synthetic set (3 sharper
    partners), each shown whole at 3/8 size and as a full-resolution crop."""
    views = sample_view_set(1, 4, 640, 480)
    views = [views[i] for i in np.argsort([-v.extras["blur_strength"] for v in views], kind="stable")]
    out = create_restorer("fusion").restore(RestoreRequest(views, [0])).for_index(0).image
    gt = views[0].extras["sharp"]
    labels = [f"blurred {psnr(views[0].image, gt):.1f} dB", f"fused {psnr(out, gt):.1f} dB", "ground truth"]
    tiles = []
    for im, lab in zip((views[0].image, out, gt), labels):
        small = cv2.resize(im, (240, 180), interpolation=cv2.INTER_AREA)
        crop = im[60:180, 40:280].copy()  # full resolution, 240x120
        t = np.concatenate([small, crop], axis=0)
        cv2.rectangle(t, (0, 0), (240, 22), (0, 0, 0), -1)
        cv2.putText(t, lab, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(t)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(tiles, axis=1), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer seeds and sizes")
    ap.add_argument("--picture", action="store_true", help=f"also write {PICTURE.relative_to(REPO_ROOT)}")
    args = ap.parse_args()
    seeds = [1, 2] if args.quick else [1, 2, 3, 4]
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "cv2_threads": cv2.getNumThreads(), "python": platform.python_version(),
                    "loadavg_start": os.getloadavg()[0]},
    }
    results.update(bench_sharpness())
    results.update(bench_selection([100, 1000] if args.quick else [100, 1000, 4000]))
    results.update(bench_fusion(seeds))
    results.update(bench_flow_bias(seeds))
    results.update(bench_real_views())
    results.update(bench_gate(seeds[:3]))
    results.update(bench_memory())
    results["machine"]["loadavg_end"] = os.getloadavg()[0]
    for k, v in results.items():
        if k != "machine":
            print(f"{k:48s} {v:12.3f}" if isinstance(v, float) else f"{k:48s} {v:>12}")
    print(f"machine: {results['machine']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    if args.picture:
        write_picture(PICTURE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
