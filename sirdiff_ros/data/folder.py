"""Write frames as a TUM RGB-D-style folder with ground truth (``sirdiff-synth`` output).

Layout (read back by :func:`sirdiff_ros.data.readers.read_synth_folder`, and
by any TUM RGB-D tool for the rgb/depth/groundtruth part)::

    OUT/rgb/<t>.png        camera (blurred) image, 8-bit RGB
    OUT/sharp/<t>.png      ground-truth sharp image at mid-exposure
    OUT/depth/<t>.png      16-bit depth, millimetres (depth_scale 1000 per metre), 0 = invalid
    OUT/rgb.txt, sharp.txt, depth.txt     "timestamp filename" (TUM lists)
    OUT/groundtruth.txt    "timestamp tx ty tz qx qy qz qw" (T_world_cam, mid-exposure)
    OUT/camera.json        intrinsics, depth_scale, frame_id, exposure_s, subframes, generator settings

``<t>`` and the timestamps are seconds with 9 decimals (exact nanoseconds).
Depth is stored in mm (not TUM's 1/5000 m) so rooms up to 65 m fit; the
scale is in ``camera.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from ..core.frame import Frame
from .readers.common import format_stamp
from .readers.tum import SYNTH_META_FILE

__all__ = ["SynthFolderWriter", "DEPTH_SCALE"]

DEPTH_SCALE = 1000.0  # depth PNG units per metre


class SynthFolderWriter:
    """Context manager writing frames one at a time into folder ``root`` (created; must be empty)."""

    def __init__(self, root: str | Path, metadata: dict[str, Any] | None = None) -> None:
        self.root = Path(root)
        if self.root.exists() and any(self.root.iterdir()):
            raise FileExistsError(f"output folder {self.root} is not empty")
        self.metadata = dict(metadata or {})
        self.count = 0
        self._lists: dict[str, TextIO] = {}
        self._meta_written = False

    def __enter__(self) -> SynthFolderWriter:
        for sub in ("rgb", "sharp", "depth"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for name in ("rgb", "sharp", "depth", "groundtruth"):
            f = (self.root / f"{name}.txt").open("w")
            header = "timestamp tx ty tz qx qy qz qw" if name == "groundtruth" else "timestamp filename"
            f.write(f"# {name} written by sirdiff-synth\n# {header}\n")
            self._lists[name] = f
        return self

    def __exit__(self, *exc: object) -> None:
        for f in self._lists.values():
            f.close()

    def _write_meta(self, frame: Frame) -> None:
        K = frame.intrinsics
        meta = {
            "intrinsics": {"fx": K.fx, "fy": K.fy, "cx": K.cx, "cy": K.cy, "width": K.width, "height": K.height},
            "depth_scale": DEPTH_SCALE,
            "frame_id": frame.frame_id,
            "exposure_s": frame.extras.get("exposure_s"),
            "subframes": frame.extras.get("subframes"),
            **self.metadata,
        }
        (self.root / SYNTH_META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        self._meta_written = True

    def _image(self, sub: str, name: str, image: np.ndarray) -> None:
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
        if not cv2.imwrite(str(self.root / sub / name), bgr):
            raise OSError(f"cannot write {self.root / sub / name}")
        self._lists[sub].write(f"{name[:-4]} {sub}/{name}\n")

    def write(self, frame: Frame) -> None:
        """Write one frame (image, sharp ground truth, depth, pose: whichever it has)."""
        if not self._meta_written:
            self._write_meta(frame)
        t = format_stamp(frame.stamp_ns)
        self._image("rgb", f"{t}.png", frame.image)
        if "sharp" in frame.extras:
            self._image("sharp", f"{t}.png", frame.extras["sharp"])
        if frame.depth is not None:
            d = np.nan_to_num(frame.depth, nan=0.0) * DEPTH_SCALE
            depth_mm = np.clip(np.round(d), 0, 65535).astype(np.uint16)
            if not cv2.imwrite(str(self.root / "depth" / f"{t}.png"), depth_mm):
                raise OSError(f"cannot write depth for {t}")
            self._lists["depth"].write(f"{t} depth/{t}.png\n")
        if frame.pose is not None:
            p, q = frame.pose.translation, frame.pose.quaternion
            self._lists["groundtruth"].write(f"{t} " + " ".join(f"{v:.9f}" for v in (*p, *q)) + "\n")
        self.count += 1
