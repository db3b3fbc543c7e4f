"""Helpers shared by the dataset readers: exact stamps, text lists, images, pose tracks."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from ...core.geometry import Pose
from ...core.pose_history import PoseHistory, PoseLookup

__all__ = [
    "DatasetError",
    "parse_stamp_ns",
    "format_stamp",
    "read_stamped_lines",
    "read_rgb",
    "read_depth_png",
    "pose_track",
    "lookup_pose",
    "nearest_index",
]


class DatasetError(ValueError):
    """A dataset folder that is missing files or has malformed content (message says which)."""


def parse_stamp_ns(text: str) -> int:
    """Decimal seconds (``'1305031102.175304'``) to int nanoseconds, without float rounding."""
    text = text.strip()
    try:
        if "e" in text.lower():
            return int(round(float(text) * 1e9))
        whole, _, frac = text.partition(".")
        if not frac.isdigit() and frac:
            raise ValueError(text)
        ns = abs(int(whole or "0")) * 1_000_000_000 + int((frac + "000000000")[:9])
        return -ns if whole.startswith("-") else ns
    except ValueError as exc:
        raise DatasetError(f"bad timestamp {text!r}") from exc


def format_stamp(stamp_ns: int) -> str:
    """Seconds with 9 decimals (exact inverse of :func:`parse_stamp_ns`)."""
    return f"{stamp_ns // 1_000_000_000}.{stamp_ns % 1_000_000_000:09d}"


def read_stamped_lines(path: Path, min_fields: int, sep: str | None = None) -> list[list[str]]:
    """Non-comment lines of a TUM/EuRoC text or CSV file split into fields (``#`` starts a comment)."""
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(sep)] if sep else line.split()
        if len(fields) < min_fields:
            raise DatasetError(f"{path}:{n}: expected at least {min_fields} fields, got {len(fields)}")
        rows.append(fields)
    return rows


def read_rgb(path: Path) -> np.ndarray:
    """8-bit image file as uint8 RGB (H, W, 3) or mono (H, W); 16-bit images are scaled to 8 bits."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"cannot read image {path}")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.dtype != np.uint8:
        raise DatasetError(f"{path}: unsupported image type {img.dtype}")
    if img.ndim == 3:
        if img.shape[2] == 1:
            return img[..., 0]
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return img


def read_depth_png(path: Path, scale: float) -> np.ndarray:
    """16-bit depth image (PNG/PGM) divided by ``scale`` (units per metre) -> float32 metres, 0 = invalid."""
    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None:
        raise DatasetError(f"cannot read depth image {path}")
    if d.dtype != np.uint16 or d.ndim != 2:
        raise DatasetError(f"{path}: depth must be single-channel 16-bit, got {d.dtype} {d.shape}")
    return d.astype(np.float32) / np.float32(scale)


def pose_track(stamps_ns: Iterable[int], poses: Iterable[Pose], max_extrapolation_ns: int = 50_000_000) -> PoseHistory:
    """Time-sorted pose history of a ground-truth file (duplicate stamps keep the first)."""
    pairs = sorted(zip(stamps_ns, poses), key=lambda sp: sp[0])
    hist = PoseHistory(capacity=max(2, len(pairs)), max_extrapolation_ns=max_extrapolation_ns)
    for s, p in pairs:
        hist.add(s, p)
    return hist


def lookup_pose(track: PoseHistory | None, stamp_ns: int) -> Pose | None:
    """Interpolated pose at ``stamp_ns``, or None outside the track's tolerance."""
    if track is None:
        return None
    found = track.lookup(stamp_ns, final=True)
    return None if isinstance(found, PoseLookup) else found


def nearest_index(sorted_stamps: np.ndarray, stamp_ns: int, max_diff_ns: int) -> int | None:
    """Index of the stamp nearest ``stamp_ns`` within ``max_diff_ns`` in an ascending array."""
    if sorted_stamps.size == 0:
        return None
    i = int(np.searchsorted(sorted_stamps, stamp_ns))
    candidates = [j for j in (i - 1, i) if 0 <= j < sorted_stamps.size]
    best = min(candidates, key=lambda j: abs(int(sorted_stamps[j]) - stamp_ns))
    return best if abs(int(sorted_stamps[best]) - stamp_ns) <= max_diff_ns else None
