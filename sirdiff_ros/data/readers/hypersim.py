"""Hypersim scenes (Apple ml-hypersim): tonemapped images, camera keyframes, depth.

Supported subset, per scene folder ``ai_VVV_NNN`` and camera ``cam_XX``:

* images: ``images/scene_cam_XX_final_preview/frame.IIII.tonemap.jpg``
  (``.color.jpg`` where no tonemap file exists);
* poses: ``_detail/cam_XX/camera_keyframe_positions.hdf5`` (N x 3, asset
  units) and ``camera_keyframe_orientations.hdf5`` (N x 3 x 3, columns = the
  camera's x right, y up, z backward axes in world); positions are scaled by
  ``meters_per_asset_unit`` from ``_detail/metadata_scene.csv``; the
  OpenGL-style camera is turned into the optical one (y, z flipped);
* depth (optional): ``images/scene_cam_XX_geometry_hdf5/frame.IIII.depth_meters.hdf5``
  (distance along the ray) converted to z-depth;
* intrinsics: Hypersim's standard 60 degree horizontal field of view at the
  image size. Scenes with tilt-shift cameras (non-standard
  ``M_cam_from_uv`` in the dataset's camera-parameter table) are not
  corrected.

Frames are stamped ``frame_index / fps`` (Hypersim has no time).
Needs ``h5py`` (pinned in requirements/lock.txt).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterator

import numpy as np

from ...core.frame import Frame
from ...core.geometry import CameraIntrinsics, GeometryError, Pose
from .common import DatasetError, read_rgb

__all__ = ["read_hypersim", "HYPERSIM_HFOV_DEG"]

HYPERSIM_HFOV_DEG = 60.0
_GL_TO_OPTICAL = np.diag([1.0, -1.0, -1.0])


def _h5(path: Path) -> np.ndarray:
    import h5py

    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    with h5py.File(path, "r") as f:
        return np.asarray(f["dataset"])


def _meters_per_unit(scene: Path) -> float:
    path = scene / "_detail" / "metadata_scene.csv"
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    with path.open() as f:
        for row in csv.reader(f):
            if row and row[0].strip() == "meters_per_asset_unit":
                return float(row[1])
    raise DatasetError(f"{path} has no meters_per_asset_unit")


def read_hypersim(scene: str | Path, camera: str = "cam_00", fps: float = 10.0,
                  with_depth: bool = True) -> Iterator[Frame]:
    """Frames of one camera trajectory of a Hypersim scene folder."""
    scene = Path(scene)
    scale = _meters_per_unit(scene)
    positions = _h5(scene / "_detail" / camera / "camera_keyframe_positions.hdf5")
    orientations = _h5(scene / "_detail" / camera / "camera_keyframe_orientations.hdf5")
    if positions.shape[0] != orientations.shape[0]:
        raise DatasetError(f"{scene}/{camera}: {positions.shape[0]} positions but {orientations.shape[0]} orientations")
    preview = scene / "images" / f"scene_{camera}_final_preview"
    geometry = scene / "images" / f"scene_{camera}_geometry_hdf5"
    for i in range(positions.shape[0]):
        img_path = preview / f"frame.{i:04d}.tonemap.jpg"
        if not img_path.is_file():
            img_path = preview / f"frame.{i:04d}.color.jpg"
        if not img_path.is_file():
            continue  # keyframes without a rendered image are skipped, as in the dataset
        image = read_rgb(img_path)
        h, w = image.shape[:2]
        f = (w / 2) / math.tan(math.radians(HYPERSIM_HFOV_DEG) / 2)
        K = CameraIntrinsics(f, f, (w - 1) / 2, (h - 1) / 2, w, h)
        try:
            pose = Pose(orientations[i] @ _GL_TO_OPTICAL, positions[i] * scale)
        except GeometryError as exc:
            raise DatasetError(f"{scene}/{camera} keyframe {i}: {exc}") from exc
        depth = None
        dpath = geometry / f"frame.{i:04d}.depth_meters.hdf5"
        if with_depth and dpath.is_file():
            dist = _h5(dpath).astype(np.float64)
            uv = K.pixel_grid()
            ray = np.sqrt(((uv[..., 0] - K.cx) / K.fx) ** 2 + ((uv[..., 1] - K.cy) / K.fy) ** 2 + 1.0)
            depth = np.nan_to_num(dist / ray, nan=0.0).astype(np.float32)  # distance along ray -> z
        yield Frame(image=image, stamp_ns=int(round(i * 1e9 / fps)), intrinsics=K, pose=pose, depth=depth,
                    frame_id=f"hypersim_{camera}", seq=i)
