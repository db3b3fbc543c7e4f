"""Real photographs as hand-held scenes: the split, the sequences, and the real-image table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sirdiff_ros.data.real_photos import REAL_SPLITS, ShakeConfig, photo_plane_sequence, real_photo_paths
from sirdiff_ros.data.textures import skimage_data_dir


def test_split_folders_are_disjoint() -> None:
    train, val = set(REAL_SPLITS["train"]), set(REAL_SPLITS["val"])
    assert not train & val
    # No folder of one split inside a folder of the other (stills of a video stay with it).
    assert not any(a.startswith(b + "/") or b.startswith(a + "/") for a in train for b in val)
    with pytest.raises(ValueError, match="split"):
        real_photo_paths("test")


def test_split_lists_real_sharp_images_only(real_images: Path) -> None:
    val, train = real_photo_paths("val", real_images), real_photo_paths("train", real_images)
    assert len(val) >= 50 and len(train) >= 200
    assert not {p.resolve() for p in val} & {p.resolve() for p in train}
    assert not any("calibration_chessboard" in p.parts or "depth" in p.parts for p in val + train)


def test_sequence_is_deterministic_and_blur_follows_the_reported_poses() -> None:
    path = skimage_data_dir() / "chelsea.png"
    kw = dict(width=160, height=120, exposure_s=0.04, fps=20.0, shake=ShakeConfig(blur_px_range=(12.0, 12.0)))
    a = list(photo_plane_sequence(path, 3, 4, **kw))
    b = list(photo_plane_sequence(path, 3, 4, **kw))
    assert all(np.array_equal(x.image, y.image) and x.stamp_ns == y.stamp_ns for x, y in zip(a, b))
    assert all(f.extras["exposure_s"] == 0.04 and f.pose is not None for f in a)
    # The view stays on the photo, and the frames are blurred (not sharp copies).
    assert all(f.extras["valid"].mean() > 0.99 for f in a)
    assert np.mean([f.extras["blur_px"] for f in a]) > 1.0
    assert any(not np.array_equal(f.image, f.extras["sharp"]) for f in a)
    # A still camera: exposure without motion leaves the truth (up to sensor noise).
    still = list(photo_plane_sequence(path, 3, 1, width=160, height=120, exposure_s=0.0, fps=20.0,
                                      noise_std=0.0, shot_noise=0.0))[0]
    assert np.array_equal(still.image, still.extras["sharp"])


def test_real_split_table_deblur_gains(real_images: Path, tmp_path: Path) -> None:
    from sirdiff_ros.evaluation.real_split import evaluate_real_split

    report = evaluate_real_split(tmp_path, "val", sequences=2, frames=14, width=160, height=120,
                                 backends=("deblur",), seed=1, root=real_images, log=lambda _msg: None)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["overall"]["input"]["targets"] == report["overall"]["deblur"]["targets"] > 0
    assert data["overall"]["deblur"]["gain_db"] > 0.5
    assert "| deblur |" in (tmp_path / "report.md").read_text()
    assert data["gated_frames"] and all(k["gate"] for k in data["gated_frames"])
    assert sum(g["targets"] for g in data["gate"].values()) == data["overall"]["input"]["targets"]


@pytest.mark.timeout(900)
def test_shipped_weights_restore_real_photos_beyond_the_mean_of_their_views(real_images: Path, tmp_path: Path) -> None:
    """On real photographs of the validation split, physically blurred by a hand-held camera's motion,
    the shipped weights gain over the blurred input, beat the plain mean of the registered views they
    are given, and make no target worse. Measured: 11 targets, input 28.78 dB, the mean 34.18, sirdiff
    35.09 (+6.31); the same check with the previous head (no head for deblurred views) scored below the mean
    on the whole split (docs/real_images.md)."""
    from sirdiff_ros.evaluation.real_split import WORSE_DB, evaluate_real_split

    report = evaluate_real_split(tmp_path, "val", sequences=3, frames=12, backends=("aligned-mean", "sirdiff"),
                                 root=real_images, log=lambda _msg: None)
    o = report["overall"]
    assert o["input"]["targets"] >= 5, o["input"]
    assert o["sirdiff"]["gain_db"] > 2.0, o
    assert o["sirdiff"]["psnr"] > o["aligned-mean"]["psnr"], o
    assert o["sirdiff"]["worse_than_input"] == 0, [t for t in report["targets"]
                                                   if t["sirdiff"]["psnr"] < t["input"]["psnr"] - WORSE_DB]


def test_shipped_weights_at_640x480_run_at_320x240_and_keep_the_gain(real_images: Path, tmp_path: Path) -> None:
    """At 640x480 the model runs on the views reduced to 320x240 (work_scale 'auto') and its output
    is upsampled. Measured on 22 targets of the validation split: +7.23 dB over the input against
    +7.39 dB at full resolution, none worse (docs/real_images.md)."""
    from sirdiff_ros.evaluation.real_split import WORSE_DB, evaluate_real_split

    report = evaluate_real_split(tmp_path, "val", sequences=2, frames=8, width=640, height=480,
                                 backends=("sirdiff",), root=real_images, log=lambda _msg: None)
    o = report["overall"]
    assert o["input"]["targets"] >= 3, o["input"]
    assert o["sirdiff"]["gain_db"] > 4.0, o
    assert o["sirdiff"]["worse_than_input"] == 0, [t for t in report["targets"]
                                                   if t["sirdiff"]["psnr"] < t["input"]["psnr"] - WORSE_DB]
