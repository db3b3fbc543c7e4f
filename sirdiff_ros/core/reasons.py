"""Every reason, outcome and level the package reports, as enums, in one place.

The values are the strings that go into messages (``KeyframeSet.reason``,
``RestoreStatus.drop_reasons``), ``/diagnostics`` keys, logs and evaluation
reports, so recorded bags and reports stay comparable across versions. The
string enums compare, hash and format as their value: ``DropReason.NO_CAMERA_INFO
== "no_camera_info"`` and a counter keyed by either finds the other. ROS-free.
"""

from __future__ import annotations

from enum import Enum, IntEnum

__all__ = ["StrEnum", "DropReason", "PassReason", "GateRule", "KeyframeReason", "Level", "Outcome"]


class StrEnum(str, Enum):
    """A string-valued enum whose ``str()``, ``format()`` and hash are its value's
    (``enum.StrEnum`` exists from Python 3.11; ROS 2 Humble runs 3.10)."""

    __hash__ = str.__hash__

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class DropReason(StrEnum):
    """Why an input message was not used.

    Images: counted in ``RestoreStatus.drop_reasons`` (never published).
    Poses, camera_info and depth: counted under ``rejected.*`` in
    ``/diagnostics`` (depth decode failures as ``depth_<reason>``).
    """

    # -- image checks (node) --
    WRONG_FRAME_ID = "wrong_frame_id"
    DUPLICATE_STAMP = "duplicate_stamp"
    STAMP_BACKWARDS = "stamp_backwards"
    NO_CAMERA_INFO = "no_camera_info"
    CAMERA_INFO_MISMATCH = "camera_info_mismatch"
    BAD_FRAME = "bad_frame"
    NOT_KEYFRAME = "not_keyframe"  # keyframes mode: non-keyframes are not republished
    DEACTIVATED = "deactivated"  # still waiting for its camera_info when the node was deactivated
    DECODE_BACKLOG = "decode_backlog"  # compressed input: the decoder queue was full
    BAD_MESSAGE = "bad_message"  # raw input: bytes that are no sensor_msgs/Image (camera_info: rejected.camera_info_bad_message)
    # -- image decoding (core.image_codec) --
    BAD_ENCODING = "bad_encoding"
    ZERO_SIZE = "zero_size"
    TOO_LARGE = "too_large"
    STEP_MISMATCH = "step_mismatch"
    SIZE_MISMATCH = "size_mismatch"
    BAD_COMPRESSED = "bad_compressed"  # a CompressedImage that is not a decodable JPEG/PNG
    # -- other inputs --
    BAD_CAMERA_INFO = "bad_camera_info"
    POSE_WRONG_FRAME = "pose_wrong_frame"
    POSE_STAMP_BACKWARDS = "pose_stamp_backwards"
    POSE_NON_FINITE = "pose_non_finite"
    POSE_BAD_QUATERNION = "pose_bad_quaternion"


class PassReason(StrEnum):
    """Why a frame went out as its original (``KeyframeSet.reason`` of a passed-through target)."""

    # -- the pipeline's decisions (core.pipeline) --
    NOT_KEYFRAME = "not_keyframe"
    NO_POSE = "no_pose"
    NO_REFERENCE = "no_reference"  # too few earlier keyframes for the blur gate
    SHARP = "sharp"
    NO_PARTNERS = "no_partners"
    BACKEND_ERROR = "backend_error"
    BACKEND_DECLINED = "backend_declined"  # the backend returned the original without a reason
    # -- backends' own reasons --
    PASSTHROUGH = "passthrough"
    NO_SHARPER_PARTNER = "no_sharper_partner"
    NO_TRUSTWORTHY_PARTNER = "no_trustworthy_partner"
    NO_MOTION = "no_motion"  # deblur: no exposure motion known, or too little blur to invert
    # -- fallbacks of the node (capacity and shutdown) --
    QUEUE_FULL = "queue_full"  # the worker queue dropped the target (drop_policy)
    LATENCY_BUDGET = "latency_budget"  # not restored within latency_budget_s
    OUTPUT_FULL = "output_full"  # max_pending_output images were held behind it
    SHUTDOWN = "shutdown"  # the node stopped (deactivate, cleanup, exit) before it was restored
    TIME_JUMP = "time_jump"  # the stamps jumped back while it was being restored

    @classmethod
    def overload(cls) -> frozenset[PassReason]:
        """The fallbacks that mean the node cannot keep up (they raise a WARN)."""
        return frozenset({cls.QUEUE_FULL, cls.LATENCY_BUDGET, cls.OUTPUT_FULL})


class GateRule(StrEnum):
    """Which rule of the blur gate decided a keyframe (``FrameDecision.gate``).

    With ``exposure_s`` the camera's predicted motion blur is an absolute
    measure (content-independent); the sharpness score is relative to recent
    keyframes (it says nothing when all of them are blurred).
    """

    MOTION = "motion"  # target: predicted blur >= motion_blur_px
    MOTION_AND_SCORE = "motion_and_score"  # target: >= half of it and the score agrees
    SCORE = "score"  # target: no motion known, the score is below blur_ratio x its peers'
    LITTLE_MOTION = "little_motion"  # not a target: predicted blur too small
    SHARP_SCORE = "sharp_score"  # not a target: no motion known, the score is not low
    UNDECIDED = "undecided"  # not gated: not a keyframe, no pose, or no reference yet


class KeyframeReason(StrEnum):
    """The keyframe buffer's verdict on a frame (``core.keyframes.Admission.reason``)."""

    # admitted
    FIRST = "first"
    TRANSLATION = "translation"
    ROTATION = "rotation"
    MAX_TIME_GAP = "max_time_gap"
    # not admitted
    NO_POSE = "no_pose"
    STAMP_BACKWARDS = "stamp_backwards"
    MIN_TIME_GAP = "min_time_gap"
    SMALL_MOTION = "small_motion"
    TOO_LARGE = "too_large"


class Level(IntEnum):
    """``diagnostic_msgs/DiagnosticStatus`` levels."""

    OK = 0
    WARN = 1
    ERROR = 2
    STALE = 3


class Outcome(IntEnum):
    """``KeyframeSet.OUTCOME_*``."""

    RESTORED = 0
    PASSED_THROUGH = 1
