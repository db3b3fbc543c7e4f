"""Sequential scan of an MCAP file that stops cleanly where the file is cut off.

rosbags opens an MCAP file from its footer and summary, so a recording cut
short (crash, full disk, copy in progress) cannot be opened at all. The
records before the cut are still valid; this scanner walks them from the
start (MCAP spec: magic, then ``opcode u8, length u64, body`` records;
chunks hold the same records, optionally lz4/zstd-compressed) and yields
every complete message, then raises :class:`McapTruncatedError`.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Iterator, NamedTuple

__all__ = ["McapTruncatedError", "McapMessage", "scan_mcap", "mcap_channels"]

MAGIC = b"\x89MCAP0\r\n"
_OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK = 0x02, 0x03, 0x04, 0x05, 0x06


class McapTruncatedError(RuntimeError):
    """The file ends inside a record (or is not MCAP at all)."""


class McapMessage(NamedTuple):
    topic: str
    msgtype: str
    log_time_ns: int
    data: bytes


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", buf, pos)
    return buf[pos + 4 : pos + 4 + n].decode(), pos + 4 + n


def _decompress(data: bytes, compression: str) -> bytes:
    if compression == "":
        return data
    if compression == "zstd":
        try:
            from compression import zstd  # Python >= 3.14
        except ImportError:
            from backports import zstd  # type: ignore[no-redef]  # rosbags' dependency
        return zstd.decompress(data)
    if compression == "lz4":
        from lz4.frame import decompress

        return decompress(data)
    raise McapTruncatedError(f"unsupported MCAP chunk compression {compression!r}")


def _buffer_records(buf: bytes) -> Iterator[tuple[int, bytes]]:
    """(opcode, body) of each record of a decompressed chunk (complete by construction)."""
    pos = 0
    while pos < len(buf):
        op, n = struct.unpack_from("<BQ", buf, pos)
        yield op, buf[pos + 9 : pos + 9 + n]
        pos += 9 + n


def _stream_records(bio: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(opcode, body) of each complete top-level record up to the footer; raises at a cut."""
    while True:
        head = bio.read(9)
        if not head:
            raise McapTruncatedError("file ends without an MCAP footer")
        if len(head) < 9:
            raise McapTruncatedError("file ends inside a record header")
        op, n = struct.unpack("<BQ", head)
        body = bio.read(n)
        if len(body) < n:
            raise McapTruncatedError(f"file ends inside a record (opcode 0x{op:02x}, {len(body)} of {n} bytes)")
        if op == _OP_FOOTER:
            return
        yield op, body


def _flat_records(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """Every complete record of the file, with chunk contents expanded in place."""
    with Path(path).open("rb") as bio:
        if bio.read(8) != MAGIC:
            raise McapTruncatedError(f"{path} is not an MCAP file (bad magic)")
        for op, body in _stream_records(bio):
            if op != _OP_CHUNK:
                yield op, body
                continue
            # Chunk header: start/end time, uncompressed size (u64 each), crc (u32), then the compression name.
            compression, pos = _string(body, 28)
            (csize,) = struct.unpack_from("<Q", body, pos)
            yield from _buffer_records(_decompress(body[pos + 8 : pos + 8 + csize], compression))


def _scan(path: str | Path) -> Iterator[tuple[int, str, str, int, bytes]]:
    """``(opcode, topic, msgtype, log_time_ns, data)`` for channel declarations and messages."""
    schemas: dict[int, str] = {}
    channels: dict[int, tuple[str, str]] = {}
    for op, body in _flat_records(path):
        if op == _OP_SCHEMA:
            (sid,) = struct.unpack_from("<H", body)
            schemas[sid] = _string(body, 2)[0]
        elif op == _OP_CHANNEL:
            cid, sid = struct.unpack_from("<HH", body)
            channels[cid] = (_string(body, 4)[0], schemas.get(sid, ""))
            yield op, *channels[cid], 0, b""
        elif op == _OP_MESSAGE:
            cid, _seq, log_time = struct.unpack_from("<HIQ", body)
            topic, msgtype = channels.get(cid, ("", ""))
            if topic:
                yield op, topic, msgtype, log_time, body[22:]


def scan_mcap(path: str | Path, topics: set[str] | None = None) -> Iterator[McapMessage]:
    """Complete messages of ``path`` in file order (only ``topics`` when given).

    Raises :class:`McapTruncatedError` after the last complete record when the file is cut short.
    """
    for op, topic, msgtype, log_time, data in _scan(path):
        if op == _OP_MESSAGE and (topics is None or topic in topics):
            yield McapMessage(topic, msgtype, log_time, data)


def mcap_channels(path: str | Path) -> dict[str, str]:
    """``{topic: msgtype}`` of the channels declared in the readable part of ``path``."""
    out: dict[str, str] = {}
    try:
        for op, topic, msgtype, _, _ in _scan(path):
            if op == _OP_CHANNEL:
                out[topic] = msgtype
    except McapTruncatedError:
        pass
    return out
