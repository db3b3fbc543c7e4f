"""The online restoration pipeline: keyframes -> blur gate -> view selection -> restorer.

Two calls, so that the node can split them over threads:

* :meth:`RestorationPipeline.ingest` (ingest thread, fast: one sharpness score
  and a keyframe decision) returns a :class:`FrameDecision`;
* :meth:`RestorationPipeline.restore` (worker thread) selects partners from the
  keyframes *already in the buffer before the target* (online and causal),
  runs the restorer and returns a :class:`RestorationOutcome`. It never raises
  on a backend failure: the original image comes back with reason
  ``backend_error`` and the exception in ``error``.

:meth:`RestorationPipeline.process` does both synchronously (offline replay).

Blur gate: a frame is a restoration *target* only when its sharpness is
below ``blur_ratio`` times the reference sharpness of its recent peers, the
``gate_quantile`` quantile of the previous ``gate_window`` keyframes' scores
(a high quantile: the reference is what a *sharp* recent frame scores, robust
to a few blurred ones). Keyframes above it pass through untouched with reason
``sharp``. Until ``gate_min_peers`` earlier keyframes exist there is no
reference and keyframes pass with reason ``no_reference``.

Every posed frame goes through the gate (``restore_non_keyframes``, the
default), not only keyframes: in ``stream`` mode a blurred frame between two
restored keyframes reaches SLAM blurred, and ORB-SLAM3 loses track exactly
there (its map then holds the sharp frames' descriptors, which a blurred
frame does not match; docs/slam.md). Non-keyframes are judged against the
same recent keyframes and pass with reason ``not_keyframe`` when sharp.

The score depends on scene content (a turn towards a finely textured
surface raises it). When the exposure time is known (``exposure_s`` > 0)
the camera's own motion predicts the blur
(:func:`~sirdiff_ros.core.blur.predicted_blur_px`, from the velocity since
the previous posed frame): a frame is a target when the predicted blur
reaches ``motion_blur_px``, or reaches half of it and the score gate agrees.

Reasons a frame is passed through (``RestorationOutcome.reason``):
``not_keyframe``, ``no_pose``, ``no_reference``, ``sharp``, ``no_partners``,
``backend_error``, or the backend's own reason (e.g. ``passthrough``,
``no_sharper_partner``): :class:`~sirdiff_ros.core.reasons.PassReason`. Empty when restored.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from .blur import sharpness as sharpness_score
from .deblur import EXPOSURE_MOTION_KEY, ExposureMotion, deblurred_view, evidence_guard, exposure_motion, frame_depth
from .frame import Frame
from .geometry import Pose
from .keyframes import Admission, Keyframe, KeyframeBuffer, KeyframeConfig
from .reasons import GateRule, KeyframeReason, Outcome, PassReason
from .restorers.base import RestoreRequest, Restorer, create_restorer
from .selection import SelectionConfig, ViewSelection, select_views

__all__ = [
    "OUTCOME_RESTORED",
    "OUTCOME_PASSED_THROUGH",
    "PipelineConfig",
    "FrameDecision",
    "RestorationOutcome",
    "RestorationPipeline",
    "linear_quantile",
]

# Mirror KeyframeSet.msg's OUTCOME_* constants.
OUTCOME_RESTORED = Outcome.RESTORED
OUTCOME_PASSED_THROUGH = Outcome.PASSED_THROUGH


@dataclass(frozen=True)
class PipelineConfig:
    """Pipeline parameters (defaults suit a 30 Hz camera at walking speed).

    ``num_views`` is the size of the view set including the target.
    ``min_overlap``, ``depth_range`` and the selection fields feed
    :class:`~sirdiff_ros.core.selection.SelectionConfig` (see there).
    """

    keyframe: KeyframeConfig = field(default_factory=KeyframeConfig)
    num_views: int = 4
    min_overlap: float = 0.3
    blur_ratio: float = 0.7
    gate_window: int = 10
    gate_quantile: float = 0.75
    gate_min_peers: int = 2
    depth_range: tuple[float, float] = (0.5, 10.0)
    sharpness_weight: float = 0.5
    duplicate_penalty: float = 0.1
    exposure_s: float = 0.0  # camera exposure time; 0: unknown (sharpness gate only)
    motion_blur_px: float = 4.0  # predicted motion blur that makes a keyframe a target
    max_velocity_gap_s: float = 0.5  # previous pose older than this: no velocity
    deconvolve: bool = True  # invert each view's own motion blur (needs exposure_s) before the backend
    partner_ring: int = 8  # recent non-keyframes that are partner candidates too (0: keyframes only)
    # Gate (and restore) every posed frame, not only keyframes: a blurred frame left between
    # restored ones makes the stream's sharpness jump, and SLAM loses track there (docs/slam.md).
    restore_non_keyframes: bool = True

    def __post_init__(self) -> None:
        if self.num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {self.num_views}")
        if not 0.0 < self.blur_ratio <= 1.0:
            raise ValueError(f"blur_ratio must be in (0, 1], got {self.blur_ratio}")
        if self.gate_window < 1 or self.gate_min_peers < 1 or self.gate_min_peers > self.gate_window:
            raise ValueError("need 1 <= gate_min_peers <= gate_window")
        if not (math.isfinite(self.exposure_s) and self.exposure_s >= 0 and self.motion_blur_px > 0):
            raise ValueError("exposure_s must be >= 0 and motion_blur_px > 0")
        if self.partner_ring < 0:
            raise ValueError(f"partner_ring must be >= 0, got {self.partner_ring}")
        if not 0.0 <= self.gate_quantile <= 1.0:
            raise ValueError(f"gate_quantile must be in [0, 1], got {self.gate_quantile}")
        _ = self.selection  # builds (and so validates) the selection fields too

    @property
    def selection(self) -> SelectionConfig:
        return SelectionConfig(
            min_overlap=self.min_overlap,
            depth_range=self.depth_range,
            sharpness_weight=self.sharpness_weight,
            duplicate_penalty=self.duplicate_penalty,
        )


@dataclass(frozen=True)
class FrameDecision:
    """What :meth:`RestorationPipeline.ingest` decided for one frame.

    ``reason`` is empty for targets, else why the frame is not one.
    ``reference_sharpness`` is the gate's reference (NaN without one).
    ``admission`` is the keyframe buffer's verdict; ``ingest_time`` a
    ``time.monotonic()`` reading taken on arrival; ``predicted_blur_px`` the
    motion blur predicted from the camera's velocity (NaN without
    ``exposure_s`` or a recent previous pose); ``gate`` the rule that decided
    (:class:`~sirdiff_ros.core.reasons.GateRule`).
    """

    frame: Frame
    sharpness: float
    is_keyframe: bool
    is_target: bool
    reason: str
    reference_sharpness: float = math.nan
    admission: Admission | None = None
    ingest_time: float = 0.0
    predicted_blur_px: float = math.nan
    gate: GateRule = GateRule.UNDECIDED


@dataclass
class RestorationOutcome:
    """The result for one frame; ``views`` always holds at least the frame itself.

    ``views``, ``overlaps``, ``sharpness_before`` and ``sharpness_after`` are
    parallel, in model order (target first, see
    :mod:`sirdiff_ros.core.selection`); ``sharpness_after`` is NaN for members
    whose restored image was not requested. ``latency_s`` is the backend call,
    ``end_to_end_s`` arrival to outcome.
    """

    decision: FrameDecision
    image: np.ndarray
    restored: bool
    reason: str
    views: list[Frame]
    target_index: int
    overlaps: list[float]
    sharpness_before: list[float]
    sharpness_after: list[float]
    backend: str
    device: str
    latency_s: float = 0.0
    end_to_end_s: float = 0.0
    error: Exception | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def frame(self) -> Frame:
        return self.decision.frame

    def keyframe_set_fields(self) -> dict[str, Any]:
        """Plain values with the field names and nesting of ``msg/KeyframeSet.msg``.

        Times are ``{'sec', 'nanosec'}``; poses ``{'position': {x,y,z},
        'orientation': {x,y,z,w}}`` (identity for a view without pose).
        """
        tgt = self.views[self.target_index]
        views = []
        for i, v in enumerate(self.views):
            views.append(
                {
                    "header": _header(v),
                    "pose": _pose_fields(v),
                    "overlap": float(self.overlaps[i]),
                    "sharpness_before": float(self.sharpness_before[i]),
                    "sharpness_after": float(self.sharpness_after[i]),
                    "is_target": i == self.target_index,
                }
            )
        return {
            "header": _header(tgt),
            "target_stamp": _time(tgt.stamp_ns),
            "target_index": int(self.target_index),
            "views": views,
            "backend": self.backend,
            "device": self.device,
            "latency_ms": float(self.latency_s * 1e3),
            "end_to_end_ms": float(self.end_to_end_s * 1e3),
            "outcome": OUTCOME_RESTORED if self.restored else OUTCOME_PASSED_THROUGH,
            "reason": self.reason,
        }


def _time(stamp_ns: int) -> dict[str, int]:
    return {"sec": int(stamp_ns // 1_000_000_000), "nanosec": int(stamp_ns % 1_000_000_000)}


def _header(frame: Frame) -> dict[str, Any]:
    return {"stamp": _time(frame.stamp_ns), "frame_id": frame.frame_id}


def _pose_fields(frame: Frame) -> dict[str, dict[str, float]]:
    if frame.pose is None:
        t, q = np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0])
    else:
        t, q = frame.pose.translation, frame.pose.quaternion
    return {
        "position": {"x": float(t[0]), "y": float(t[1]), "z": float(t[2])},
        "orientation": {"x": float(q[0]), "y": float(q[1]), "z": float(q[2]), "w": float(q[3])},
    }


class RestorationPipeline:
    """Keyframe buffer + blur gate + view selection + a restorer (module docstring).

    ``restorer`` is a :class:`Restorer` or a backend name for
    :func:`create_restorer` (default ``passthrough``).
    """

    def __init__(self, config: PipelineConfig | None = None, restorer: Restorer | str = "passthrough") -> None:
        self.config = config or PipelineConfig()
        self.restorer: Restorer = create_restorer(restorer) if isinstance(restorer, str) else restorer
        self.buffer = KeyframeBuffer(self.config.keyframe)
        self._lock = threading.Lock()  # admission + gating
        self._pose_trail: list[tuple[int, Pose]] = []  # last posed frames, for the velocity
        # Recent posed frames the buffer did not admit: during a pan every keyframe
        # may be blurred while a frame between them is sharp (bench/partners.py).
        self._ring: deque[Keyframe] = deque(maxlen=max(1, self.config.partner_ring))
        self._count_lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def reset(self) -> None:
        """Forget the keyframes, the recent frames and the previous poses (the stamps jumped
        back: a new time line starts; partners and velocities from the old one would be wrong)."""
        with self._lock:
            self.buffer.clear()
            self._ring.clear()
            self._pose_trail.clear()

    # -- ingest ------------------------------------------------------------------
    def ingest(self, frame: Frame) -> FrameDecision:
        """Score ``frame``, admit it as a keyframe or not, and gate it (thread-safe)."""
        t0 = time.monotonic()
        s = sharpness_score(frame.image)
        cfg = self.config
        # One lock around admission and gating keeps the reference (previous
        # keyframes) consistent with the admission when two threads ingest.
        with self._lock:
            # The motion first: the buffer stores a copy (without array extras) that must carry it.
            motion = self._motion_blur(frame)
            adm = self.buffer.consider(frame, sharpness=s)
            ref = math.nan
            gate = GateRule.UNDECIDED
            if adm.admitted or (cfg.restore_non_keyframes and frame.pose is not None):
                # A non-keyframe is judged against the keyframes so far (all of them precede it).
                gate, ref = self._gate(s, motion, cast(Keyframe, adm.keyframe).index if adm.admitted else None)
                if gate in (GateRule.MOTION, GateRule.MOTION_AND_SCORE, GateRule.SCORE):
                    reason, is_target = "", True
                elif not adm.admitted:
                    reason, is_target = PassReason.NOT_KEYFRAME, False
                elif gate is GateRule.UNDECIDED:
                    reason, is_target = PassReason.NO_REFERENCE, False
                else:
                    reason, is_target = PassReason.SHARP, False
            else:
                reason = PassReason.NO_POSE if adm.reason == KeyframeReason.NO_POSE else PassReason.NOT_KEYFRAME
                is_target = False
            if not adm.admitted and frame.pose is not None and cfg.partner_ring > 0:
                self._ring.append(Keyframe(frame, s, -1, frame.image.nbytes))
            self._count("frames")
            self._count("keyframes" if adm.admitted else "not_keyframes")
            self._count("targets" if is_target else f"passed.{reason}")
        return FrameDecision(frame, s, adm.admitted, is_target, reason, ref, adm, t0, motion, gate)

    def _gate(self, score: float, motion: float, before_index: int | None) -> tuple[GateRule, float]:
        """The gate's rule for a frame of sharpness ``score`` and predicted blur ``motion`` (NaN: unknown),
        and the reference sharpness of the keyframes admitted before ``before_index`` (NaN without enough).
        Caller holds ``self._lock``."""
        cfg = self.config
        ref = math.nan
        peers = self.buffer.recent_sharpness(cfg.gate_window, before_index=before_index)
        if peers.size >= cfg.gate_min_peers:
            ref = linear_quantile(peers.tolist(), cfg.gate_quantile)
        blurred_score = math.isfinite(ref) and score < cfg.blur_ratio * ref
        if math.isfinite(motion):
            # The camera's motion decides when it is clear-cut (an absolute
            # measure); the score, relative to recent keyframes, in between.
            if motion >= cfg.motion_blur_px:
                return GateRule.MOTION, ref
            if blurred_score and motion >= cfg.motion_blur_px / 2:
                return GateRule.MOTION_AND_SCORE, ref
            return GateRule.LITTLE_MOTION, ref
        if math.isfinite(ref):
            return (GateRule.SCORE if blurred_score else GateRule.SHARP_SCORE), ref
        return GateRule.UNDECIDED, ref

    def _motion_blur(self, frame: Frame) -> float:
        """Predicted motion blur (px) from the camera's velocity, NaN when unknown; attaches the
        frame's :class:`~sirdiff_ros.core.deblur.ExposureMotion`. Caller holds ``self._lock``."""
        cfg = self.config
        if frame.pose is None:
            return math.nan
        trail = self._pose_trail
        if trail and frame.stamp_ns <= trail[-1][0]:
            trail.clear()  # time went backwards: the old poses say nothing about this motion
        trail.append((frame.stamp_ns, frame.pose))
        del trail[:-3]
        near, far = cfg.depth_range
        # Without a depth image: the geometric middle of the range. Translation blur
        # scales with 1 / depth; the inverse-depth middle (near for a wide range)
        # over-predicted it 2-4x in rooms and over-sharpened (docs/real_images.md).
        depth = math.sqrt(near * far)
        motion = exposure_motion(trail, cfg.exposure_s, cfg.max_velocity_gap_s, depth)
        if motion is None:
            return math.nan
        frame.extras[EXPOSURE_MOTION_KEY] = motion
        measured = frame_depth(frame, depth)
        if isinstance(measured, np.ndarray):
            depth = float(np.median(measured[measured > 0]))
        return motion.blur_px(frame.intrinsics, depth)

    def partner_candidate_stamps(self) -> set[int]:
        """Stamps of every frame a later target may take as partner (keyframes and the ring)."""
        with self._lock:
            ring = {k.stamp_ns for k in self._ring}
        return ring | {int(x) for x in self.buffer.snapshot().stamps_ns}

    # -- restore -----------------------------------------------------------------
    def select(self, decision: FrameDecision, num_views: int | None = None) -> ViewSelection:
        """The view set :meth:`restore` would use for ``decision``'s frame.

        ``num_views`` (default ``config.num_views``) bounds the set: the greedy
        selection stops early, so a smaller set holds the best partners of a larger one."""
        n = self.config.num_views if num_views is None else num_views
        snap = self.buffer.snapshot()
        with self._lock:
            ring = list(self._ring) if self.config.partner_ring > 0 else []
        return select_views(decision.frame, snap.merged(ring), n, self.config.selection)

    def restore(self, decision: FrameDecision, restorer: Restorer | None = None, num_views: int | None = None) -> RestorationOutcome:
        """Restore a target (or pass a non-target through); thread-safe, never raises
        on backend failure (reason ``backend_error``, ``error`` set).

        ``num_views`` restores with fewer views than ``config.num_views`` (a
        node under load: each partner costs an alignment)."""
        backend = restorer or self.restorer
        frame = decision.frame
        if not decision.is_target:
            return self._passed(decision, [frame], [1.0], [decision.sharpness], decision.reason, backend)
        sel = self.select(decision, num_views)
        views, overlaps = list(sel.views), list(sel.overlaps)
        before = [decision.sharpness] + [k.sharpness for k in sel.partners]
        if len(views) < 2:
            return self._passed(decision, views, overlaps, before, PassReason.NO_PARTNERS, backend)
        t0 = time.perf_counter()
        try:
            if self.config.deconvolve and getattr(backend, "deblurs_views", True):
                views = [deblurred_view(v) for v in views]
            request = RestoreRequest(views=views, targets=[0], overlaps=overlaps)
            result = backend.restore(request)
            rv = result.for_index(0)
            if rv.image.shape != frame.image.shape or rv.image.dtype != frame.image.dtype:
                raise ValueError(
                    f"backend {backend.name!r} returned {rv.image.dtype}{rv.image.shape} "
                    f"for a {frame.image.dtype}{frame.image.shape} image"
                )
        except Exception as exc:  # any backend failure degrades to passthrough
            out = self._passed(decision, views, overlaps, before, PassReason.BACKEND_ERROR, backend)
            out.error = exc
            out.latency_s = time.perf_counter() - t0
            self._count("backend_errors")
            return out
        latency = time.perf_counter() - t0
        info = dict(rv.info)
        image, restored, reason = rv.image, bool(rv.restored), "" if rv.restored else (rv.reason or PassReason.BACKEND_DECLINED)
        if not restored and views[0].extras.get("deblur_px", 0.0) > 0:
            # The backend found nothing to add (e.g. no sharper partner): the deblurred target still is the restoration.
            image, restored, reason = views[0].image, True, ""
            info["backend_declined"] = str(rv.reason or PassReason.BACKEND_DECLINED)
        elif not restored:
            image = frame.image
        motion = frame.extras.get(EXPOSURE_MOTION_KEY)
        if restored and self.config.deconvolve and isinstance(motion, ExposureMotion) and image is not views[0].image:
            # What the backend added must blur back into what the camera saw, as well as the deblurred view does.
            image, replaced = evidence_guard(image, views[0].image, frame.image, motion, frame.intrinsics)
            info["evidence_replaced"] = replaced
        after = [math.nan] * len(views)
        after[0] = float(sharpness_score(image)) if restored else decision.sharpness
        self._count("restored" if restored else f"passed.{reason}")
        return RestorationOutcome(
            decision=decision,
            image=image,
            restored=restored,
            reason=reason,
            views=views,
            target_index=0,
            overlaps=overlaps,
            sharpness_before=before,
            sharpness_after=after,
            backend=result.backend,
            device=result.device,
            latency_s=latency,
            end_to_end_s=time.monotonic() - decision.ingest_time,
            info=info,
        )

    def process(self, frame: Frame) -> RestorationOutcome:
        """``restore(ingest(frame))``, synchronously (offline evaluation)."""
        return self.restore(self.ingest(frame))

    # -- statistics ----------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Totals since construction: frames, keyframes, targets, restored,
        ``passed.<reason>``, backend_errors."""
        with self._count_lock:
            return dict(self._counts)

    def _count(self, key: str) -> None:
        with self._count_lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def _passed(
        self,
        decision: FrameDecision,
        views: list[Frame],
        overlaps: list[float],
        before: list[float],
        reason: str,
        backend: Restorer,
    ) -> RestorationOutcome:
        if decision.is_target and reason != PassReason.BACKEND_ERROR:
            self._count(f"passed.{reason}")
        return RestorationOutcome(
            decision=decision,
            image=decision.frame.image,
            restored=False,
            reason=reason,
            views=views,
            target_index=0,
            overlaps=overlaps,
            sharpness_before=before,
            sharpness_after=[decision.sharpness] + [math.nan] * (len(views) - 1),
            backend=getattr(backend, "name", type(backend).__name__),
            device=getattr(backend, "device", "cpu"),
            end_to_end_s=time.monotonic() - decision.ingest_time,
        )


def linear_quantile(values: list[float], q: float) -> float:
    """``np.quantile(values, q)`` (method ``linear``), bit for bit, in plain Python.

    The gate takes one quantile of about ten numbers for every frame, where
    numpy's general machinery costs more than the arithmetic."""
    if not values:
        raise ValueError("quantile of no values")
    a = sorted(values)
    h = (len(a) - 1) * q
    lo = min(int(math.floor(h)), len(a) - 1)
    hi = min(lo + 1, len(a) - 1)
    t = h - lo
    # numpy's _lerp: from the nearer end, so that t = 1 gives the upper value exactly.
    d = a[hi] - a[lo]
    return a[hi] - d * (1.0 - t) if t >= 0.5 else a[lo] + d * t
