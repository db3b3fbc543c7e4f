"""TartanAir trajectories (``image_left`` + ``pose_left.txt`` + optional ``depth_left``).

Supported subset: ``image_left/NNNNNN_left.png``, ``pose_left.txt`` (one
``tx ty tz qx qy qz qw`` line per image, the camera body pose in TartanAir's
NED convention: body x forward, y right, z down), ``depth_left/NNNNNN_left_depth.npy``
(float32 metric z-depth). Images are rendered with the fixed pinhole
``fx = fy = 320, cx = 320, cy = 240`` (640x480). The body pose is turned
into the optical camera pose by ``T_world_cam = T_world_body @ T_body_optical``
(optical z = body x, x = body y, y = body z); the world frame stays NED.
TartanAir has no timestamps: frame ``i`` is stamped ``i / fps``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ...core.frame import Frame
from ...core.geometry import CameraIntrinsics, GeometryError, Pose
from .common import DatasetError, read_rgb, read_stamped_lines

__all__ = ["read_tartanair", "TARTANAIR_INTRINSICS", "T_BODY_OPTICAL_NED"]

TARTANAIR_INTRINSICS = CameraIntrinsics(320.0, 320.0, 320.0, 240.0, 640, 480)
# Columns: optical x (right), y (down), z (forward) expressed in the NED body frame.
T_BODY_OPTICAL_NED = Pose(np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), np.zeros(3))


def read_tartanair(root: str | Path, camera: str = "left", fps: float = 10.0,
                   intrinsics: CameraIntrinsics = TARTANAIR_INTRINSICS) -> Iterator[Frame]:
    """Frames of one TartanAir trajectory folder (``P000`` style)."""
    root = Path(root)
    images = sorted((root / f"image_{camera}").glob(f"*_{camera}.png"))
    if not images:
        raise DatasetError(f"no image_{camera}/*_{camera}.png in {root}")
    rows = read_stamped_lines(root / f"pose_{camera}.txt", 7)
    if len(rows) != len(images):
        raise DatasetError(f"{root}: {len(images)} images but {len(rows)} poses in pose_{camera}.txt")
    for seq, (img_path, f) in enumerate(zip(images, rows)):
        try:
            body = Pose.from_quaternion([float(v) for v in f[:3]], [float(v) for v in f[3:7]])
        except (GeometryError, ValueError) as exc:
            raise DatasetError(f"{root}/pose_{camera}.txt line {seq + 1}: {exc}") from exc
        depth_path = root / f"depth_{camera}" / img_path.name.replace(".png", "_depth.npy")
        depth = np.load(depth_path).astype(np.float32) if depth_path.is_file() else None
        yield Frame(image=read_rgb(img_path), stamp_ns=int(round(seq * 1e9 / fps)), intrinsics=intrinsics,
                    pose=body @ T_BODY_OPTICAL_NED, depth=depth, frame_id=f"tartanair_{camera}", seq=seq)
