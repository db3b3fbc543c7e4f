"""The frame record shared by readers, the node, the evaluator and restorers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .geometry import CameraIntrinsics, Pose

__all__ = ["Frame", "FrameError"]


class FrameError(ValueError):
    """A frame whose image, depth and intrinsics do not agree."""


@dataclass
class Frame:
    """One camera image with everything known about it.

    ``image`` is ``uint8``, ``(H, W, 3)`` RGB or ``(H, W)`` mono.
    ``depth`` (optional) is ``float32`` metric z-depth ``(H, W)``; 0 or NaN
    marks invalid pixels. ``pose`` is ``T_world_cam`` (see
    :mod:`sirdiff_ros.core.geometry`); ``None`` when unknown.
    ``stamp_ns`` is the image stamp in integer nanoseconds.
    ``seq`` is the input order index given by whoever created the frame.
    ``extras`` carries reader-specific data (e.g. ground-truth sharp image
    under ``"sharp"``) without widening this record.
    """

    image: np.ndarray
    stamp_ns: int
    intrinsics: CameraIntrinsics
    pose: Pose | None = None
    depth: np.ndarray | None = None
    frame_id: str = "camera"
    seq: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
            raise FrameError(f"image must be a uint8 array, got {getattr(img, 'dtype', type(img))}")
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
            raise FrameError(f"image must be (H, W) or (H, W, 3), got {img.shape}")
        h, w = img.shape[:2]
        if h == 0 or w == 0:
            raise FrameError("image is empty")
        if (w, h) != (self.intrinsics.width, self.intrinsics.height):
            raise FrameError(
                f"image is {w}x{h} but intrinsics are for {self.intrinsics.width}x{self.intrinsics.height}"
            )
        if self.depth is not None and self.depth.shape != (h, w):
            raise FrameError(f"depth shape {self.depth.shape} does not match image {(h, w)}")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays of this frame (for memory bounds)."""
        n = self.image.nbytes + (self.depth.nbytes if self.depth is not None else 0)
        return n + sum(v.nbytes for v in self.extras.values() if isinstance(v, np.ndarray))
