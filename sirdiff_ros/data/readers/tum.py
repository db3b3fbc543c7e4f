"""TUM RGB-D layout, and this package's synthetic folders (a TUM superset).

Supported subset of TUM RGB-D (https://cvg.cit.tum.de/data/datasets/rgbd-dataset/file_formats):
``rgb.txt`` / ``depth.txt`` (``timestamp filename``), ``groundtruth.txt``
(``timestamp tx ty tz qx qy qz qw``, T_world_cam), 8-bit colour PNGs,
16-bit depth PNGs scaled by 5000 per metre. Depth is associated to each
colour image by nearest stamp (within ``max_time_diff_s``); the pose is
interpolated at the image stamp. Intrinsics: given, else the sequence's
published calibration picked from ``freiburg1/2/3`` in the folder name, else
TUM's "ROS default" (525, 525, 319.5, 239.5). Images are used as stored
(TUM's published calibration has small distortion that is not removed).

A synthetic folder written by :class:`~sirdiff_ros.data.folder.SynthFolderWriter`
adds ``camera.json`` (intrinsics, depth scale, exposure metadata) and
``sharp/`` + ``sharp.txt`` (ground truth, into ``extras['sharp']``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from ...core.frame import Frame
from ...core.geometry import CameraIntrinsics, GeometryError, Pose
from .common import (
    DatasetError,
    lookup_pose,
    nearest_index,
    parse_stamp_ns,
    pose_track,
    read_depth_png,
    read_rgb,
    read_stamped_lines,
)

__all__ = ["read_tum_rgbd", "read_synth_folder", "read_tum_trajectory", "TUM_CALIBRATION", "SYNTH_META_FILE"]

SYNTH_META_FILE = "camera.json"
TUM_DEPTH_SCALE = 5000.0
# Published pinhole calibrations of the Freiburg sensors (640x480).
TUM_CALIBRATION = {
    "freiburg1": (517.3, 516.5, 318.6, 255.3),
    "freiburg2": (520.9, 521.0, 325.1, 249.7),
    "freiburg3": (535.4, 539.2, 320.1, 247.6),
    "default": (525.0, 525.0, 319.5, 239.5),
}


def read_tum_trajectory(path: Path) -> tuple[list[int], list[Pose]]:
    """Stamps (ns) and poses of a ``t tx ty tz qx qy qz qw`` file."""
    stamps, poses = [], []
    for n, f in enumerate(read_stamped_lines(path, 8), 1):
        try:
            poses.append(Pose.from_quaternion([float(x) for x in f[1:4]], [float(x) for x in f[4:8]]))
        except (GeometryError, ValueError) as exc:
            raise DatasetError(f"{path}: pose {n}: {exc}") from exc
        stamps.append(parse_stamp_ns(f[0]))
    return stamps, poses


def _stamped_files(root: Path, listing: str) -> tuple[np.ndarray, list[Path]]:
    rows = read_stamped_lines(root / listing, 2)
    order = sorted(range(len(rows)), key=lambda i: parse_stamp_ns(rows[i][0]))
    return (np.array([parse_stamp_ns(rows[i][0]) for i in order], dtype=np.int64), [root / rows[i][1] for i in order])


def _tum_intrinsics(root: Path, width: int, height: int) -> CameraIntrinsics:
    key = next((k for k in TUM_CALIBRATION if k in root.resolve().name), "default")
    fx, fy, cx, cy = TUM_CALIBRATION[key]
    return CameraIntrinsics(fx, fy, cx, cy, width, height)


def read_tum_rgbd(root: str | Path, intrinsics: CameraIntrinsics | None = None, depth_scale: float | None = None,
                  with_depth: bool = True, max_time_diff_s: float = 0.02, frame_id: str = "camera") -> Iterator[Frame]:
    """Frames of a TUM RGB-D (or synthetic) folder in stamp order; see the module docstring."""
    root = Path(root)
    meta = _synth_meta(root)
    if meta is not None:
        intrinsics = intrinsics or CameraIntrinsics(**meta["intrinsics"])
        depth_scale = depth_scale or float(meta["depth_scale"])
        frame_id = meta.get("frame_id", frame_id)
    depth_scale = depth_scale or TUM_DEPTH_SCALE
    stamps, files = _stamped_files(root, "rgb.txt")
    d_stamps, d_files = _stamped_files(root, "depth.txt") if with_depth and (root / "depth.txt").is_file() else (
        np.zeros(0, np.int64), [])
    s_stamps, s_files = _stamped_files(root, "sharp.txt") if (root / "sharp.txt").is_file() else (
        np.zeros(0, np.int64), [])
    gt = root / "groundtruth.txt"
    track = pose_track(*read_tum_trajectory(gt)) if gt.is_file() else None
    max_diff = int(max_time_diff_s * 1e9)
    extra_meta = {k: meta[k] for k in ("exposure_s", "subframes") if meta and k in meta}
    for seq, (stamp, path) in enumerate(zip(stamps.tolist(), files)):
        image = read_rgb(path)
        K = intrinsics or _tum_intrinsics(root, image.shape[1], image.shape[0])
        j = nearest_index(d_stamps, stamp, max_diff)
        depth = read_depth_png(d_files[j], depth_scale) if j is not None else None
        extras: dict = dict(extra_meta)
        k = nearest_index(s_stamps, stamp, 0)
        if k is not None:
            extras["sharp"] = read_rgb(s_files[k])
        yield Frame(image=image, stamp_ns=stamp, intrinsics=K, pose=lookup_pose(track, stamp), depth=depth,
                    frame_id=frame_id, seq=seq, extras=extras)


def _synth_meta(root: Path) -> dict | None:
    p = root / SYNTH_META_FILE
    if not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text())
        meta["intrinsics"] = {k: meta["intrinsics"][k] for k in ("fx", "fy", "cx", "cy", "width", "height")}
        float(meta["depth_scale"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{p}: malformed metadata ({exc})") from exc
    return meta


def read_synth_folder(root: str | Path) -> Iterator[Frame]:
    """Frames of a folder written by ``sirdiff-synth`` (requires its ``camera.json``)."""
    root = Path(root)
    if not (root / SYNTH_META_FILE).is_file():
        raise DatasetError(f"{root} has no {SYNTH_META_FILE}: not a sirdiff-synth folder")
    return read_tum_rgbd(root)
