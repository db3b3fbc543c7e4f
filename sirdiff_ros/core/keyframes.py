"""The keyframe buffer: which frames are kept as partners, bounded and thread-safe.

Admission (:meth:`KeyframeBuffer.consider`), in this order:

1. a frame without a pose is not admitted (``no_pose``): view selection needs it;
2. a stamp not after the last keyframe's is not admitted (``stamp_backwards``);
3. the first frame with a pose is admitted (``first``);
4. within ``min_time_gap_s`` of the last keyframe nothing is admitted (``min_time_gap``);
5. a frame is admitted when the camera moved at least ``min_translation`` metres
   (``translation``) or turned at least ``min_rotation_deg`` (``rotation``) since the
   last keyframe, or when ``max_time_gap_s`` passed since it (``max_time_gap``);
   otherwise it is not (``small_motion``);
6. a frame that alone exceeds ``max_bytes`` is not admitted (``too_large``).

Every keyframe carries its sharpness score (:func:`sirdiff_ros.core.blur.sharpness`).

Bounds and eviction: after an admission, the *oldest* keyframes (in admission
order, which is stamp order) are evicted until at most ``max_keyframes`` are
held and their bytes sum to at most ``max_bytes``. Oldest-first is predictable
and matches what an online restorer needs: partners are recent views.

What a keyframe costs: the buffer keeps the image, the depth image when there
is one, pose and intrinsics, and drops ``Frame.extras`` arrays (ground truth
and the like) unless ``keep_extras`` is set. A 640x480 RGB keyframe holds
921,600 bytes of image (+1,228,800 with float32 depth) plus
:data:`KEYFRAME_OVERHEAD_BYTES` of bookkeeping, which is what ``max_bytes``
counts.

Thread safety: every method takes one lock; :meth:`KeyframeBuffer.snapshot`
returns an immutable view (cached until the next change) that a worker thread
reads without locking while the ingest thread keeps admitting.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, replace
from typing import Sequence, cast

import numpy as np

from .blur import sharpness as sharpness_score
from .frame import Frame
from .geometry import Pose
from .overlap import CameraStack
from .reasons import KeyframeReason

__all__ = [
    "KEYFRAME_OVERHEAD_BYTES",
    "KeyframeConfig",
    "Keyframe",
    "Admission",
    "KeyframeSnapshot",
    "KeyframeBuffer",
    "keyframe_nbytes",
]

# Python objects, pose, intrinsics and snapshot arrays per keyframe (measured
# with sys.getsizeof over the objects, rounded up).
KEYFRAME_OVERHEAD_BYTES = 2048


@dataclass(frozen=True)
class KeyframeConfig:
    """Admission thresholds and bounds (see the module docstring)."""

    min_translation: float = 0.05  # metres
    min_rotation_deg: float = 5.0
    min_time_gap_s: float = 0.0
    max_time_gap_s: float = 1.0
    max_keyframes: int = 64
    max_bytes: int = 256 * 1024 * 1024
    keep_extras: bool = False

    def __post_init__(self) -> None:
        for name in ("min_translation", "min_rotation_deg", "min_time_gap_s", "max_time_gap_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"KeyframeConfig.{name} must be finite and >= 0, got {v}")
        if self.max_time_gap_s < self.min_time_gap_s:
            raise ValueError(
                f"max_time_gap_s ({self.max_time_gap_s}) must be >= min_time_gap_s ({self.min_time_gap_s})"
            )
        if self.max_keyframes < 1:
            raise ValueError(f"max_keyframes must be >= 1, got {self.max_keyframes}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {self.max_bytes}")


def keyframe_nbytes(frame: Frame, keep_extras: bool = False) -> int:
    """Bytes one frame costs in the buffer (the quantity ``max_bytes`` bounds)."""
    n = frame.image.nbytes + (frame.depth.nbytes if frame.depth is not None else 0)
    if keep_extras:
        n += sum(v.nbytes for v in frame.extras.values() if isinstance(v, np.ndarray))
    return n + KEYFRAME_OVERHEAD_BYTES


@dataclass(frozen=True)
class Keyframe:
    """A stored keyframe. ``index`` counts admissions from 0 (unique, increasing)."""

    frame: Frame
    sharpness: float
    index: int
    nbytes: int

    @property
    def stamp_ns(self) -> int:
        return self.frame.stamp_ns


@dataclass(frozen=True)
class Admission:
    """Result of :meth:`KeyframeBuffer.consider`."""

    admitted: bool
    reason: KeyframeReason
    keyframe: Keyframe | None = None
    evicted: tuple[Keyframe, ...] = ()


@dataclass(frozen=True)
class KeyframeSnapshot:
    """Immutable view of the buffer, oldest first, with arrays for selection."""

    keyframes: tuple[Keyframe, ...]
    cameras: CameraStack
    sharpness: np.ndarray  # (M,)
    stamps_ns: np.ndarray  # (M,) int64
    positions: np.ndarray  # (M, 3) camera centres in the world
    nbytes: int = 0

    def __len__(self) -> int:
        return len(self.keyframes)

    @classmethod
    def build(cls, keyframes: Sequence[Keyframe]) -> KeyframeSnapshot:
        kfs = tuple(keyframes)
        cams = CameraStack.from_cameras([(k.frame.pose, k.frame.intrinsics) for k in kfs])  # type: ignore[misc]
        return cls(
            keyframes=kfs,
            cameras=cams,
            sharpness=np.array([k.sharpness for k in kfs], dtype=np.float64),
            stamps_ns=np.array([k.stamp_ns for k in kfs], dtype=np.int64),
            positions=np.array([k.frame.pose.translation for k in kfs]).reshape(-1, 3),  # type: ignore[union-attr]
            nbytes=sum(k.nbytes for k in kfs),
        )

    def merged(self, others: Sequence[Keyframe]) -> KeyframeSnapshot:
        """This snapshot and ``others`` in one, in stamp order (stable: ours first on a tie).

        Only ``others`` are stacked anew; the snapshot's arrays are reused."""
        if not others:
            return self
        add = KeyframeSnapshot.build(others)
        order = np.argsort(np.concatenate([self.stamps_ns, add.stamps_ns]), kind="stable")
        kfs = self.keyframes + add.keyframes
        a, b = self.cameras, add.cameras
        return KeyframeSnapshot(
            keyframes=tuple(kfs[i] for i in order),
            cameras=CameraStack(
                np.concatenate([a.R_cw, b.R_cw])[order], np.concatenate([a.t_cw, b.t_cw])[order], np.concatenate([a.k, b.k])[order]
            ),
            sharpness=np.concatenate([self.sharpness, add.sharpness])[order],
            stamps_ns=np.concatenate([self.stamps_ns, add.stamps_ns])[order],
            positions=np.concatenate([self.positions, add.positions])[order],
            nbytes=self.nbytes + add.nbytes,
        )


