"""Approximate-time association of messages from several topics.

``message_filters.ApproximateTimeSynchronizer`` is not installable outside a
ROS distribution, so this is an equivalent with the same two knobs:
``queue_size`` (messages kept per input) and ``slop`` (the largest stamp
spread, in nanoseconds here, of a matched set). Unlike message_filters it
reports every message it gives up on (queue overflow or age), so the node
can count each lost image with a reason instead of losing it silently.

ROS-free: messages are opaque objects keyed by integer-nanosecond stamps.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["ApproxTimeSync", "Evicted", "nearest_within"]


@dataclass(frozen=True)
class Evicted:
    """A message that left the synchronizer unmatched."""

    input_index: int
    stamp_ns: int
    msg: Any
    why: str  # "overflow" | "timeout" | "flush"


def nearest_within(stamps: Sequence[int], stamp_ns: int, slop_ns: int) -> int | None:
    """Index of the stamp closest to ``stamp_ns`` if within ``slop_ns``, else None."""
    best, best_d = None, slop_ns + 1
    for i, s in enumerate(stamps):
        d = abs(s - stamp_ns)
        if d < best_d:
            best, best_d = i, d
    return best


class ApproxTimeSync:
    """Match one message from each of ``n_inputs`` inputs with stamps within ``slop_ns``.

    ``add(i, stamp_ns, msg, now_s)`` returns the matched sets it completed
    (each a list of messages in input order) and the messages it evicted.
    A new message is matched with the closest-stamped message of every other
    input; a set is complete when its stamp spread is <= ``slop_ns``.
    Thread-safe.
    """

    def __init__(self, n_inputs: int, queue_size: int, slop_ns: int, timeout_s: float | None = None) -> None:
        if n_inputs < 2:
            raise ValueError(f"need at least 2 inputs to associate, got {n_inputs}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if slop_ns < 0:
            raise ValueError(f"slop must be >= 0, got {slop_ns} ns")
        self.queue_size = queue_size
        self.slop_ns = slop_ns
        self.timeout_s = timeout_s
        # Per input: list of (stamp_ns, arrival_s, msg) in arrival order.
        self._queues: list[list[tuple[int, float, Any]]] = [[] for _ in range(n_inputs)]
        self._lock = threading.Lock()

    def pending(self, input_index: int) -> int:
        with self._lock:
            return len(self._queues[input_index])

    def add(self, input_index: int, stamp_ns: int, msg: Any, now_s: float) -> tuple[list[list[Any]], list[Evicted]]:
        with self._lock:
            evicted: list[Evicted] = []
            q = self._queues[input_index]
            q.append((stamp_ns, now_s, msg))
            if len(q) > self.queue_size:
                s, _, m = q.pop(0)
                evicted.append(Evicted(input_index, s, m, "overflow"))
            matched = self._match(input_index, stamp_ns)
            return ([matched] if matched is not None else []), evicted

    def expire(self, now_s: float) -> list[Evicted]:
        """Evict messages that waited longer than ``timeout_s`` for partners."""
        if self.timeout_s is None:
            return []
        out: list[Evicted] = []
        with self._lock:
            for i, q in enumerate(self._queues):
                keep = []
                for s, t, m in q:
                    if now_s - t > self.timeout_s:
                        out.append(Evicted(i, s, m, "timeout"))
                    else:
                        keep.append((s, t, m))
                q[:] = keep
        return out

    def flush(self) -> list[Evicted]:
        """Evict everything (shutdown)."""
        with self._lock:
            out = [Evicted(i, s, m, "flush") for i, q in enumerate(self._queues) for s, _, m in q]
            for q in self._queues:
                q.clear()
        return out

    def _match(self, pivot: int, stamp_ns: int) -> list[Any] | None:
        picks: list[int] = []
        for i, q in enumerate(self._queues):
            if i == pivot:
                picks.append(len(q) - 1)
                continue
            j = nearest_within([s for s, _, _ in q], stamp_ns, self.slop_ns)
            if j is None:
                return None
            picks.append(j)
        stamps = [self._queues[i][j][0] for i, j in enumerate(picks)]
        if max(stamps) - min(stamps) > self.slop_ns:
            return None
        return [self._queues[i].pop(j)[2] for i, j in enumerate(picks)]
