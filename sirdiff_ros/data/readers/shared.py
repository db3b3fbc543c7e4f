"""The two real multi-view folders shipped beside the project (``../shared/data``).

* ``robustmvd_sample``: a key view and source views ``source/i``, each with
  ``image.png`` and ``K.npy``; ``to_ref_transform.npy`` maps key-camera
  points into that camera (OpenCV axes). The world frame is the key
  camera's, so ``T_world_cam = inverse(to_ref_transform)``. No depth.
* ``slambook2_rgbd``: ``color/N.png`` (BGR), ``depth/N.pgm`` (16-bit mm),
  ``pose.txt`` lines ``tx ty tz qx qy qz qw`` (camera-to-world), Kinect
  intrinsics fx 518, fy 519, cx 325.5, cy 253.5.

Neither has timestamps: frame ``i`` is stamped ``i / fps``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ...core.frame import Frame
from ...core.geometry import CameraIntrinsics, GeometryError, Pose
from .common import DatasetError, read_depth_png, read_rgb, read_stamped_lines

__all__ = ["read_robustmvd_sample", "read_slambook_rgbd", "SLAMBOOK_INTRINSICS"]

SLAMBOOK_INTRINSICS = (518.0, 519.0, 325.5, 253.5)


def _npy(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    a = np.load(path).astype(np.float64)
    if a.shape != shape:
        raise DatasetError(f"{path}: expected shape {shape}, got {a.shape}")
    return a


def read_robustmvd_sample(root: str | Path, fps: float = 1.0) -> Iterator[Frame]:
    """Key view first (seq 0, identity pose), then ``source/0..`` in numeric order."""
    root = Path(root)
    views = [root / "key"] + sorted((p for p in (root / "source").glob("*") if p.is_dir()),
                                    key=lambda p: int(p.name) if p.name.isdigit() else p.name)
    for seq, v in enumerate(views):
        image = read_rgb(v / "image.png")
        K = CameraIntrinsics.from_matrix(_npy(v / "K.npy", (3, 3)), image.shape[1], image.shape[0])
        try:
            pose = Pose.from_matrix(_npy(v / "to_ref_transform.npy", (4, 4))).inverse()
        except GeometryError as exc:
            raise DatasetError(f"{v}: bad transform ({exc})") from exc
        yield Frame(image=image, stamp_ns=int(round(seq * 1e9 / fps)), intrinsics=K, pose=pose,
                    frame_id=f"robustmvd_{v.name}", seq=seq, extras={"view": str(v.relative_to(root))})


def read_slambook_rgbd(root: str | Path, fps: float = 1.0,
                       intrinsics: tuple[float, float, float, float] = SLAMBOOK_INTRINSICS) -> Iterator[Frame]:
    """Frames ``1..N`` with depth and camera-to-world poses."""
    root = Path(root)
    rows = read_stamped_lines(root / "pose.txt", 7)
    for seq, f in enumerate(rows):
        n = seq + 1
        image = read_rgb(root / "color" / f"{n}.png")
        try:
            pose = Pose.from_quaternion([float(v) for v in f[:3]], [float(v) for v in f[3:7]])
        except (GeometryError, ValueError) as exc:
            raise DatasetError(f"{root}/pose.txt line {n}: {exc}") from exc
        depth_path = root / "depth" / f"{n}.pgm"
        depth = read_depth_png(depth_path, 1000.0) if depth_path.is_file() else None
        K = CameraIntrinsics(*intrinsics, image.shape[1], image.shape[0])
        yield Frame(image=image, stamp_ns=int(round(seq * 1e9 / fps)), intrinsics=K, pose=pose, depth=depth,
                    frame_id="slambook_camera", seq=seq)
