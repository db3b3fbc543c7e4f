"""ORB-SLAM3 on every stream of a replay: the input and each backend's full output.

During the replay :class:`SlamRecorder` keeps every frame of every stream
(PNG files in the replay's work folder; a stream whose frame equals the
input's shares its file), the frame's depth (RGB-D) and its pose from the
bag (ground truth for the synthetic sequences). After the replay,
:meth:`SlamRecorder.run` tracks each distinct stream with ORB-SLAM3 in each
requested mode (one child process per run, paced at the stream's frame
rate, see :func:`sirdiff_ros.slam.orbslam.run_orbslam`) and measures it
against those poses. :func:`plot_timeline` and :func:`plot_trajectories`
draw the report's figures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np

from ..core.frame import Frame
from ..core.geometry import CameraIntrinsics, Pose
from ..slam.orbslam import MODES, SlamInput, SlamRun, run_orbslam, segments, slam_metrics
from .metrics import sharpness

__all__ = ["SlamRecorder", "SlamOutcome", "timeline_string", "plot_timeline", "plot_trajectories"]

log = logging.getLogger(__name__)

# One character per frame in report.json's compact timeline.
_STATE_CHAR = {"OK": ".", "RECENTLY_LOST": "r", "LOST": "L", "NOT_INITIALIZED": "n", "CRASHED": "X"}
_STATE_COLOUR = {"OK": "#2ca02c", "RECENTLY_LOST": "#ff7f0e", "LOST": "#d62728", "NOT_INITIALIZED": "#bbbbbb",
                 "CRASHED": "#000000"}


def timeline_string(states: Sequence[str]) -> str:
    """``'nn....rrrL..'``: one character per frame (. OK, r RECENTLY_LOST, L LOST, n NOT_INITIALIZED, X CRASHED)."""
    return "".join(_STATE_CHAR.get(s, "?") for s in states)


@dataclass
class SlamOutcome:
    """One stream in one mode: its metrics (report.json) and its run (plots)."""

    metrics: dict[str, Any]
    run: SlamRun


@dataclass
class SlamRecorder:
    """Collects the streams of a replay for ORB-SLAM3 (see module docstring)."""

    folder: Path
    streams: Sequence[str]
    modes: Sequence[str]
    stamps_ns: list[int] = field(default_factory=list)
    poses: list[Pose | None] = field(default_factory=list)
    intrinsics: CameraIntrinsics | None = None
    _files: dict[str, list[Path]] = field(default_factory=dict)
    _depth_files: list[Path | None] = field(default_factory=list)
    _sharpness: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"unknown ORB-SLAM3 mode(s) {bad}; choose from {', '.join(MODES)}")
        if "stereo" in self.modes:
            raise ValueError("stereo ORB-SLAM3 needs a right camera stream, which the replay does not carry; "
                             "use mono or rgbd")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._files = {s: [] for s in self.streams}

    def add(self, frame: Frame, images: Mapping[str, tuple[str, np.ndarray]]) -> None:
        """Keep one frame of every stream; ``images[stream] = (content key, image)`` as the replay keys them
        (``'input'`` when the stream's image is the input's)."""
        if self.intrinsics is None:
            self.intrinsics = frame.intrinsics
        elif frame.intrinsics.width != self.intrinsics.width or frame.intrinsics.height != self.intrinsics.height:
            raise ValueError("ORB-SLAM3 evaluation needs one image size for the whole stream")
        i = len(self.stamps_ns)
        written: dict[str, Path] = {}
        for stream in self.streams:
            key, image = images[stream]
            if key not in written:
                folder = self.folder / key
                folder.mkdir(exist_ok=True)
                path = folder / f"{i:07d}.png"
                cv2.imwrite(str(path), image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
                written[key] = path
            self._files[stream].append(written[key])
        depth_path = None
        if "rgbd" in self.modes and frame.depth is not None:
            depth_path = self.folder / "depth" / f"{i:07d}.npy"
            depth_path.parent.mkdir(exist_ok=True)
            np.save(depth_path, np.asarray(frame.depth, np.float32))
        self._depth_files.append(depth_path)
        self.stamps_ns.append(frame.stamp_ns)
        self.poses.append(frame.pose)
        self._sharpness.append(sharpness(frame.image))

    @property
    def frames(self) -> int:
        return len(self.stamps_ns)

    def fps(self) -> float:
        """The stream's frame rate from its stamps (median interval)."""
        if self.frames < 2:
            return 10.0
        dt = np.median(np.diff(np.asarray(self.stamps_ns, np.float64))) * 1e-9
        return float(1.0 / dt) if dt > 0 else 10.0

    def input_sharpness(self) -> list[float]:
        """No-reference sharpness of each input frame (:func:`~sirdiff_ros.evaluation.metrics.sharpness`)."""
        return list(self._sharpness)

    def _inputs(self, stream: str, mode: str) -> Iterator[SlamInput]:
        for stamp, path, dpath in zip(self.stamps_ns, self._files[stream], self._depth_files):
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            depth = np.load(dpath) if (mode == "rgbd" and dpath is not None) else None
            if mode == "rgbd" and depth is None:
                depth = np.zeros(image.shape, np.float32)  # no depth for this frame: ORB-SLAM3 sees no close points
            yield SlamInput(stamp, image, depth)

    def run(self, vocabulary: str | Path, *, runs: int = 1, announce: Callable[[str], None] = log.info
            ) -> dict[str, dict[str, SlamOutcome]]:
        """``{stream: {mode: SlamOutcome}}``; streams with the same frames share one run.

        ORB-SLAM3 is multi-threaded and not deterministic: with ``runs`` > 1
        each stream is tracked that many times and the run with the median
        number of lost frames represents it (its metrics, timeline and plots);
        ``metrics['runs']`` lists every run's lost frames, tracked fraction,
        map resets and ATE.
        """
        if runs < 1:
            raise ValueError(f"runs must be >= 1, got {runs}")
        if self.intrinsics is None or not self.frames:
            return {}
        if "rgbd" in self.modes and all(d is None for d in self._depth_files):
            raise ValueError("ORB-SLAM3 rgbd mode needs a depth topic in the bag")
        gt = self.ground_truth()
        fps = self.fps()
        out: dict[str, dict[str, SlamOutcome]] = {s: {} for s in self.streams}
        done: dict[tuple[str, tuple[Path, ...]], SlamOutcome] = {}
        for mode in self.modes:
            for stream in self.streams:
                key = (mode, tuple(self._files[stream]))
                if key not in done:
                    announce(f"ORB-SLAM3 {mode}: {stream} ({self.frames} frames at {fps:.1f} fps, {runs} run(s))")
                    trials = []
                    for _ in range(runs):
                        run = run_orbslam(self._inputs(stream, mode), self.intrinsics, mode, vocabulary, fps=fps)
                        metrics = slam_metrics(run, gt)
                        metrics["timeline"] = timeline_string(run.states)
                        trials.append(SlamOutcome(metrics, run))
                    # The median run by lost frames (the lower middle one for an even count).
                    ranked = sorted(trials, key=lambda o: (o.metrics["lost_frames"], -o.metrics["tracked_frames"]))
                    chosen = ranked[(len(ranked) - 1) // 2]
                    if runs > 1:
                        chosen.metrics["runs"] = [
                            {k: o.metrics[k] for k in ("lost_frames", "tracked_fraction", "map_resets", "ate_rmse_m")}
                            for o in trials
                        ]
                    done[key] = chosen
                out[stream][mode] = done[key]
        return out

    def ground_truth(self) -> dict[int, Pose]:
        """stamp_ns -> the bag's pose of that frame (the reference of ATE / RPE)."""
        return {s: p for s, p in zip(self.stamps_ns, self.poses) if p is not None}


def plot_timeline(outcomes: Mapping[str, Mapping[str, SlamOutcome]], input_sharpness: Sequence[float],
                  path: Path) -> bool:
    """Tracking state per frame, one row per (stream, mode), under the input frames' sharpness."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [(f"{stream} {mode}", o.run.states) for stream, modes in outcomes.items() for mode, o in modes.items()]
    if not rows:
        return False
    fig, (top, ax) = plt.subplots(2, 1, figsize=(10, 2.4 + 0.35 * len(rows)), sharex=True,
                                  gridspec_kw={"height_ratios": [1.2, 0.35 * len(rows)]})
    top.semilogy(np.arange(len(input_sharpness)), np.maximum(input_sharpness, 1e-3), color="#444444", lw=1)
    top.set_ylabel("input\nsharpness", fontsize=8)
    top.set_title("ORB-SLAM3 tracking state per frame (top: input sharpness; dips are blurred frames)", fontsize=10)
    for y, (_, states) in enumerate(rows):
        colours = [_STATE_COLOUR.get(s, "#ffffff") for s in states]
        ax.bar(np.arange(len(states)), np.ones(len(states)), bottom=y, width=1.0, color=colours, linewidth=0)
    ax.set_yticks(np.arange(len(rows)) + 0.5)
    ax.set_yticklabels([r[0] for r in rows], fontsize=8)
    ax.set_ylim(0, len(rows))
    ax.invert_yaxis()
    ax.set_xlabel("frame")
    fig.legend(handles=[Patch(color=c, label=s) for s, c in _STATE_COLOUR.items()], fontsize=7, ncol=5,
               loc="lower center")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_trajectories(outcomes: Mapping[str, Mapping[str, SlamOutcome]], ground_truth: Mapping[int, Pose],
                      path: Path) -> bool:
    """Top view (x, y of the ground truth's world) of each run's largest map segment, aligned
    (Sim3 mono, SE3 otherwise) to the ground truth; one panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..slam.orbslam import _trajectory

    modes = sorted({m for modes in outcomes.values() for m in modes})
    if not modes or len(ground_truth) < 2:
        return False
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 5), squeeze=False)
    gt_stamps = sorted(ground_truth)
    gt_xy = np.array([ground_truth[s].translation[:2] for s in gt_stamps])
    for ax, mode in zip(axes[0], modes):
        ax.plot(gt_xy[:, 0], gt_xy[:, 1], color="black", lw=2, label="ground truth")
        for stream, by_mode in outcomes.items():
            o = by_mode.get(mode)
            if o is None:
                continue
            segs = segments(o.run.states)
            idx = max(segs, key=len) if segs else []
            idx = [i for i in idx if o.run.poses[i] is not None and o.run.stamps_ns[i] in ground_truth]
            if len(idx) < 5:
                continue
            stamps = [o.run.stamps_ns[i] for i in idx]
            ref = _trajectory(stamps, [ground_truth[s] for s in stamps])
            est = _trajectory(stamps, [o.run.poses[i] for i in idx])  # type: ignore[misc]
            try:
                est.align(ref, correct_scale=mode == "mono")
            except Exception:  # degenerate segment: nothing to draw
                continue
            xy = est.positions_xyz[:, :2]
            ax.plot(xy[:, 0], xy[:, 1], lw=1, label=f"{stream} ({len(idx)} frames)")
        ax.set_title(f"ORB-SLAM3 {mode}: largest map, aligned")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("x m")
        ax.set_ylabel("y m")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
