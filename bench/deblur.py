"""Deblurring from the camera's motion: CPU time and PSNR gain per blur length at 640x480.

    .venv/bin/python bench/deblur.py [--repeats 3]

A real photograph (scikit-image's bundled ``coffee``, no download, resized to
640x480) blurred by a pan of 5, 10, 20, 40 and 60 px during a 30 ms exposure
(the blur operator's own physics, in linear light, plus sensor noise); for
each, ``deblur_image`` is timed (median of ``--repeats``, one thread) and the
PSNR gain over the blurred frame is measured against the photograph. Prints a table and writes
bench/results/deblur.json with the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
RESULTS = REPO_ROOT / "bench" / "results" / "deblur.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import cv2

    cv2.setNumThreads(1)
    from sirdiff_ros.core.color import linear_to_srgb, srgb_to_linear
    from sirdiff_ros.core.deblur import ExposureMotion, MotionBlurOperator, deblur_image
    from sirdiff_ros.data.synth import add_sensor_noise, default_intrinsics
    from sirdiff_ros.data.textures import skimage_data_dir
    from sirdiff_ros.evaluation.metrics import psnr

    K = default_intrinsics(640, 480)
    bgr = cv2.imread(str(skimage_data_dir() / "coffee.png"), cv2.IMREAD_COLOR)
    sharp = cv2.cvtColor(cv2.resize(bgr, (640, 480), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    rows = []
    for blur in (5.0, 10.0, 20.0, 40.0, 60.0):
        # A pan (about the camera's y axis) with a little tilt and roll: blur ~ rate * exposure * fx.
        rate = blur / (0.03 * K.fx)
        motion = ExposureMotion(0.03, np.array([0.2, 1.0, 0.1]) * rate, np.zeros(3), depth_m=2.0)
        blurred_lin = MotionBlurOperator(motion, K, 2.0, samples=48).blur(srgb_to_linear(sharp))
        blurred = linear_to_srgb(add_sensor_noise(blurred_lin, np.random.default_rng(0), 0.004, 0.001))
        times = []
        out, predicted = blurred, 0.0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out, predicted = deblur_image(blurred, motion, K, 2.0)
            times.append(time.perf_counter() - t0)
        m = int(blur // 2) + 2  # borders: the pan brings in content the photograph does not hold
        gain = psnr(out[m:-m, m:-m], sharp[m:-m, m:-m]) - psnr(blurred[m:-m, m:-m], sharp[m:-m, m:-m])
        rows.append({"blur_px_true": float(blur), "blur_px_predicted": float(predicted),
                     "seconds_median": float(np.median(times)), "psnr_gain_db": float(gain)})
    print("| blur px (set) | operator px | deblur s (median) | PSNR gain dB |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['blur_px_true']:.1f} | {r['blur_px_predicted']:.1f} | {r['seconds_median']:.2f} | "
              f"{r['psnr_gain_db']:+.2f} |")
    load = os.getloadavg()[0]
    print(f"one thread, 640x480; load average {load:.1f} on {os.cpu_count()} cores")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "load_average": load, "size": [640, 480]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
