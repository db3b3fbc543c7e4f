"""ORB-SLAM3 as a consumer of image streams: settings, a tracker, runs and metrics.

ROS-free. The ``pyorbslam3`` bindings (GPL-3.0) and ``evo`` are the optional
extra ``sirdiff_ros[slam]``; importing this module does not need them, using
the tracker does (:class:`SlamUnavailable` says how to install them).

* :func:`settings_yaml` - ORB-SLAM3 settings (the OpenCV-YAML format of its
  examples, ``Viewer.*`` keys included, which the constructor requires) from
  :class:`~sirdiff_ros.core.geometry.CameraIntrinsics` and a mode;
* :class:`OrbSlam` - one ORB-SLAM3 system in this process; ``track`` returns
  the tracking state and ``T_world_cam`` of each frame;
* :func:`run_orbslam` - a whole stream through ORB-SLAM3 in a child process
  (a crash of the C++ library ends that run, not the caller), paced at the
  camera's frame rate like a live camera, so that ORB-SLAM3's mapping
  threads get the time they would get on a robot;
* :func:`slam_metrics` - tracked fraction, lost frames, map resets, ATE / RPE
  against ground-truth poses (computed with ``evo``).

States are ORB-SLAM3's names: ``NOT_INITIALIZED``, ``OK``, ``RECENTLY_LOST``
(pose predicted by the motion model while relocalising), ``LOST`` (the map is
abandoned and a new one started).
"""

from __future__ import annotations

import math
import os
import pickle
import select
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np

from ..core.geometry import CameraIntrinsics, Pose

__all__ = [
    "MODES",
    "DEFAULT_FEATURES",
    "STATES",
    "SlamUnavailable",
    "SlamInput",
    "SlamRun",
    "OrbSlam",
    "parse_slam_spec",
    "settings_yaml",
    "stereo_baseline_m",
    "run_orbslam",
    "slam_metrics",
    "segments",
]

MODES = ("mono", "rgbd", "stereo")
# Tracking states in the order of the timeline plot; CRASHED marks frames a dead run never saw.
STATES = ("NOT_INITIALIZED", "OK", "RECENTLY_LOST", "LOST", "CRASHED")
# ORB features per frame by mode. Monocular needs more: it maps only what it
# triangulates between keyframes (RGB-D maps every feature with depth), and
# on the `slam` preset's held-out sequences 2000 kept the map through walls
# of repeated texture where 1200 lost it (ORB-SLAM3's own monocular examples
# use 1000-2000 at lower resolutions).
DEFAULT_FEATURES = {"mono": 2000, "rgbd": 1200, "stereo": 1200}
INSTALL_HINT = "pip install 'sirdiff_ros[slam]' (or: pip install -r requirements/slam.txt)"


class SlamUnavailable(RuntimeError):
    """pyorbslam3 / evo are not installed."""


def require_slam() -> Any:
    """The ``pyorbslam3`` module, or SlamUnavailable with the install command."""
    try:
        import pyorbslam3
    except ImportError as exc:
        raise SlamUnavailable(f"ORB-SLAM3 needs the optional extra: {INSTALL_HINT} ({exc})") from exc
    return pyorbslam3


