"""Camera poses from the SLAM stack, looked up at image stamps.

A SLAM stack publishes the pose of an image *after* it processed the image,
at its own rate; the node keeps a bounded, time-ordered history and
interpolates (SLERP + linear) at the image stamp, extrapolating at most
``max_extrapolation_ns`` past either end with the constant-velocity model of
:func:`sirdiff_ros.core.geometry.interpolate_pose`.
ROS-free: stamps are integer nanoseconds.

When the SLAM stack loses track it publishes no pose, and an image past the
extrapolation tolerance has none. :func:`bridged_pose` continues the SLAM
trajectory with a second source's *motion* (wheel or visual-inertial
odometry of the same camera, in its own world frame): the fallback's motion
since SLAM's newest pose, scaled to SLAM's units (a monocular map's scale is
arbitrary), composed onto that pose.
"""

from __future__ import annotations

import bisect
import threading
from enum import Enum

import numpy as np

from .geometry import Pose, interpolate_pose

__all__ = ["PoseHistory", "PoseLookup", "bridged_pose"]


class PoseLookup(Enum):
    """Outcome of a lookup that found no pose."""

    PENDING = "pending"  # newer poses may still arrive that cover the stamp
    NO_POSE = "no_pose"  # nothing usable: empty history or beyond the tolerance


class PoseHistory:
    """Bounded history of ``(stamp_ns, Pose)``, strictly increasing in stamp. Thread-safe."""

    def __init__(self, capacity: int, max_extrapolation_ns: int) -> None:
        if capacity < 2:
            raise ValueError(f"pose history capacity must be >= 2, got {capacity}")
        if max_extrapolation_ns < 0:
            raise ValueError(f"max extrapolation must be >= 0 ns, got {max_extrapolation_ns}")
        self.capacity = capacity
        self.max_extrapolation_ns = max_extrapolation_ns
        self._stamps: list[int] = []
        self._poses: list[Pose] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._stamps)

    @property
    def latest_stamp_ns(self) -> int | None:
        with self._lock:
            return self._stamps[-1] if self._stamps else None

    def clear(self) -> None:
        """Forget every pose (the stamps jumped back: a new time line starts)."""
        with self._lock:
            self._stamps.clear()
            self._poses.clear()

    def newest(self, count: int) -> list[tuple[int, Pose]]:
        """The newest ``count`` entries ``(stamp_ns, pose)``, oldest first."""
        with self._lock:
            return list(zip(self._stamps[-count:], self._poses[-count:])) if count > 0 else []

    def add(self, stamp_ns: int, pose: Pose) -> bool:
        """Append a pose; returns False (and keeps nothing) if ``stamp_ns`` is not newer than the last."""
        with self._lock:
            if self._stamps and stamp_ns <= self._stamps[-1]:
                return False
            self._stamps.append(stamp_ns)
            self._poses.append(pose)
            if len(self._stamps) > self.capacity:
                del self._stamps[0], self._poses[0]
            return True

    def lookup(self, stamp_ns: int, final: bool = False) -> Pose | PoseLookup:
        """Pose at ``stamp_ns``.

        Inside the history: interpolated. Past the newest pose: PENDING unless
        ``final`` (the caller will not wait longer), then extrapolated within
        the tolerance or NO_POSE. Before the oldest pose: extrapolated within
        the tolerance, else NO_POSE.
        """
        with self._lock:
            stamps, poses = self._stamps, self._poses
            if not stamps:
                return PoseLookup.NO_POSE if final else PoseLookup.PENDING
            i = bisect.bisect_left(stamps, stamp_ns)
            if i < len(stamps) and stamps[i] == stamp_ns:
                return poses[i]
            if 0 < i < len(stamps):
                return interpolate_pose(stamps[i - 1], poses[i - 1], stamps[i], poses[i], stamp_ns)
            if i == 0:
                if stamps[0] - stamp_ns > self.max_extrapolation_ns:
                    return PoseLookup.NO_POSE
                a, b = (0, 1) if len(stamps) > 1 else (0, 0)
            else:
                if not final:
                    return PoseLookup.PENDING
                if stamp_ns - stamps[-1] > self.max_extrapolation_ns:
                    return PoseLookup.NO_POSE
                a, b = (len(stamps) - 2, len(stamps) - 1) if len(stamps) > 1 else (0, 0)
            return interpolate_pose(stamps[a], poses[a], stamps[b], poses[b], stamp_ns)


def bridged_pose(primary: PoseHistory, fallback: PoseHistory, stamp_ns: int, scale_window: int = 30,
                 min_path_m: float = 0.05) -> Pose | None:
    """Pose at ``stamp_ns`` in ``primary``'s world from ``fallback``'s motion since ``primary``'s newest pose.

    Both histories hold T_world_cam of the same camera, each in its own world
    frame. With ``A`` the primary's newest stamp: ``P(A) @ S(F(A)^-1 @ F(t))``,
    where ``S`` scales the translation by the ratio of the two sources' path
    lengths over the primary's last ``scale_window`` poses (1 when the
    fallback moved less than ``min_path_m`` there, or covers none of them).
    None when the primary has no pose yet or the fallback has none at ``A``
    or at ``stamp_ns`` (within its own extrapolation tolerance).
    """
    recent = primary.newest(scale_window)
    if not recent:
        return None
    anchor_ns, anchor = recent[-1]
    f_anchor, f_now = fallback.lookup(anchor_ns, final=True), fallback.lookup(stamp_ns, final=True)
    if not (isinstance(f_anchor, Pose) and isinstance(f_now, Pose)):
        return None
    scale, path_p, path_f = 1.0, 0.0, 0.0
    prev: tuple[Pose, Pose] | None = None
    for stamp, p in recent:
        f = fallback.lookup(stamp, final=True)
        if not isinstance(f, Pose):
            prev = None
            continue
        if prev is not None:
            path_p += float(np.linalg.norm(p.translation - prev[0].translation))
            path_f += float(np.linalg.norm(f.translation - prev[1].translation))
        prev = (p, f)
    if path_f >= min_path_m:
        scale = path_p / path_f
    rel = f_anchor.inverse() @ f_now
    return anchor @ Pose(rel.rotation, rel.translation * scale)
