"""Publish outputs in input order while some of them are still being restored.

Every accepted image gets a slot, in input order. Slots of images that need
no work are ready at once; a restoration target's slot is *pending* until the
worker resolves it or its deadline (arrival + latency budget) passes, when
it is resolved with its fallback (the original image). Ready slots at the
head are emitted in order, so a SLAM stack downstream sees increasing stamps.
The number of held slots is bounded: past ``max_pending`` the oldest pending
slot falls back. ROS-free, thread-safe; ``emit`` is called under the lock to
keep the order, so it must be quick (a publish).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable

from ..core.reasons import PassReason

__all__ = ["OutputSequencer"]


class _Slot:
    __slots__ = ("item", "deadline", "fallback")

    def __init__(self, item: Any, deadline: float | None, fallback: Callable[[str], Any] | None) -> None:
        self.item = item
        self.deadline = deadline
        self.fallback = fallback


class OutputSequencer:
    """In-order emission of items, some resolved later.

    ``fallback(reason)`` (given per pending slot) builds the item emitted when
    the slot is not resolved in time; ``reason`` is a :class:`~sirdiff_ros.core.reasons.PassReason`
    (``latency_budget``, ``output_full``, or what :meth:`flush` is given).
    """

    def __init__(self, emit: Callable[[Any], None], max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self._emit = emit
        self.max_pending = max_pending
        self._slots: OrderedDict[int, _Slot] = OrderedDict()
        self._lock = threading.RLock()
        self._last_seq = -1

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)

    def add_ready(self, seq: int, item: Any) -> None:
        with self._lock:
            self._append(seq, _Slot(item, None, None))
            self._drain()

    def add_pending(self, seq: int, deadline: float, fallback: Callable[[str], Any]) -> None:
        with self._lock:
            self._append(seq, _Slot(None, deadline, fallback))
            self._drain()

    def is_pending(self, seq: int) -> bool:
        """True while ``seq`` waits for :meth:`resolve` (not yet fallen back)."""
        with self._lock:
            slot = self._slots.get(seq)
            return slot is not None and slot.fallback is not None

    def resolve(self, seq: int, item: Any) -> bool:
        """Fill a pending slot; False when it already fell back (too late) or is unknown."""
        with self._lock:
            slot = self._slots.get(seq)
            if slot is None or slot.fallback is None:
                return False
            slot.item, slot.fallback = item, None
            self._drain()
            return True

    def expire(self, now: float) -> int:
        """Fall back every pending slot whose deadline passed; returns how many."""
        with self._lock:
            n = 0
            for slot in self._slots.values():
                if slot.fallback is not None and slot.deadline is not None and slot.deadline <= now:
                    self._fall_back(slot, PassReason.LATENCY_BUDGET)
                    n += 1
            self._drain()
            return n

    def flush(self, reason: PassReason = PassReason.SHUTDOWN) -> int:
        """Fall back all pending slots with ``reason`` and emit everything; returns how many fell back."""
        with self._lock:
            n = 0
            for slot in self._slots.values():
                if slot.fallback is not None:
                    self._fall_back(slot, reason)
                    n += 1
            self._drain()
            return n

    # -- internals (lock held) ------------------------------------------------------
    def _append(self, seq: int, slot: _Slot) -> None:
        if seq <= self._last_seq:
            raise ValueError(f"slots must be added in increasing order: {seq} after {self._last_seq}")
        self._last_seq = seq
        self._slots[seq] = slot
        while len(self._slots) > self.max_pending:
            oldest = next((s for s in self._slots.values() if s.fallback is not None), None)
            if oldest is None:
                break
            self._fall_back(oldest, PassReason.OUTPUT_FULL)
            self._drain()

    @staticmethod
    def _fall_back(slot: _Slot, reason: PassReason) -> None:
        fallback = slot.fallback
        if fallback is not None:
            slot.item, slot.fallback = fallback(reason), None

    def _drain(self) -> None:
        while self._slots:
            seq, slot = next(iter(self._slots.items()))
            if slot.fallback is not None:
                return
            del self._slots[seq]
            self._emit(slot.item)
