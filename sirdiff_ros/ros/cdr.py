"""A reader of plain-CDR bytes, for the messages the node takes serialized
(``sensor_msgs/Image``, ``sensor_msgs/CameraInfo``: :mod:`sirdiff_ros.ros.convert`).

A raw subscription hands the node the bytes DDS delivered. Reading the few
fields it needs with ``struct`` costs a few microseconds and leaves the
pixels where they are; a general deserializer builds every field as an object
(rosbags' took ten times as long per 640x480 image and copied the pixels).

Plain CDR (XCDR1), the encoding of ROS 2's DDS middlewares: 4 bytes of
encapsulation (the byte order in the second one), then the fields in
declaration order, each aligned to its own size counted from the end of the
encapsulation; a string is a uint32 length (counting its terminating NUL) and
the bytes; a sequence a uint32 count and the elements. The whole may be
padded to a multiple of 4 bytes. Anything else raises
ValueError, ``struct.error`` or IndexError (:data:`READ_ERRORS`).
"""

from __future__ import annotations

import struct

__all__ = ["READ_ERRORS", "CdrReader"]

READ_ERRORS = (ValueError, struct.error, IndexError)

# The second encapsulation byte of plain CDR: big or little endian.
_BYTE_ORDER = {0: ">", 1: "<"}


class CdrReader:
    """Reads plain-CDR fields of ``buf`` in order (see the module docstring)."""

    __slots__ = ("buf", "pos", "_order")

    def __init__(self, buf: bytes) -> None:
        if len(buf) < 4 or buf[0] != 0 or buf[1] not in _BYTE_ORDER:
            raise ValueError(f"encapsulation {bytes(buf[:2]).hex()} is not plain CDR")
        self.buf, self.pos, self._order = buf, 4, _BYTE_ORDER[buf[1]]

    def _read(self, code: str, size: int, count: int) -> tuple:
        self.pos += -(self.pos - 4) % size
        values = struct.unpack_from(f"{self._order}{count}{code}", self.buf, self.pos)
        self.pos += size * count
        return values

    def uint32(self, count: int = 1) -> tuple[int, ...]:
        return self._read("I", 4, count)

    def float64(self, count: int) -> tuple[float, ...]:
        return self._read("d", 8, count)

    def uint8(self) -> int:
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def string(self) -> str:
        (n,) = self.uint32()
        end = self.pos + n
        if n == 0 or end > len(self.buf) or self.buf[end - 1] != 0:
            raise ValueError(f"no NUL-terminated string of length {n} at offset {self.pos - 4}")
        text = bytes(self.buf[self.pos : end - 1]).decode()
        self.pos = end
        return text

    def stamp_and_frame_id(self) -> tuple[int, int, str]:
        """A ``std_msgs/Header``: (sec, nanosec, frame_id)."""
        (sec,) = self._read("i", 4, 1)
        (nanosec,) = self.uint32()
        return sec, nanosec, self.string()

    def byte_sequence(self) -> tuple[int, int]:
        """A ``uint8[]``: where its bytes lie in ``buf`` (offset, length); they are not copied."""
        (n,) = self.uint32()
        start = self.pos
        if start + n > len(self.buf):
            raise ValueError(f"a sequence of {n} bytes at offset {start} runs past the end ({len(self.buf)} bytes)")
        self.pos += n
        return start, n

    def end(self) -> None:
        """Every byte was read, but for the padding DDS may add to make the length a multiple
        of 4: the message has no field more or less than the reader expects."""
        left = len(self.buf) - self.pos
        if left != 0 and left != -self.pos % 4:
            raise ValueError(f"{left} bytes left after the last field")
