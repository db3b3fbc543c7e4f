"""Counters, rates and latency percentiles of the restore node. ROS-free, thread-safe.

The accounting rule the node guarantees: every received image is either
published or dropped with a reason, or still in flight:
``received == published + dropped_total + in_flight``.
Messages other than images that are rejected (poses, camera_info, depth) are
counted separately under ``rejected`` by kind.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from ..core.reasons import Level, PassReason

__all__ = ["NodeStats", "StatsSnapshot"]


@dataclass
class StatsSnapshot:
    received: int
    published: int
    restored: int
    passed_through: int
    keyframes: int
    targets: int
    dropped: dict[str, int]
    passthrough_reasons: dict[str, int]
    rejected: dict[str, int]
    input_rate_hz: float
    output_rate_hz: float
    latency_ms: tuple[float, float, float]  # restore call p50/p90/p99
    end_to_end_ms: tuple[float, float, float]  # arrival -> publication of targets
    last_error: str
    level: Level
    message: str
    time_jumps: int = 0
    extra: dict[str, str] = field(default_factory=dict)
    pose_sources: dict[str, int] = field(default_factory=dict)  # images admitted per pose source
    depth_images: dict[str, int] = field(default_factory=dict)  # with depth_topic: images admitted with / without one
    fewer_views: int = 0  # targets sent to the backend with num_views_under_load views

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class _Rate:
    """Events per second over a sliding window."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._t: deque[float] = deque()

    def tick(self, now: float) -> None:
        self._t.append(now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._t and now - self._t[0] > self.window_s:
            self._t.popleft()

    def hz(self, now: float) -> float:
        self._trim(now)
        if len(self._t) < 2:
            return 0.0
        span = max(now - self._t[0], self._t[-1] - self._t[0])
        return (len(self._t) - 1) / span if span > 0 else 0.0


def _percentiles(values: deque[float]) -> tuple[float, float, float]:
    if not values:
        return (float("nan"),) * 3
    p = np.percentile(np.fromiter(values, float), [50, 90, 99])
    return float(p[0]), float(p[1]), float(p[2])


class NodeStats:
    def __init__(self, latency_window: int = 500) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.published = 0
        self.restored = 0
        self.passed_through = 0
        self.keyframes = 0
        self.targets = 0
        self.dropped: Counter[str] = Counter()
        self.passthrough_reasons: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self._in_rate = _Rate()
        self._out_rate = _Rate()
        self._latency: deque[float] = deque(maxlen=latency_window)
        self._e2e: deque[float] = deque(maxlen=latency_window)
        self.last_error = ""
        self.time_jumps = 0
        self.pose_sources: Counter[str] = Counter()
        self.depth_images: Counter[str] = Counter()
        self.fewer_views = 0
        self._backend_failing = False
        # Problems since the previous snapshot decide WARN.
        self._drops_at_snapshot = 0
        self._passthrough_at_snapshot: Counter[str] = Counter()

    # -- events ---------------------------------------------------------------
    def on_received(self) -> None:
        with self._lock:
            self.received += 1
            self._in_rate.tick(time.monotonic())

    def on_published(self) -> None:
        with self._lock:
            self.published += 1
            self._out_rate.tick(time.monotonic())

    def on_dropped(self, reason: str) -> None:
        with self._lock:
            self.dropped[reason] += 1

    def on_rejected(self, kind: str) -> None:
        with self._lock:
            self.rejected[kind] += 1

    def on_time_jump(self) -> None:
        with self._lock:
            self.time_jumps += 1

    def on_pose_source(self, source: str) -> None:
        """An image was admitted with a pose from ``source`` (pose_topic, fallback) or none."""
        with self._lock:
            self.pose_sources[source] += 1

    def on_depth(self, attached: bool) -> None:
        """An image was admitted with its depth image attached, or without one."""
        with self._lock:
            self.depth_images["attached" if attached else "missing"] += 1

    def on_decision(self, is_keyframe: bool, is_target: bool) -> None:
        with self._lock:
            self.keyframes += int(is_keyframe)
            self.targets += int(is_target)

    def on_target_done(self, restored: bool, reason: str, end_to_end_ms: float | None) -> None:
        """A restoration target was published (restored or as the original, with ``reason``)."""
        with self._lock:
            if restored:
                self.restored += 1
            else:
                self.passed_through += 1
                self.passthrough_reasons[reason or "unknown"] += 1
            if end_to_end_ms is not None:
                self._e2e.append(end_to_end_ms)

    def on_fewer_views(self) -> None:
        """A target goes to the backend with fewer views than num_views (other targets wait)."""
        with self._lock:
            self.fewer_views += 1

    def on_restore_call(self, latency_ms: float, error: BaseException | None) -> None:
        """The backend returned (``error`` None) or failed."""
        with self._lock:
            self._latency.append(latency_ms)
            if error is None:
                self._backend_failing = False
            else:
                self._backend_failing = True
                self.last_error = f"{type(error).__name__}: {error}"[:500]

    # -- reporting ---------------------------------------------------------------
    def snapshot(self, extra_problem: str = "") -> StatsSnapshot:
        """Current values; the level is ERROR while the backend fails, WARN if
        images were dropped or targets passed through for lack of capacity since the
        previous snapshot (or ``extra_problem``), else OK."""
        now = time.monotonic()
        with self._lock:
            dropped_total = sum(self.dropped.values())
            new_drops = dropped_total - self._drops_at_snapshot
            capacity = {k: v - self._passthrough_at_snapshot[k] for k, v in self.passthrough_reasons.items()}
            overload = sum(v for k, v in capacity.items() if k in PassReason.overload())
            self._drops_at_snapshot = dropped_total
            self._passthrough_at_snapshot = Counter(self.passthrough_reasons)
            if self._backend_failing:
                level, msg = Level.ERROR, f"backend failing, publishing originals: {self.last_error}"
            elif new_drops or overload or extra_problem:
                parts = []
                if new_drops:
                    parts.append(f"{new_drops} images dropped")
                if overload:
                    parts.append(f"{overload} targets passed through (overload)")
                if extra_problem:
                    parts.append(extra_problem)
                level, msg = Level.WARN, "; ".join(parts)
            else:
                level, msg = Level.OK, "ok"
            return StatsSnapshot(
                received=self.received,
                published=self.published,
                restored=self.restored,
                passed_through=self.passed_through,
                keyframes=self.keyframes,
                targets=self.targets,
                dropped=dict(self.dropped),
                passthrough_reasons=dict(self.passthrough_reasons),
                rejected=dict(self.rejected),
                input_rate_hz=self._in_rate.hz(now),
                output_rate_hz=self._out_rate.hz(now),
                latency_ms=_percentiles(self._latency),
                end_to_end_ms=_percentiles(self._e2e),
                last_error=self.last_error if self._backend_failing else "",
                level=level,
                message=msg,
                time_jumps=self.time_jumps,
                pose_sources=dict(self.pose_sources),
                depth_images=dict(self.depth_images),
                fewer_views=self.fewer_views,
            )
