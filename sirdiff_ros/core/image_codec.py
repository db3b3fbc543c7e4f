"""Convert between ``sensor_msgs/Image`` fields and numpy arrays, with checks.

ROS-free: works on the message's fields, so rclpy messages, rosbags messages
and plain values all go through the same code. Every rejection raises
:class:`ImageDecodeError` with a short machine-readable ``kind`` (used as the
drop reason counted by the node) and a human-readable message.
"""

from __future__ import annotations

import array as array_
from typing import Any

import numpy as np

from .reasons import DropReason

__all__ = [
    "ImageDecodeError",
    "SUPPORTED_ENCODINGS",
    "decode_image",
    "decode_image_msg",
    "decode_compressed",
    "encode_image",
    "to_rgb8",
    "from_rgb8",
]

# encoding -> (numpy dtype, channels)
SUPPORTED_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "8UC3": (np.dtype(np.uint8), 3),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}


class ImageDecodeError(ValueError):
    """An image message that cannot be turned into an array."""

    def __init__(self, kind: DropReason, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def decode_image(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: Any,
    is_bigendian: bool = False,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Array view of an image message's data: (H, W) or (H, W, C), native byte order.

    Raises :class:`ImageDecodeError` with ``kind`` one of ``bad_encoding``,
    ``zero_size``, ``too_large``, ``step_mismatch``, ``size_mismatch``.
    """
    if encoding not in SUPPORTED_ENCODINGS:
        raise ImageDecodeError(DropReason.BAD_ENCODING, f"unsupported encoding {encoding!r}")
    dtype, channels = SUPPORTED_ENCODINGS[encoding]
    if height <= 0 or width <= 0:
        raise ImageDecodeError(DropReason.ZERO_SIZE, f"image has zero size ({width}x{height})")
    if max_pixels is not None and height * width > max_pixels:
        raise ImageDecodeError(DropReason.TOO_LARGE, f"image {width}x{height} exceeds the limit of {max_pixels} pixels")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageDecodeError(DropReason.STEP_MISMATCH, f"step {step} is smaller than a {encoding} row of width {width} ({row_bytes} bytes)")
    buf = np.frombuffer(memoryview(data).cast("B") if not isinstance(data, np.ndarray) else data.view(np.uint8), dtype=np.uint8)
    expected = step * height
    if buf.size != expected:
        raise ImageDecodeError(DropReason.SIZE_MISMATCH, f"data has {buf.size} bytes, expected step*height = {expected}")
    rows = buf.reshape(height, step)[:, :row_bytes]
    arr = np.ascontiguousarray(rows).view(dtype.newbyteorder(">" if is_bigendian else "<"))
    arr = arr.astype(dtype, copy=False)
    return arr.reshape(height, width, channels) if channels > 1 else arr.reshape(height, width)


def decode_image_msg(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """:func:`decode_image` on any object with ``sensor_msgs/Image`` fields."""
    return decode_image(
        msg.encoding, int(msg.height), int(msg.width), int(msg.step), msg.data, bool(msg.is_bigendian), max_pixels
    )


def decode_compressed(data: Any, fmt: str = "", max_pixels: int | None = None) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` payload (JPEG or PNG) as the core's uint8 layout.

    ``fmt`` (the message's ``format``, e.g. ``"rgb8; jpeg compressed bgr8"``)
    is only used in messages: the codec is recognised from the data itself.
    Colour comes back RGB (H, W, 3), grey (H, W); 16-bit PNGs are scaled to
    8 bits (>> 8). Raises :class:`ImageDecodeError` (``bad_compressed``,
    ``too_large``).
    """
    import cv2  # here, not at module level: the codec's raw path stays numpy-only

    buf = np.frombuffer(memoryview(data).cast("B") if not isinstance(data, np.ndarray) else data.view(np.uint8), np.uint8)
    img: np.ndarray | None = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise ImageDecodeError(DropReason.BAD_COMPRESSED, f"cannot decode a {buf.size}-byte compressed image ({fmt or 'no format'})")
    if max_pixels is not None and img.shape[0] * img.shape[1] > max_pixels:
        raise ImageDecodeError(DropReason.TOO_LARGE, f"image {img.shape[1]}x{img.shape[0]} exceeds the limit of {max_pixels} pixels")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return img if img.dtype == np.uint8 else np.right_shift(img, 8).astype(np.uint8)


def to_rgb8(array: np.ndarray, encoding: str) -> np.ndarray:
    """Colour/mono image as the core's uint8 layout: (H, W, 3) RGB or (H, W) mono.

    16-bit mono is scaled to 8 bits by its own range (>> 8); float images are
    rejected (they are depth, not camera images).
    """
    if encoding in ("rgb8", "8UC3"):
        return array
    if encoding == "bgr8":
        return np.ascontiguousarray(array[..., ::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(array[..., :3])
    if encoding == "bgra8":
        return np.ascontiguousarray(array[..., 2::-1])
    if encoding in ("mono8", "8UC1"):
        return array
    if encoding in ("mono16", "16UC1"):
        return (array >> 8).astype(np.uint8)
    raise ImageDecodeError(DropReason.BAD_ENCODING, f"encoding {encoding!r} is not a camera image encoding")


def from_rgb8(image: np.ndarray, encoding: str) -> np.ndarray:
    """Inverse of :func:`to_rgb8` for 8-bit encodings (restored image back to the input's encoding)."""
    if encoding in ("rgb8", "8UC3", "mono8", "8UC1"):
        return image
    if encoding == "bgr8":
        return np.ascontiguousarray(image[..., ::-1])
    if encoding in ("rgba8", "bgra8"):
        rgb = image if encoding == "rgba8" else image[..., ::-1]
        alpha = np.full(image.shape[:2] + (1,), 255, np.uint8)
        return np.ascontiguousarray(np.concatenate([rgb, alpha], axis=2))
    if encoding in ("mono16", "16UC1"):
        return image.astype(np.uint16) << 8
    raise ImageDecodeError(DropReason.BAD_ENCODING, f"cannot encode to {encoding!r}")


def encode_image(array: np.ndarray, encoding: str) -> tuple[int, array_.array]:
    """``(step, data)`` for an array in ``encoding`` (little-endian, packed rows).

    ``data`` is an ``array.array('B')``: what rclpy keeps for a ``uint8[]``
    field as is, so assigning it to a message copies nothing more (bytes would
    be copied again); numpy reads it without a copy (``np.frombuffer``)."""
    if encoding not in SUPPORTED_ENCODINGS:
        raise ImageDecodeError(DropReason.BAD_ENCODING, f"unsupported encoding {encoding!r}")
    dtype, channels = SUPPORTED_ENCODINGS[encoding]
    arr = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<"))
    got = 1 if arr.ndim == 2 else arr.shape[2]
    if got != channels:
        raise ImageDecodeError(DropReason.BAD_ENCODING, f"{encoding} needs {channels} channels, array has {got}")
    data = array_.array("B")
    data.frombytes(arr.data.cast("B"))  # the one copy
    return arr.shape[1] * channels * dtype.itemsize, data
