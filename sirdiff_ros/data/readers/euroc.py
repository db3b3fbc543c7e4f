"""EuRoC MAV (ASL folder format) camera images with ground-truth poses.

Supported subset: ``mav0/camN/data.csv`` (``#timestamp [ns],filename``),
``mav0/camN/data/*.png`` (8-bit mono), ``mav0/camN/sensor.yaml``
(``intrinsics: [fu, fv, cu, cv]``, ``resolution: [w, h]``,
``distortion_coefficients`` radial-tangential, ``T_BS`` body-from-sensor 4x4),
and poses from ``mav0/state_groundtruth_estimate0/data.csv``
(``timestamp, p_RS_R_x/y/z, q_RS_w/x/y/z, ...``: T_world_body), turned into
the camera pose ``T_world_body @ T_BS``. The Leica ``leica0`` prism gives
positions only (no orientation) and is not used. With ``undistort=True``
images are undistorted to the same K (radial-tangential model); otherwise
they are returned as stored and the distortion is ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import yaml

from ...core.frame import Frame
from ...core.geometry import CameraIntrinsics, GeometryError, Pose
from .common import DatasetError, lookup_pose, pose_track, read_rgb, read_stamped_lines

__all__ = ["read_euroc", "read_euroc_sensor"]


def read_euroc_sensor(path: Path) -> tuple[CameraIntrinsics, np.ndarray, Pose]:
    """Intrinsics, distortion coefficients and T_body_sensor of a camera ``sensor.yaml``."""
    try:
        y = yaml.safe_load(path.read_text())
        fu, fv, cu, cv = (float(v) for v in y["intrinsics"])
        w, h = (int(v) for v in y["resolution"])
        dist = np.asarray(y.get("distortion_coefficients", [0, 0, 0, 0]), float)
        T = np.asarray(y["T_BS"]["data"], float).reshape(4, 4)
        return CameraIntrinsics(fu, fv, cu, cv, w, h), dist, Pose.from_matrix(T)
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError, GeometryError) as exc:
        raise DatasetError(f"{path}: cannot read EuRoC camera calibration ({exc})") from exc


def _root(root: Path) -> Path:
    return root / "mav0" if (root / "mav0").is_dir() else root


def read_euroc(root: str | Path, camera: str = "cam0", undistort: bool = False,
               frame_id: str | None = None) -> Iterator[Frame]:
    """Frames of an EuRoC ASL sequence folder (``root`` or ``root/mav0``)."""
    base = _root(Path(root))
    cam = base / camera
    K, dist, T_body_cam = read_euroc_sensor(cam / "sensor.yaml")
    rows = read_stamped_lines(cam / "data.csv", 2, sep=",")
    gt_file = base / "state_groundtruth_estimate0" / "data.csv"
    track = None
    if gt_file.is_file():
        stamps, poses = [], []
        for f in read_stamped_lines(gt_file, 8, sep=","):
            try:
                q_wxyz = [float(v) for v in f[4:8]]
                body = Pose.from_quaternion([float(v) for v in f[1:4]], q_wxyz[1:] + q_wxyz[:1])
            except (GeometryError, ValueError) as exc:
                raise DatasetError(f"{gt_file}: bad pose at {f[0]} ({exc})") from exc
            stamps.append(int(f[0]))
            poses.append(body @ T_body_cam)
        track = pose_track(stamps, poses, max_extrapolation_ns=20_000_000)
    maps = None
    if undistort and np.any(dist):
        maps = cv2.initUndistortRectifyMap(K.K, dist, None, K.K, (K.width, K.height), cv2.CV_16SC2)
    for seq, f in enumerate(sorted(rows, key=lambda r: int(r[0]))):
        stamp = int(f[0])
        image = read_rgb(cam / "data" / f[1])
        if maps is not None:
            image = cv2.remap(image, maps[0], maps[1], cv2.INTER_LINEAR)
        yield Frame(image=image, stamp_ns=stamp, intrinsics=K, pose=lookup_pose(track, stamp),
                    frame_id=frame_id or camera, seq=seq)
