"""The restore node: subscribe, associate, restore on a worker, republish for SLAM.

A lifecycle (managed) node: the backend and its weights are loaded on
``configure``, inputs are subscribed only while ``active``, and ``cleanup``
releases the model (and its GPU memory). Data path (one direction)::

  image ──┐ decode + checks        approximate-time pairing       pose at the
  info ───┼──────────────────────> (image, camera_info[, depth]) ─> image stamp ─┐
  depth ──┘                                                                       │
  pose ──> PoseHistory <──────────────────────────────────────────────────────────┘
                                                                                  v
   RestorationPipeline.ingest (keyframe? blurred target?) ──> OutputSequencer (input order)
          │ target                                                  ^
          v                                                         │ restored, or the original
   RestoreWorker (bounded queue, drop policy) ── pipeline.restore ──┘ after the latency budget

Compressed input (``input_transport: compressed``) is decoded on a decoder
thread, in arrival order, and republished as a raw Image. Input stamps that
jump back by more than ``time_jump_threshold_s`` on any topic (a bag replayed
with ``--loop``, a restarted driver) end the current time line: everything in
flight is published or counted, then association, pose history, keyframes and
output order start afresh.

Every received image ends published or counted in ``drops`` by reason
(``received == published + dropped + in_flight``). Restoration is
:mod:`sirdiff_ros.core.pipeline`; this module is the rclpy layer only.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ..core.frame import Frame, FrameError
from ..core.image_codec import ImageDecodeError, decode_compressed, encode_image
from ..core.pipeline import RestorationPipeline
from ..core.reasons import DropReason, Outcome, PassReason
from ..core.restorers import create_restorer
from ..msg import KeyframeSet, RestoreStatus, ViewInfo
from . import params as P
from .association import ApproxTimeSync, nearest_within
from .convert import (
    InputRejected,
    SerializedCameraInfo,
    SerializedImage,
    camera_info_to_intrinsics,
    depth_from_msg,
    fill_message,
    image_from_msg,
    output_image_msg,
    parse_serialized_camera_info,
    parse_serialized_image,
    pose_from_msg,
    stamp_to_ns,
)
from ..core.pose_history import PoseHistory, PoseLookup, bridged_pose
from .sequencer import OutputSequencer
from .spin import run_node
from .stats import NodeStats, StatsSnapshot
from .worker import RestoreWorker

__all__ = ["RestoreNode", "StartupError", "main"]

_HOUSEKEEPING_PERIOD_S = 0.05  # deadline checks: bounds the latency-budget overrun, keeps the executor quiet
_DRAIN_TIMEOUT_S = 5.0  # deactivate/cleanup: longest wait for a running restoration or decode


class StartupError(RuntimeError):
    """The node cannot start with this configuration (bad parameter, backend, checkpoint)."""


@dataclass
class _Input:
    """An accepted image on its way through association."""

    msg: Any
    image: Any  # np.ndarray, core layout
    stamp_ns: int
    arrival: float  # time.monotonic() at reception
    info: SerializedCameraInfo | None = None
    intrinsics: Any = None
    depth: Any = None


@dataclass
class _Output:
    """What the sequencer emits for one image."""

    src: _Input
    image_msg: Any
    target: bool = False
    restored: bool = False
    reason: str = ""
    keyframe_set: dict[str, Any] | None = None


@dataclass
class _Compressed:
    """A CompressedImage waiting for the decoder thread."""

    msg: Any
    arrival: float


@dataclass
class _Job:
    seq: int
    src: _Input
    decision: Any  # core.pipeline.FrameDecision
    deadline: float  # time.monotonic() after which its original is published instead


class RestoreNode(LifecycleNode):
    """A managed (lifecycle) node; see the module docstring. Parameters: :mod:`sirdiff_ros.ros.params`.

    * constructed (``unconfigured``): parameters declared and checked;
    * ``configure``: the backend is created (model weights loaded), publishers made;
    * ``activate``: subscriptions made, images flow;
    * ``deactivate``: subscriptions removed, every image in flight published
      (targets as their originals, reason ``shutdown``) or counted;
    * ``cleanup``: the backend released (GPU memory returned), back to ``unconfigured``.

    With ``autostart`` (default) :func:`main` configures and activates at once.
    """

    # Association state of the current time line (see _reset_association).
    _sync: ApproxTimeSync
    _poses: PoseHistory
    _fallback_poses: PoseHistory
    _awaiting_pose: deque[_Input]
    _depths: deque[tuple[int, Any]]
    _last_stamp_ns: int | None
    _newest: dict[str, int]  # newest stamp per input topic
    _old_line: dict[str, int]  # after a jump: the newest stamps of the time line before it
    _old_line_until: float  # time.monotonic() until which late messages of that line are expected

    def __init__(self, node_name: str = P.NODE_NAME, *, context: Any = None, **kwargs: Any) -> None:
        super().__init__(node_name, context=context, **kwargs)
        self._declare_parameters()
        self.cfg = {p.name: self.get_parameter(p.name).value for p in P.PARAMS}
        for name, value in self.cfg.items():
            why = P.check_value(name, value)
            if why:
                raise StartupError(f"invalid parameter: {why}")
            self.cfg[name] = P.SPECS[name].type(value)  # int -> float where declared float
        try:
            self._config = P.pipeline_config(self.cfg)
        except ValueError as exc:
            raise StartupError(f"invalid parameters: {exc}") from exc
        self.stats = NodeStats()
        self.startup_error: StartupError | None = None  # why the last configure failed
        self._last_log: dict[str, float] = {}
        # The association state is shared by the executor thread and the compressed-image
        # decoder thread: every change to it happens under this lock.
        self._lock = threading.RLock()
        self._closed = False
        self._restorer: Any = None
        self.pipeline: RestorationPipeline | None = None
        self.worker: RestoreWorker[_Job] | None = None
        self._decoder: RestoreWorker[_Compressed] | None = None
        self._input_subs: list[Any] = []
        self._active_timers: list[Any] = []
        self._call_s: float | None = None  # smoothed duration of successful restore calls
        self._seq = 0
        self.sequencer = OutputSequencer(self._emit, self.cfg["max_pending_output"])
        self._reset_association()
        if hasattr(self, "add_post_set_parameters_callback"):  # rclpy of Iron and later
            self.add_on_set_parameters_callback(self._check_parameters)
            self.add_post_set_parameters_callback(self._apply_parameters)
        else:  # Humble's rclpy: apply from the check callback once every change is valid
            self.add_on_set_parameters_callback(self._check_and_apply_parameters)

    @property
    def autostart(self) -> bool:
        return bool(self.cfg["autostart"])

    # -- lifecycle transitions (executor thread) ----------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        c = self.cfg
        try:
            self._restorer = self._create_backend()
        except StartupError as exc:
            self.startup_error = exc
            self.get_logger().error(str(exc))
            return TransitionCallbackReturn.FAILURE
        self.startup_error = None
        self.pipeline = RestorationPipeline(self._config, self._restorer)
        self._reset_association()
        # A backend that takes parallel calls (fusion: OpenCV and numpy release the GIL) uses more than one core.
        threads = c["worker_threads"] if getattr(self._restorer, "parallel_calls", False) else 1
        self.worker = RestoreWorker(self._run_job, c["queue_size"], c["drop_policy"], self._on_job_dropped, self._on_job_crash,
                                    threads=threads)
        if c["input_transport"] == "compressed":
            # Decoding a VGA JPEG takes milliseconds: off the executor thread, one thread keeps the order.
            self._decoder = RestoreWorker(self._decode, 2 * c["qos_depth"], "drop_oldest", self._on_decode_dropped,
                                          self._on_decode_crash, name="sirdiff-decoder")
        out_qos = QoSProfile(depth=c["output_qos_depth"], history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_image = self.create_lifecycle_publisher(Image, c["output_image_topic"], out_qos)
        self.pub_info = self.create_lifecycle_publisher(CameraInfo, c["output_camera_info_topic"], out_qos)
        self.pub_kfs = self.create_lifecycle_publisher(KeyframeSet, c["keyframe_set_topic"], out_qos)
        self.pub_status = self.create_lifecycle_publisher(RestoreStatus, c["status_topic"], 10)
        self.pub_diag = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", 10)
        choice = getattr(self._restorer, "device_choice", None)
        device = choice.describe() if choice is not None else f"device {self._restorer.device}"
        self.get_logger().info(f"configured: backend {self._restorer.name!r} on {device}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        c = self.cfg
        in_qos = QoSProfile(
            depth=c["qos_depth"],
            history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.BEST_EFFORT if c["qos_reliability"] == "best_effort" else ReliabilityPolicy.RELIABLE,
        )
        image_topic = self.resolve_topic_name(c["image_topic"])
        if c["input_transport"] == "compressed":
            # image_transport's naming: the compressed stream of `image` is `image/compressed`,
            # after remapping of the base name.
            image_topic += "/compressed"
            subs = [self.create_subscription(CompressedImage, image_topic, self._on_compressed, in_qos)]
        else:
            # Taken serialized: an image that goes out unchanged is republished as the bytes that came.
            subs = [self.create_subscription(Image, image_topic, self._on_image, in_qos, raw=True)]
        subs.append(self.create_subscription(CameraInfo, c["camera_info_topic"], self._on_camera_info, in_qos, raw=True))
        pose_cls = PoseStamped if c["pose_type"] == "pose_stamped" else Odometry
        subs.append(self.create_subscription(pose_cls, c["pose_topic"], self._on_pose, in_qos))
        if c["fallback_pose_topic"]:
            fb_cls = PoseStamped if c["fallback_pose_type"] == "pose_stamped" else Odometry
            subs.append(self.create_subscription(fb_cls, c["fallback_pose_topic"], self._on_fallback_pose, in_qos))
        if c["depth_topic"]:
            subs.append(self.create_subscription(Image, c["depth_topic"], self._on_depth, in_qos))
        self._input_subs = subs
        # Steady-clock timers: deadlines are wall time, and with use_sim_time a paused or
        # rewound /clock must not stop them.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._active_timers = [
            self.create_timer(_HOUSEKEEPING_PERIOD_S, self._housekeeping, clock=steady),
            self.create_timer(c["diagnostics_period_s"], self._publish_diagnostics, clock=steady),
        ]
        self.get_logger().info(
            f"active: restoring {image_topic} -> {self.resolve_topic_name(c['output_image_topic'])} "
            f"with backend {self._restorer.name!r} on {self._restorer.device}, mode {c['mode']}"
        )
        return super().on_activate(state)  # activates the lifecycle publishers

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._finish_in_flight()
        self._publish_diagnostics()  # the final counts, while the publishers are still active
        self.get_logger().info(f"inactive: {self._totals()}")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("unconfigured: backend released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if state.label == "active":
            self._stop_inputs()
            self._finish_in_flight()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._release()
        return TransitionCallbackReturn.SUCCESS  # back to unconfigured: configure may be tried again

    def _stop_inputs(self) -> None:
        for sub in self._input_subs:
            self.destroy_subscription(sub)
        for timer in self._active_timers:
            self.destroy_timer(timer)
        self._input_subs, self._active_timers = [], []
        if self._decoder is not None:
            self._decoder.wait_idle(_DRAIN_TIMEOUT_S)  # received images still being decoded go on

    def _release(self) -> None:
        """Stop the threads and drop the backend, its weights and the publishers."""
        for worker in (self.worker, self._decoder):
            if worker is not None:
                worker.stop(_DRAIN_TIMEOUT_S)
        self.worker = self._decoder = None
        for name in ("pub_image", "pub_info", "pub_kfs", "pub_status", "pub_diag"):
            pub = self.__dict__.pop(name, None)
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self.pipeline = None
        self._restorer = None
        release_memory()

    # -- set-up ---------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        for p in P.PARAMS:
            # dynamic_typing: `latency_budget_s: 1` in a YAML file is an integer; check_value
            # accepts it for a float parameter and rejects every other mismatch with a reason.
            d = ParameterDescriptor(description=p.description, read_only=p.read_only, dynamic_typing=True)
            if p.choices:
                d.additional_constraints = "one of: " + ", ".join(p.choices)
            if p.type is int and p.min is not None and p.max is not None:
                d.integer_range = [IntegerRange(from_value=int(p.min), to_value=int(p.max), step=0)]
            elif p.type is float and p.min is not None and p.max is not None:
                d.floating_point_range = [FloatingPointRange(from_value=float(p.min), to_value=float(p.max), step=0.0)]
            try:
                self.declare_parameter(p.name, p.default, d)
            except Exception as exc:  # rclpy raises several classes for bad overrides
                raise StartupError(f"invalid parameter {p.name}: {exc}") from exc

    def _create_backend(self) -> Any:
        c = self.cfg
        options: dict[str, Any] = {"device": c["device"]}
        if c["checkpoint"]:
            options["checkpoint"] = c["checkpoint"]
        if c["steps"]:
            options["steps"] = c["steps"]
        try:
            return create_restorer(c["backend"], **options)
        except Exception as exc:  # noqa: BLE001 - any failure here is a start-up failure
            detail = f" (checkpoint {c['checkpoint']!r})" if c["checkpoint"] else ""
            raise StartupError(f"cannot create backend {c['backend']!r}{detail}: {type(exc).__name__}: {exc}") from exc

    def _check_parameters(self, changes: list[Any]) -> SetParametersResult:
        for change in changes:
            why = P.check_value(change.name, change.value)
            if why:
                return SetParametersResult(successful=False, reason=why)
        return SetParametersResult(successful=True)

    def _check_and_apply_parameters(self, changes: list[Any]) -> SetParametersResult:
        result = self._check_parameters(changes)
        if result.successful:
            self._apply_parameters(changes)
        return result

    def _apply_parameters(self, changes: list[Any]) -> None:
        for change in changes:
            self.cfg[change.name] = P.SPECS[change.name].type(change.value)
            if change.name == "drop_policy" and self.worker is not None:
                self.worker.policy = change.value

    # -- inputs (executor thread; compressed images: decoder thread) ---------------------
    def _on_image(self, serialized: bytes) -> None:
        self.stats.on_received()
        now = time.monotonic()
        try:
            msg = parse_serialized_image(serialized)
            image = image_from_msg(msg, self.cfg["max_image_pixels"])
        except (InputRejected, ImageDecodeError) as exc:
            return self._drop(exc.kind, f"image rejected: {exc}")
        self._accept_image(msg, image, now)

    def _on_compressed(self, msg: CompressedImage) -> None:
        self.stats.on_received()
        if self._decoder is not None:
            self._decoder.submit(_Compressed(msg, time.monotonic()))

    def _decode(self, item: _Compressed) -> None:
        msg = item.msg
        try:
            image = decode_compressed(msg.data, msg.format, self.cfg["max_image_pixels"])
        except ImageDecodeError as exc:
            return self._drop(exc.kind, f"compressed image rejected: {exc}")
        raw = Image(header=msg.header, height=image.shape[0], width=image.shape[1], encoding="rgb8" if image.ndim == 3 else "mono8")
        raw.step, raw.data = encode_image(image, raw.encoding)
        self._accept_image(raw, image, item.arrival)

    def _on_decode_dropped(self, item: _Compressed) -> None:
        self._drop(DropReason.DECODE_BACKLOG, f"decoder queue full ({2 * self.cfg['qos_depth']} images, 2 x qos_depth)")

    def _on_decode_crash(self, item: _Compressed, exc: BaseException) -> None:
        self._drop(DropReason.BAD_COMPRESSED, f"decoding crashed: {exc!r}")

    def _accept_image(self, msg: Image | SerializedImage, image: Any, arrival: float) -> None:
        """A decoded image (its raw Image message and its array) enters association."""
        c = self.cfg
        if c["expected_frame_id"] and msg.header.frame_id != c["expected_frame_id"]:
            return self._drop(DropReason.WRONG_FRAME_ID, f"image frame_id {msg.header.frame_id!r} is not {c['expected_frame_id']!r}")
        stamp = stamp_to_ns(msg.header.stamp)
        with self._lock:
            if self._on_time_line("image", stamp):  # else a late image of the previous line: it goes out first
                if self._last_stamp_ns is not None and stamp <= self._last_stamp_ns:
                    kind = DropReason.DUPLICATE_STAMP if stamp == self._last_stamp_ns else DropReason.STAMP_BACKWARDS
                    return self._drop(kind, f"image stamp {stamp} ns is not after the previous {self._last_stamp_ns} ns")
                self._last_stamp_ns = stamp
            matched, evicted = self._sync.add(0, stamp, _Input(msg, image, stamp, arrival), arrival)
            self._handle_sync(matched, evicted)

    def _on_camera_info(self, serialized: bytes) -> None:
        now = time.monotonic()
        try:
            msg = parse_serialized_camera_info(serialized)
        except InputRejected as exc:
            return self._reject(f"camera_info_{exc.kind}", str(exc))
        stamp = stamp_to_ns(msg.header.stamp)
        with self._lock:
            self._on_time_line("camera_info", stamp)  # late ones of the previous line still pair with their image
            matched, evicted = self._sync.add(1, stamp, msg, now)
            self._handle_sync(matched, evicted)

    def _on_depth(self, msg: Image) -> None:
        try:
            depth = depth_from_msg(msg, self.cfg["max_image_pixels"])
        except ImageDecodeError as exc:
            return self._reject(f"depth_{exc.kind}", f"depth image rejected: {exc}")
        stamp = stamp_to_ns(msg.header.stamp)
        with self._lock:
            self._on_time_line("depth", stamp)  # depth pairs by stamp: late ones of the previous line do no harm
            self._depths.append((stamp, depth))
            self._release_awaiting_pose(time.monotonic())

    def _on_pose(self, msg: Any) -> None:
        wf = self.cfg["world_frame"]
        if wf and msg.header.frame_id != wf:
            return self._reject(DropReason.POSE_WRONG_FRAME, f"pose frame_id {msg.header.frame_id!r} is not {wf!r}")
        try:
            pose = pose_from_msg(msg, self.cfg["pose_type"])
        except InputRejected as exc:
            return self._reject(exc.kind, str(exc))
        stamp = stamp_to_ns(msg.header.stamp)
        with self._lock:
            if not self._on_time_line("pose", stamp):  # the pose history holds the new line only
                return self._reject("pose_time_jump", f"pose stamp {stamp} ns belongs to the time line before the jump")
            if not self._poses.add(stamp, pose):
                return self._reject(DropReason.POSE_STAMP_BACKWARDS, f"pose stamp {stamp} ns is not after {self._poses.latest_stamp_ns} ns")
            self._release_awaiting_pose(time.monotonic())

    def _on_fallback_pose(self, msg: Any) -> None:
        try:
            pose = pose_from_msg(msg, self.cfg["fallback_pose_type"])
        except InputRejected as exc:
            return self._reject(f"fallback_{exc.kind}", str(exc))
        stamp = stamp_to_ns(msg.header.stamp)
        with self._lock:
            if not self._on_time_line("fallback_pose", stamp):
                return self._reject("fallback_pose_time_jump", f"fallback pose stamp {stamp} ns belongs to the time line before the jump")
            if not self._fallback_poses.add(stamp, pose):
                return self._reject(f"fallback_{DropReason.POSE_STAMP_BACKWARDS}",
                                    f"fallback pose stamp {stamp} ns is not after {self._fallback_poses.latest_stamp_ns} ns")

    # -- time jumps (lock held) -------------------------------------------------------------
    def _on_time_line(self, topic: str, stamp_ns: int) -> bool:
        """Whether a message belongs to the current time line; starts a new one when
        ``topic``'s stamps jump back by more than ``time_jump_threshold_s``.

        Topics are not ordered among each other: after a jump seen on one topic,
        another may still deliver messages of the old line (the last image of a
        bag pass after the first pose of the next). Until such a topic delivers a
        message of the new line, one stamped near or after its old newest is
        such a late message: False.
        """
        threshold = int(self.cfg["time_jump_threshold_s"] * 1e9)
        last = self._newest.get(topic)
        if last is None:
            old = self._old_line.get(topic)
            if old is not None and stamp_ns > old - threshold and time.monotonic() < self._old_line_until:
                return False
            self._newest[topic] = stamp_ns
            return True
        self._newest[topic] = max(last, stamp_ns)
        if last - stamp_ns > threshold:
            self._new_time_line(topic, last, stamp_ns)
        return True

    def _new_time_line(self, topic: str, last_ns: int, stamp_ns: int) -> None:
        """The stamps jumped back: publish what the old line has in flight, then start afresh."""
        self.stats.on_time_jump()
        self.get_logger().warning(
            f"time jumped back by {(last_ns - stamp_ns) / 1e9:.3f} s on {topic} (bag loop, driver restart or /clock reset): "
            f"pose history, keyframes and output order reset [{self.stats.time_jumps} so far]"
        )
        self._release_awaiting_pose(time.monotonic(), final=True)  # with the old line's poses
        if self.worker is not None:
            for job in self.worker.take_pending():
                self.sequencer.resolve(job.seq, self._passed_through(job.src, PassReason.TIME_JUMP))
        self.sequencer.flush(PassReason.TIME_JUMP)  # partners of the old line would be wrong
        if self.pipeline is not None:
            self.pipeline.reset()
        c = self.cfg
        self._poses, self._fallback_poses = self._new_pose_history(), self._new_pose_history()
        self._last_stamp_ns = None
        # Images still pairing keep their place in the synchronizer (it matches by stamp); late
        # messages of the old line arrive within the pairing time, not later.
        self._old_line, self._old_line_until = dict(self._newest), time.monotonic() + max(1.0, 2 * c["sync_timeout_s"])
        self._old_line[topic] = last_ns
        self._newest = {topic: stamp_ns}

    def _new_pose_history(self) -> PoseHistory:
        """An empty pose history sized by the parameters (SLAM's poses and the fallback's alike)."""
        return PoseHistory(self.cfg["pose_history_size"], int(self.cfg["pose_extrapolation_s"] * 1e9))

    def _reset_association(self) -> None:
        c = self.cfg
        self._sync = ApproxTimeSync(2, c["sync_queue_size"], int(c["sync_slop_s"] * 1e9), c["sync_timeout_s"])
        self._poses, self._fallback_poses = self._new_pose_history(), self._new_pose_history()
        self._awaiting_pose = deque()
        self._depths = deque(maxlen=c["sync_queue_size"])
        self._last_stamp_ns = None
        self._newest = {}
        self._old_line, self._old_line_until = {}, 0.0

    def _finish_in_flight(self) -> None:
        """Publish or count every image in flight (deactivation).

        Images waiting for camera_info are dropped (``deactivated``); images waiting
        for a pose are admitted with what the history has; targets not yet started
        are published as originals (``shutdown``); the running one may finish.
        """
        with self._lock:
            for ev in self._sync.flush():
                if ev.input_index == 0:
                    self._drop(DropReason.DEACTIVATED, f"image stamp {ev.stamp_ns} ns had no camera_info yet")
            self._release_awaiting_pose(time.monotonic(), final=True)
            if self.worker is not None:
                for job in self.worker.take_pending():
                    self.sequencer.resolve(job.seq, self._passed_through(job.src, PassReason.SHUTDOWN))
                self.worker.wait_idle(_DRAIN_TIMEOUT_S)
            self.sequencer.flush(PassReason.SHUTDOWN)

    # -- association (lock held) ---------------------------------------------------------
    def _handle_sync(self, matched: list[list[Any]], evicted: list[Any]) -> None:
        for ev in evicted:
            if ev.input_index == 0:
                self._drop(DropReason.NO_CAMERA_INFO, f"image stamp {ev.stamp_ns} ns: {self._unpaired_why(ev.why)}")
        for src, info in matched:
            self._associated(src, info)

    def _associated(self, src: _Input, info: SerializedCameraInfo) -> None:
        try:
            src.intrinsics = camera_info_to_intrinsics(info)
        except InputRejected as exc:
            return self._drop(exc.kind, str(exc))
        h, w = src.image.shape[:2]
        if (src.intrinsics.width, src.intrinsics.height) != (w, h):
            return self._drop(
                DropReason.CAMERA_INFO_MISMATCH,
                f"camera_info is for {src.intrinsics.width}x{src.intrinsics.height} but the image is {w}x{h}",
            )
        src.info = info
        self._awaiting_pose.append(src)
        self._release_awaiting_pose(time.monotonic())

    def _depth_for(self, src: _Input) -> Any:
        """The depth image paired with ``src`` by stamp (within ``sync_slop_s``, same size), or None."""
        if not self._depths:
            return None
        stamps = [s for s, _ in self._depths]
        j = nearest_within(stamps, src.stamp_ns, int(self.cfg["sync_slop_s"] * 1e9))
        if j is None or self._depths[j][1].shape != src.image.shape[:2]:
            return None
        return self._depths[j][1]

    def _release_awaiting_pose(self, now: float, final: bool = False) -> None:
        """Admit images, in order, once their pose (and depth image, with ``depth_topic``) is
        known or their wait is over."""
        wait = self.cfg["pose_wait_s"]
        while self._awaiting_pose:
            src = self._awaiting_pose[0]
            last_chance = final or now - src.arrival >= wait or len(self._awaiting_pose) > self.cfg["max_pending_output"]
            if self.cfg["depth_topic"] and src.depth is None:
                # Depth comes on its own subscription: it may be on its way while the image waits.
                src.depth = self._depth_for(src)
                if src.depth is None and not last_chance:
                    return
            found = self._poses.lookup(src.stamp_ns, final=last_chance)
            if found is PoseLookup.PENDING:
                return
            self._awaiting_pose.popleft()
            pose = None if isinstance(found, PoseLookup) else found
            source = "pose_topic"
            if pose is None and self.cfg["fallback_pose_topic"]:
                # SLAM has no pose here (lost, or not yet initialised): continue its last one with the fallback's motion.
                pose = bridged_pose(self._poses, self._fallback_poses, src.stamp_ns)
                source = "fallback"
            self.stats.on_pose_source(source if pose is not None else "none")
            if self.cfg["depth_topic"]:
                self.stats.on_depth(src.depth is not None)
            self._admit(src, pose)

    def _admit(self, src: _Input, pose: Any) -> None:
        assert self.pipeline is not None and self.worker is not None  # images flow only while configured
        seq = self._seq
        self._seq += 1
        try:
            frame = Frame(src.image, src.stamp_ns, src.intrinsics, pose, src.depth, src.msg.header.frame_id, seq)
        except FrameError as exc:
            return self._drop(DropReason.BAD_FRAME, f"frame rejected: {exc}")
        decision = self.pipeline.ingest(frame)
        self.stats.on_decision(decision.is_keyframe, decision.is_target)
        if self.cfg["mode"] == "keyframes" and not decision.is_keyframe:
            return self._drop(DropReason.NOT_KEYFRAME, "", log=False)
        if not decision.is_target:
            return self.sequencer.add_ready(seq, _Output(src, src.msg, reason=decision.reason))
        budget = self.cfg["latency_budget_s"] if self.cfg["mode"] == "stream" else float("inf")
        deadline = src.arrival + budget
        self.sequencer.add_pending(seq, deadline, lambda reason: self._passed_through(src, reason))
        self.worker.submit(_Job(seq, src, decision, deadline))

    # -- restoration (worker thread) --------------------------------------------------------
    def _run_job(self, job: _Job) -> None:
        pipeline, worker = self.pipeline, self.worker
        if pipeline is None or worker is None or not self.sequencer.is_pending(job.seq):
            return  # its original already went out (latency budget, time jump): spend the time on a fresh target
        if self._call_s is not None and time.monotonic() + self._call_s > job.deadline:
            # Would miss its budget anyway: release the stream now instead of at the deadline.
            self.sequencer.resolve(job.seq, self._passed_through(job.src, PassReason.LATENCY_BUDGET))
            return
        outcome = pipeline.restore(job.decision, num_views=self._views_under_load(worker))
        self.stats.on_restore_call(outcome.latency_s * 1e3, outcome.error)
        if outcome.error is None:
            # Smoothed restore-call time, for the check above.
            s = outcome.latency_s
            self._call_s = s if self._call_s is None else 0.8 * self._call_s + 0.2 * s
        if outcome.error is not None:
            self._log_throttled("backend_error", f"backend failed, publishing the original: {outcome.error!r}", error=True)
        if worker.stopping:
            return
        msg = output_image_msg(job.src.msg, outcome.image) if outcome.restored else job.src.msg
        out = _Output(job.src, msg, target=True, restored=outcome.restored, reason=outcome.reason)
        out.keyframe_set = outcome.keyframe_set_fields()
        self.sequencer.resolve(job.seq, out)

    def _views_under_load(self, worker: RestoreWorker[_Job]) -> int | None:
        """``num_views_under_load`` while other targets wait for a worker, else None (``num_views``)."""
        n = self.cfg["num_views_under_load"]
        if 0 < n < self.cfg["num_views"] and worker.depth > 0:
            self.stats.on_fewer_views()
            return n
        return None

    def _on_job_dropped(self, job: _Job) -> None:
        self.sequencer.resolve(job.seq, self._passed_through(job.src, PassReason.QUEUE_FULL))

    def _on_job_crash(self, job: _Job, exc: BaseException) -> None:
        # pipeline.restore never raises for backend failures; this is a bug path, kept alive.
        self.stats.on_restore_call(0.0, exc)
        self._log_throttled("worker_error", f"restoration crashed, publishing the original: {exc!r}", error=True)
        self.sequencer.resolve(job.seq, self._passed_through(job.src, PassReason.BACKEND_ERROR))

    def _passed_through(self, src: _Input, reason: str) -> _Output:
        """A target published as its original: KeyframeSet without views, reason given."""
        fields = {  # the header is the image's, set when published
            "target_stamp": src.stamp_ns,
            "backend": self._restorer.name,
            "device": str(self._restorer.device),
            "outcome": Outcome.PASSED_THROUGH,
            "reason": reason,
        }
        return _Output(src, src.msg, target=True, restored=False, reason=reason, keyframe_set=fields)

    # -- output (under the sequencer lock) ----------------------------------------------------
    def _emit(self, out: _Output) -> None:
        if self._closed:
            return
        msg = out.image_msg
        self.pub_image.publish(msg.serialized if isinstance(msg, SerializedImage) else msg)
        info = out.src.info
        assert info is not None  # only images paired with a camera_info get this far
        self.pub_info.publish(info.for_header(msg.header))  # the output pair shares the image's header
        e2e_ms = (time.monotonic() - out.src.arrival) * 1e3
        if out.target:
            kfs = fill_message(KeyframeSet(), out.keyframe_set or {}, {"views": ViewInfo})
            kfs.header = out.src.msg.header
            kfs.end_to_end_ms = float(e2e_ms)
            if not out.restored:
                kfs.outcome, kfs.reason = Outcome.PASSED_THROUGH, out.reason
            self.pub_kfs.publish(kfs)
            self.stats.on_target_done(out.restored, out.reason, e2e_ms)
        self.stats.on_published()

    # -- housekeeping, counting, logging --------------------------------------------------------
    def _housekeeping(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._handle_sync([], self._sync.expire(now))
            self._release_awaiting_pose(now)
        self.sequencer.expire(now)

    def _unpaired_why(self, why: str) -> str:
        """Why the synchronizer gave up on an image (``Evicted.why``), naming the parameter that decided."""
        c = self.cfg
        match = f"a camera_info stamped within sync_slop_s={c['sync_slop_s']} s"
        if why == "overflow":
            return f"{c['sync_queue_size']} newer images arrived before {match} (sync_queue_size)"
        return f"no {match} arrived within sync_timeout_s={c['sync_timeout_s']} s"

    def in_flight(self) -> int:
        """Images received and accepted so far but neither published nor dropped yet."""
        decoding = 0 if self._decoder is None else self._decoder.depth + int(self._decoder.busy)
        with self._lock:
            return decoding + self._sync.pending(0) + len(self._awaiting_pose) + len(self.sequencer)

    def _drop(self, reason: str, why: str, log: bool = True) -> None:
        self.stats.on_dropped(reason)
        if log:
            self._log_throttled(reason, f"dropped image ({reason}): {why}")

    def _reject(self, kind: str, why: str) -> None:
        self.stats.on_rejected(kind)
        self._log_throttled(kind, f"rejected input ({kind}): {why}")

    def _log_throttled(self, kind: str, text: str, error: bool = False) -> None:
        """At most one line per kind per ``log_throttle_s``, with the running count."""
        now = time.monotonic()
        if now - self._last_log.get(kind, -1e18) < self.cfg["log_throttle_s"]:
            return
        self._last_log[kind] = now
        s = self.stats
        count = s.dropped.get(kind) or s.rejected.get(kind) or ""
        line = f"{text}" + (f" [{count} so far]" if count else "")
        (self.get_logger().error if error else self.get_logger().warning)(line)

    def snapshot(self) -> StatsSnapshot:
        worker = self.worker
        depth = worker.depth if worker is not None else 0
        problem = "worker queue full" if worker is not None and depth >= worker.capacity else ""
        snap = self.stats.snapshot(problem)
        snap.extra = {"in_flight": str(self.in_flight()), "queue_depth": str(depth)}
        return snap

    def _publish_diagnostics(self) -> None:
        if self._restorer is None or self.worker is None:
            return
        snap = self.snapshot()
        now_msg = self.get_clock().now().to_msg()
        st = RestoreStatus()
        st.header.stamp = now_msg
        st.backend, st.device, st.mode = self._restorer.name, str(self._restorer.device), self.cfg["mode"]
        st.images_received, st.images_published, st.images_restored = snap.received, snap.published, snap.restored
        st.images_passed_through, st.keyframes, st.restoration_targets = snap.passed_through, snap.keyframes, snap.targets
        st.in_flight = int(snap.extra["in_flight"])
        st.dropped_total = snap.dropped_total
        st.drop_reasons = [str(k) for k in snap.dropped]
        st.drop_counts = [int(v) for v in snap.dropped.values()]
        st.input_rate_hz, st.output_rate_hz = snap.input_rate_hz, snap.output_rate_hz
        st.latency_ms_p50, st.latency_ms_p90, st.latency_ms_p99 = snap.latency_ms
        st.queue_depth, st.queue_capacity = int(snap.extra["queue_depth"]), self.worker.capacity
        st.time_jumps = snap.time_jumps
        st.last_error = snap.last_error
        self.pub_status.publish(st)

        ds = DiagnosticStatus(level=bytes([snap.level]), name=f"{self.get_name()}: restoration", message=snap.message)
        ds.hardware_id = f"{self._restorer.name}@{self._restorer.device}"
        kv = {
            "backend": self._restorer.name,
            "device": str(self._restorer.device),
            "mode": self.cfg["mode"],
            "input_rate_hz": f"{snap.input_rate_hz:.2f}",
            "output_rate_hz": f"{snap.output_rate_hz:.2f}",
            "restore_latency_ms_p50": f"{snap.latency_ms[0]:.1f}",
            "restore_latency_ms_p90": f"{snap.latency_ms[1]:.1f}",
            "restore_latency_ms_p99": f"{snap.latency_ms[2]:.1f}",
            "end_to_end_ms_p50": f"{snap.end_to_end_ms[0]:.1f}",
            "end_to_end_ms_p99": f"{snap.end_to_end_ms[2]:.1f}",
            "queue_depth": snap.extra["queue_depth"],
            "queue_capacity": str(self.worker.capacity),
            "in_flight": snap.extra["in_flight"],
            "received": str(snap.received),
            "published": str(snap.published),
            "restored": str(snap.restored),
            "passed_through": str(snap.passed_through),
            "dropped_total": str(snap.dropped_total),
            "targets_with_fewer_views": str(snap.fewer_views),
            "time_jumps": str(snap.time_jumps),
            "last_error": snap.last_error,
        }
        kv.update({f"pose_source.{k}": str(v) for k, v in snap.pose_sources.items()})
        kv.update({f"depth.{k}": str(v) for k, v in snap.depth_images.items()})
        kv.update({f"dropped.{k}": str(v) for k, v in snap.dropped.items()})
        kv.update({f"passed_through.{k}": str(v) for k, v in snap.passthrough_reasons.items()})
        kv.update({f"rejected.{k}": str(v) for k, v in snap.rejected.items()})
        ds.values = [KeyValue(key=k, value=v) for k, v in kv.items()]
        self.pub_diag.publish(DiagnosticArray(header=st.header, status=[ds]))

    def _totals(self) -> str:
        snap = self.stats.snapshot()
        return (
            f"received {snap.received}, published {snap.published}, dropped {snap.dropped_total} "
            f"{dict(snap.dropped)}, in flight {self.in_flight()}, restored {snap.restored}, "
            f"pose sources {dict(sorted(snap.pose_sources.items()))}"
        )

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop the threads (waits up to ``timeout_s`` for a running restoration), release
        the backend and log the totals. For process exit: no lifecycle transition."""
        if self._closed:
            return
        for worker in (self._decoder, self.worker):
            if worker is not None:
                worker.stop(timeout_s)
        self._closed = True
        line = f"shutting down: {self._totals()}"
        if self.context.ok():
            self.get_logger().info(line)
        else:  # after SIGINT the context is gone and /rosout with it
            print(f"[{self.get_name()}] {line}", file=sys.stderr, flush=True)
        self._restorer = self.pipeline = None
        release_memory()


def release_memory() -> None:
    """Return freed model memory: collect the released objects, empty torch's GPU caches."""
    gc.collect()
    torch = sys.modules.get("torch")  # never imported here by CPU-only backends
    if torch is None:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()


def main(args: list[str] | None = None) -> int:
    """``sirdiff-restore [--ros-args ...]``; exit code 2 when the configuration is unusable.

    With ``autostart`` (default) the node is configured and activated here; a
    configuration that fails then ends the process. Without it the node waits
    for lifecycle transitions.
    """
    return run_node("sirdiff-restore", RestoreNode, (StartupError,), _autostart, args)


def _autostart(node: RestoreNode) -> str | None:
    """Configure and activate when ``autostart`` is set; the reason when configure fails."""
    if not node.autostart:
        return None
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        return str(node.startup_error or "configure failed")
    node.trigger_activate()
    return None


if __name__ == "__main__":
    sys.exit(main())