def parse_slam_spec(spec: str) -> str:
    """``orbslam3``, ``orbslam3:mono``, ``orbslam3:rgbd``, ``orbslam3:stereo`` -> the mode (default mono)."""
    system, _, mode = spec.partition(":")
    if system.strip().lower() != "orbslam3":
        raise ValueError(f"unknown SLAM system {system!r}: only 'orbslam3[:mono|rgbd|stereo]' is supported")
    mode = mode.strip().lower() or "mono"
    if mode not in MODES:
        raise ValueError(f"unknown ORB-SLAM3 mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def stereo_baseline_m(right_projection: Sequence[float]) -> float:
    """Baseline (m) of a rectified pair from the right camera's CameraInfo ``P`` (``P[3] = -fx * B``)."""
    p = [float(v) for v in right_projection]
    if len(p) != 12 or p[0] <= 0:
        raise ValueError("the right camera's projection matrix P must have 12 values with fx > 0")
    baseline = -p[3] / p[0]
    if not baseline > 0:
        raise ValueError(f"right camera P[3] = {p[3]} gives no positive baseline (is it the left camera?)")
    return baseline


def settings_yaml(intrinsics: CameraIntrinsics, mode: str, fps: float, *, baseline_m: float | None = None,
                  features: int | None = None, depth_threshold_m: float = 6.0) -> str:
    """ORB-SLAM3 settings for a pinhole camera with rectified, undistorted images.

    ``features``: ORB features per frame (None: the mode's :data:`DEFAULT_FEATURES`).
    ``rgbd`` takes float32 depth in metres (``DepthMapFactor: 1``); its
    ``Camera.bf`` uses a virtual 8 cm baseline, which only sets what counts
    as a close point (``depth_threshold_m``). ``stereo`` needs ``baseline_m``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be positive, got {fps}")
    if features is None:
        features = DEFAULT_FEATURES[mode]
    if features < 100:
        raise ValueError(f"features must be >= 100, got {features}")
    K = intrinsics
    lines = [
        "%YAML:1.0",
        'Camera.type: "PinHole"',
        f"Camera.fx: {K.fx:.6f}",
        f"Camera.fy: {K.fy:.6f}",
        f"Camera.cx: {K.cx:.6f}",
        f"Camera.cy: {K.cy:.6f}",
        *(f"Camera.{k}: 0.0" for k in ("k1", "k2", "p1", "p2")),
        f"Camera.width: {K.width}",
        f"Camera.height: {K.height}",
        f"Camera.fps: {fps:.6f}",
        "Camera.RGB: 1",
    ]
    if mode != "mono":
        if mode == "stereo":
            if baseline_m is None or not baseline_m > 0:
                raise ValueError("stereo settings need the pair's baseline_m > 0")
            base = baseline_m
        else:
            base = 0.08
        lines += [f"Camera.bf: {K.fx * base:.6f}", f"ThDepth: {depth_threshold_m / base:.6f}"]
        if mode == "rgbd":
            lines.append("DepthMapFactor: 1.0")
    lines += [
        f"ORBextractor.nFeatures: {int(features)}",
        "ORBextractor.scaleFactor: 1.2",
        "ORBextractor.nLevels: 8",
        "ORBextractor.iniThFAST: 20",
        "ORBextractor.minThFAST: 7",
        # Unused without a viewer, but the settings parser requires them.
        "Viewer.KeyFrameSize: 0.05",
        "Viewer.KeyFrameLineWidth: 1.0",
        "Viewer.GraphLineWidth: 0.9",
        "Viewer.PointSize: 2.0",
        "Viewer.CameraSize: 0.08",
        "Viewer.CameraLineWidth: 3.0",
        "Viewer.ViewpointX: 0.0",
        "Viewer.ViewpointY: -0.7",
        "Viewer.ViewpointZ: -1.8",
        "Viewer.ViewpointF: 500.0",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class SlamInput:
    """One frame for ORB-SLAM3: ``image`` uint8 RGB or grey, ``depth`` float32 metres (rgbd), ``right`` (stereo)."""

    stamp_ns: int
    image: np.ndarray
    depth: np.ndarray | None = None
    right: np.ndarray | None = None


@dataclass
class TrackedFrame:
    stamp_ns: int
    state: str
    pose: Pose | None  # T_world_cam in ORB-SLAM3's map frame, when the state is OK
    points: int = 0


def _gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


class OrbSlam:
    """One ORB-SLAM3 system (no viewer). Use as a context manager or call :meth:`close`."""

    def __init__(self, vocabulary: str | Path, intrinsics: CameraIntrinsics, mode: str = "mono", fps: float = 10.0,
                 *, baseline_m: float | None = None, features: int | None = None) -> None:
        ps = require_slam()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        vocabulary = Path(vocabulary)
        if not vocabulary.is_file():
            raise FileNotFoundError(f"ORB vocabulary not found: {vocabulary}")
        self.mode = mode
        self.intrinsics = intrinsics
        self._ps = ps
        fd, self._settings = tempfile.mkstemp(prefix="orbslam3_", suffix=".yaml")
        with os.fdopen(fd, "w") as fh:
            fh.write(settings_yaml(intrinsics, mode, fps, baseline_m=baseline_m, features=features))
        sensor = {"mono": ps.Sensor.MONOCULAR, "rgbd": ps.Sensor.RGBD, "stereo": ps.Sensor.STEREO}[mode]
        try:
            self._slam = ps.Slam(str(vocabulary), self._settings, sensor, use_viewer=False)
        except Exception:
            os.unlink(self._settings)
            raise
        self._closed = False

    def track(self, frame: SlamInput) -> TrackedFrame:
        """Track one frame; the image size must match the intrinsics."""
        K = self.intrinsics
        if frame.image.shape[:2] != (K.height, K.width):
            raise ValueError(f"image is {frame.image.shape[1]}x{frame.image.shape[0]}, camera is {K.width}x{K.height}")
        t = frame.stamp_ns * 1e-9
        gray = _gray(frame.image)
        if self.mode == "rgbd":
            if frame.depth is None:
                raise ValueError("RGB-D tracking needs a depth image")
            depth = np.nan_to_num(np.asarray(frame.depth, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
            res = self._slam.track_rgbd(gray, depth, t)
        elif self.mode == "stereo":
            if frame.right is None:
                raise ValueError("stereo tracking needs the right image")
            res = self._slam.track_stereo(gray, _gray(frame.right), t)
        else:
            res = self._slam.track_monocular(gray, t)
        state = res.state.name
        if state in ("SYSTEM_NOT_READY", "NO_IMAGES_YET"):
            state = "NOT_INITIALIZED"
        elif state == "OK_KLT":
            state = "OK"
        pose = None
        if state == "OK" and res.pose_valid:
            T = np.asarray(res.pose_wc, np.float64)
            if np.all(np.isfinite(T)):
                # ORB-SLAM3 computes in float32: re-orthonormalise the rotation.
                u, _, vt = np.linalg.svd(T[:3, :3])
                pose = Pose(u @ vt, T[:3, 3])
        return TrackedFrame(frame.stamp_ns, state, pose, int(res.num_tracked_points))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._slam.shutdown()
            Path(self._settings).unlink(missing_ok=True)

    def __enter__(self) -> OrbSlam:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class SlamRun:
    """Per-frame result of one stream through ORB-SLAM3."""

    mode: str
    stamps_ns: list[int] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    poses: list[Pose | None] = field(default_factory=list)
    points: list[int] = field(default_factory=list)
    vocabulary: str = ""
    wall_s: float = 0.0
    error: str = ""

    def add(self, tracked: TrackedFrame) -> None:
        self.stamps_ns.append(tracked.stamp_ns)
        self.states.append(tracked.state)
        self.poses.append(tracked.pose)
        self.points.append(tracked.points)


class _Channel:
    """Length-prefixed pickles over a pair of pipes, with a timeout on reads."""

    def __init__(self, rfile: Any, wfile: Any) -> None:
        self.r, self.w = rfile, wfile

    def send(self, obj: Any) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        self.w.write(struct.pack("<Q", len(data)) + data)
        self.w.flush()

    def recv(self, timeout_s: float | None = None) -> Any:
        if timeout_s is not None and not select.select([self.r], [], [], timeout_s)[0]:
            raise TimeoutError(f"ORB-SLAM3 gave no answer in {timeout_s:.0f} s")
        head = self.r.read(8)
        if len(head) < 8:
            raise EOFError("ORB-SLAM3 process ended")
        (size,) = struct.unpack("<Q", head)
        data = self.r.read(size)
        if len(data) < size:
            raise EOFError("ORB-SLAM3 process ended mid-message")
        return pickle.loads(data)


def _worker_main() -> None:
    """Child process (``python -m sirdiff_ros.slam.orbslam``): track frames read from stdin.

    ORB-SLAM3 prints to stdout; the protocol keeps its own copy of the
    original stdout and points fd 1 at stderr (the caller's log file)."""
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    chan = _Channel(sys.stdin.buffer, proto_out)
    vocabulary, K, mode, fps, baseline_m, features = chan.recv()
    try:
        slam = OrbSlam(vocabulary, CameraIntrinsics(*K), mode, fps, baseline_m=baseline_m, features=features)
    except Exception as exc:
        chan.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    chan.send(("ready", None))
    try:
        while True:
            item = chan.recv()
            if item is None:
                break
            tr = slam.track(item)
            chan.send(("frame", (tr.stamp_ns, tr.state, None if tr.pose is None else tr.pose.matrix(), tr.points)))
    except Exception as exc:
        chan.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        slam.close()
    chan.send(("done", None))


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def run_orbslam(frames: Iterable[SlamInput], intrinsics: CameraIntrinsics, mode: str, vocabulary: str | Path, *,
                fps: float = 10.0, realtime: bool = True, baseline_m: float | None = None,
                features: int | None = None, timeout_s: float = 120.0, log_file: str | Path | None = None) -> SlamRun:
    """Track ``frames`` with ORB-SLAM3 in a child process; returns every frame's state and pose.

    ``realtime``: feed a frame no sooner than ``1 / fps`` after the previous
    one (a live camera's pace; ORB-SLAM3's local mapping runs in parallel
    threads and inserts fewer keyframes when frames come faster). A crash or
    hang of the child (``timeout_s`` without an answer) ends the run: frames
    not tracked are ``CRASHED`` and ``error`` says why. ORB-SLAM3's console
    output goes to ``log_file`` (a temporary file, removed, when not given).
    """
    require_slam()
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    run = SlamRun(mode, vocabulary=str(vocabulary))
    own_log = log_file is None
    log_path = Path(tempfile.mkstemp(prefix="orbslam3_", suffix=".log")[1]) if own_log else Path(log_file)  # type: ignore[arg-type]
    K = intrinsics
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=log, env=env)
    chan = _Channel(proc.stdout, proc.stdin)
    period = 1.0 / fps if realtime else 0.0
    pending: Iterator[SlamInput] = iter(frames)
    try:
        chan.send((str(vocabulary), (K.fx, K.fy, K.cx, K.cy, K.width, K.height), mode, fps, baseline_m, features))
        kind, payload = chan.recv(timeout_s)
        if kind == "error":
            raise RuntimeError(payload)
        last = 0.0
        for frame in pending:
            wait = last + period - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            last = time.perf_counter()
            chan.send(frame)
            kind, payload = chan.recv(timeout_s)
            if kind != "frame":
                raise RuntimeError(payload or "ORB-SLAM3 stopped")
            stamp, state, T, points = payload
            run.add(TrackedFrame(stamp, state, None if T is None else Pose.from_matrix(T), points))
        chan.send(None)
        chan.recv(timeout_s)  # "done": ORB-SLAM3's threads are shut down
    except (EOFError, OSError, TimeoutError, RuntimeError) as exc:
        try:
            code = proc.wait(2.0)
        except subprocess.TimeoutExpired:
            code = None
        why = str(exc) or type(exc).__name__
        if code is not None and code < 0:
            why = f"ORB-SLAM3 crashed (signal {-code})"
        elif code:
            why = f"ORB-SLAM3 exited with status {code}"
        tail = _log_tail(log_path)
        run.error = f"{why} after {len(run.states)} frames" + (f"; its log ends: {tail}" if tail else "")
        for frame in pending:  # the rest of the stream is reported, as never tracked
            run.add(TrackedFrame(frame.stamp_ns, "CRASHED", None))
    finally:
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()  # type: ignore[union-attr]
            except OSError:
                pass
        try:
            proc.wait(10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if own_log:
            log_path.unlink(missing_ok=True)
    run.wall_s = time.perf_counter() - start
    return run


def segments(states: Sequence[str]) -> list[list[int]]:
    """Frame indices of each map ORB-SLAM3 tracked in: runs of OK frames, split where
    the map was abandoned (LOST / NOT_INITIALIZED after tracking). RECENTLY_LOST
    frames do not split a run (relocalisation returns to the same map)."""
    out: list[list[int]] = []
    current: list[int] = []
    for i, s in enumerate(states):
        if s == "OK":
            current.append(i)
        elif s in ("LOST", "NOT_INITIALIZED", "CRASHED") and current:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def _trajectory(stamps: Sequence[int], poses: Sequence[Pose]) -> Any:
    from evo.core.trajectory import PoseTrajectory3D

    return PoseTrajectory3D(poses_se3=[p.matrix() for p in poses], timestamps=np.asarray(stamps, np.float64) * 1e-9)


def slam_metrics(run: SlamRun, ground_truth: Mapping[int, Pose], *, min_segment: int = 5) -> dict[str, Any]:
    """Tracking and trajectory metrics of ``run`` against ``ground_truth`` (stamp_ns -> T_world_cam).

    ``ate_rmse_m``: absolute trajectory error (translation RMSE, metres) over
    the OK frames of every map segment of at least ``min_segment`` frames,
    each segment aligned to the ground truth on its own (Sim3 for monocular:
    scale is unobservable; SE3 for RGB-D and stereo). ``rpe_rmse_m``:
    frame-to-frame relative translation error after the same alignment.
    Frames without ground truth are left out of both. Needs ``evo``.
    """
    try:
        from evo.core import metrics as evo_metrics
    except ImportError as exc:
        raise SlamUnavailable(f"trajectory metrics need evo: {INSTALL_HINT}") from exc
    states = run.states
    n = len(states)
    ok = [s == "OK" for s in states]
    first = next((i for i, v in enumerate(ok) if v), None)
    segs = segments(states)
    out: dict[str, Any] = {
        "frames": n,
        "tracked_frames": int(sum(ok)),
        "tracked_fraction": float(sum(ok)) / n if n else math.nan,
        "lost_frames": int(sum(s in ("LOST", "RECENTLY_LOST") for s in states)),
        "not_initialized_frames": int(sum(s == "NOT_INITIALIZED" for s in states)),
        "crashed_frames": int(sum(s == "CRASHED" for s in states)),
        "first_tracked_frame": first,
        "map_resets": max(len(segs) - 1, 0),
        "mode": run.mode,
        "alignment": "sim3" if run.mode == "mono" else "se3",
        "vocabulary": run.vocabulary,
        "wall_s": run.wall_s,
    }
    if run.error:
        out["error"] = run.error
    sq_ate: list[np.ndarray] = []
    sq_rpe: list[np.ndarray] = []
    scales: list[float] = []
    used = 0
    for seg in segs:
        idx = [i for i in seg if run.poses[i] is not None and run.stamps_ns[i] in ground_truth]
        if len(idx) < min_segment:
            continue
        stamps = [run.stamps_ns[i] for i in idx]
        ref = _trajectory(stamps, [ground_truth[s] for s in stamps])
        est = _trajectory(stamps, [run.poses[i] for i in idx])  # type: ignore[misc]
        try:
            _, _, scale = est.align(ref, correct_scale=run.mode == "mono")
        except Exception:  # degenerate segment (e.g. no motion): no alignment exists
            continue
        ape = evo_metrics.APE(evo_metrics.PoseRelation.translation_part)
        ape.process_data((ref, est))
        sq_ate.append(np.asarray(ape.error) ** 2)
        rpe = evo_metrics.RPE(evo_metrics.PoseRelation.translation_part, delta=1, delta_unit=evo_metrics.Unit.frames)
        rpe.process_data((ref, est))
        sq_rpe.append(np.asarray(rpe.error) ** 2)
        scales.append(float(scale))
        used += len(idx)
    out["ate_frames"] = used
    out["ate_rmse_m"] = float(np.sqrt(np.concatenate(sq_ate).mean())) if sq_ate else math.nan
    out["rpe_rmse_m"] = float(np.sqrt(np.concatenate(sq_rpe).mean())) if sq_rpe else math.nan
    if run.mode == "mono" and scales:
        out["sim3_scale"] = scales[0]
    return out


if __name__ == "__main__":
    _worker_main()