class KeyframeBuffer:
    """Bounded, thread-safe keyframe store (see the module docstring)."""

    def __init__(self, config: KeyframeConfig | None = None) -> None:
        self.config = config or KeyframeConfig()
        self._lock = threading.Lock()
        self._keyframes: deque[Keyframe] = deque()
        self._nbytes = 0
        self._next_index = 0
        self._last: Keyframe | None = None  # last admitted, kept even if evicted
        self._snapshot: KeyframeSnapshot | None = None
        # Ring arrays parallel to _keyframes (slot of keyframe i: (_head + i) % cap),
        # so a snapshot is a few array copies, not a pass over Python objects.
        cap = self.config.max_keyframes
        self._head = 0
        self._R = np.zeros((cap, 3, 3))
        self._t = np.zeros((cap, 3))
        self._k = np.zeros((cap, 6))
        self._pos = np.zeros((cap, 3))
        self._sharp = np.zeros(cap)
        self._stamp = np.zeros(cap, dtype=np.int64)

    # -- admission -----------------------------------------------------------
    def consider(self, frame: Frame, sharpness: float | None = None) -> Admission:
        """Admit ``frame`` as a keyframe if the rules allow; evict to stay bounded.

        ``sharpness`` is computed when not given (callers that already scored
        the frame pass it to avoid doing it twice).
        """
        if frame.pose is None:
            return Admission(False, KeyframeReason.NO_POSE)
        cfg = self.config
        with self._lock:
            last = self._last
            if last is None:
                reason = KeyframeReason.FIRST
            else:
                dt = (frame.stamp_ns - last.stamp_ns) * 1e-9
                if dt <= 0:
                    return Admission(False, KeyframeReason.STAMP_BACKWARDS)
                if dt < cfg.min_time_gap_s:
                    return Admission(False, KeyframeReason.MIN_TIME_GAP)
                lp = cast(Pose, last.frame.pose)  # admitted keyframes always have a pose
                if frame.pose.distance_to(lp) >= cfg.min_translation:
                    reason = KeyframeReason.TRANSLATION
                elif math.degrees(frame.pose.rotation_angle_to(lp)) >= cfg.min_rotation_deg:
                    reason = KeyframeReason.ROTATION
                elif dt >= cfg.max_time_gap_s:
                    reason = KeyframeReason.MAX_TIME_GAP
                else:
                    return Admission(False, KeyframeReason.SMALL_MOTION)
            nbytes = keyframe_nbytes(frame, cfg.keep_extras)
            if nbytes > cfg.max_bytes:
                return Admission(False, KeyframeReason.TOO_LARGE)
            score = sharpness_score(frame.image) if sharpness is None else float(sharpness)
            stored = frame if cfg.keep_extras else _without_array_extras(frame)
            kf = Keyframe(stored, score, self._next_index, nbytes)
            self._next_index += 1
            evicted = []
            if len(self._keyframes) == cfg.max_keyframes:  # make room in the ring first
                evicted.append(self._pop_oldest())
            self._push(kf)
            self._last = kf
            while self._nbytes > cfg.max_bytes:
                evicted.append(self._pop_oldest())
            self._snapshot = None
            return Admission(True, reason, kf, tuple(evicted))

    # -- reading ---------------------------------------------------------------
    def snapshot(self) -> KeyframeSnapshot:
        """Immutable view of the current keyframes (oldest first)."""
        with self._lock:
            if self._snapshot is None:
                idx = (self._head + np.arange(len(self._keyframes))) % self.config.max_keyframes
                self._snapshot = KeyframeSnapshot(
                    keyframes=tuple(self._keyframes),
                    cameras=CameraStack(self._R[idx], self._t[idx], self._k[idx]),
                    sharpness=self._sharp[idx],
                    stamps_ns=self._stamp[idx],
                    positions=self._pos[idx],
                    nbytes=self._nbytes,
                )
            return self._snapshot

    def recent_sharpness(self, count: int, before_index: int | None = None) -> np.ndarray:
        """Sharpness of up to ``count`` most recent keyframes admitted before ``before_index``."""
        vals: list[float] = []
        if count > 0:
            with self._lock:
                # Newest first, stopping at ``count``: this runs for every frame.
                for k in reversed(self._keyframes):
                    if before_index is None or k.index < before_index:
                        vals.append(k.sharpness)
                        if len(vals) == count:
                            break
        return np.asarray(vals[::-1], dtype=np.float64)

    def __len__(self) -> int:
        with self._lock:
            return len(self._keyframes)

    @property
    def nbytes(self) -> int:
        """Bytes held, as counted against ``max_bytes``."""
        with self._lock:
            return self._nbytes

    def clear(self) -> None:
        """Forget every keyframe (e.g. after a SLAM map reset or a time jump)."""
        with self._lock:
            self._keyframes.clear()
            self._head = 0
            self._nbytes = 0
            self._last = None
            self._snapshot = None


    def _push(self, kf: Keyframe) -> None:
        # Caller holds the lock and has made room.
        slot = (self._head + len(self._keyframes)) % self.config.max_keyframes
        pose = cast(Pose, kf.frame.pose)
        K = kf.frame.intrinsics
        self._R[slot] = pose.rotation.T
        self._t[slot] = -(pose.rotation.T @ pose.translation)
        self._k[slot] = (K.fx, K.fy, K.cx, K.cy, K.width, K.height)
        self._pos[slot] = pose.translation
        self._sharp[slot] = kf.sharpness
        self._stamp[slot] = kf.stamp_ns
        self._keyframes.append(kf)
        self._nbytes += kf.nbytes

    def _pop_oldest(self) -> Keyframe:
        old = self._keyframes.popleft()
        self._head = (self._head + 1) % self.config.max_keyframes
        self._nbytes -= old.nbytes
        return old


def _without_array_extras(frame: Frame) -> Frame:
    if not any(isinstance(v, np.ndarray) for v in frame.extras.values()):
        return frame
    extras = {k: v for k, v in frame.extras.items() if not isinstance(v, np.ndarray)}
    return replace(frame, extras=extras)
