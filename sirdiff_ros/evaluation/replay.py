"""Replay a stream of frames through the pipeline with several backends side by side.

One :class:`~sirdiff_ros.core.pipeline.RestorationPipeline` makes one stream
of keyframe decisions (:meth:`ingest`); every requested backend then restores
the same frame (:meth:`restore` with that backend), so all backends see the
same targets and the same view sets (selection is a pure function of the
keyframe buffer, which only ``ingest`` changes). The replay is synchronous
and deterministic: no frame is dropped for latency, unlike on a robot.

For each keyframe and each stream (``input`` and every backend's output) we
measure (definitions in :mod:`.metrics` and docs/evaluation.md):

* PSNR / SSIM of the keyframe against ``frame.extras['sharp']`` when the
  frame carries ground truth of the same size;
* no-reference sharpness;
* against its view set's partners (the set the pipeline restored a target
  with, or would pick for any other keyframe), using each partner's image
  *in the same stream* (restored if the partner was itself restored):
  reprojection consistency (with depth), ORB/SIFT matches and RANSAC
  inliers, the SIFT inliers' epipolar error under the known poses;
* after the replay, pycolmap mapping of all keyframes of each stream;
* with ``slam_modes``, ORB-SLAM3 over every frame of each stream (the full
  stream the node republishes), see :mod:`.slam_eval`.

Work is shared where the images are identical: a stream whose images in a
view set equal the input's reuses the input's numbers (exactly the same
computation), which is what makes ``passthrough`` equal ``input``.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

import cv2
import numpy as np

from ..core.frame import Frame
from ..core.geometry import CameraIntrinsics, Pose
from ..core.pipeline import FrameDecision, PipelineConfig, RestorationOutcome, RestorationPipeline
from ..core.restorers import Restorer, create_restorer
from .mapping import MappingError, MappingOptions, MappingView, run_mapping
from .metrics import Features, detect_features, match_features, psnr, reprojection_consistency, sharpness, ssim
from .report import GAIN_TOLERANCE, INPUT, CropCandidate, EvaluationResult, KeyframeRecord, keyframe_gain

__all__ = ["ReplayConfig", "OutcomeSink", "Replay", "evaluate_frames", "evaluate_bag", "degrade_stream"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayConfig:
    """What to run and measure.

    ``pipeline``: the node's pipeline settings (``num_views`` overrides its
    field when given). ``backend_options[name]`` are keyword arguments for
    :func:`create_restorer` (e.g. ``{'sirdiff': {'device': 'cpu', 'steps': 4}}``).
    ``min_inliers``: ORB inliers a (keyframe, partner) pair needs to count as
    matched. ``consistency_step``: pixel stride of the consistency warp.
    """

    backends: tuple[str, ...] = ("passthrough", "fusion")
    num_views: int | None = None
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    backend_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    max_frames: int | None = None
    mapping: bool = True
    mapping_options: MappingOptions = field(default_factory=MappingOptions)
    min_inliers: int = 15
    consistency_step: int = 2
    slam_modes: tuple[str, ...] = ()
    slam_vocabulary: str | None = None
    slam_runs: int = 1

    def __post_init__(self) -> None:
        if not self.backends:
            raise ValueError("at least one backend is needed")
        if len(set(self.backends)) != len(self.backends):
            raise ValueError(f"backend names repeat: {list(self.backends)}")
        if INPUT in self.backends:
            raise ValueError(f"{INPUT!r} names the unrestored stream; it cannot be a backend")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.slam_runs < 1:
            raise ValueError(f"slam_runs must be >= 1, got {self.slam_runs}")
        if self.min_inliers < 1 or self.consistency_step < 1:
            raise ValueError("min_inliers and consistency_step must be >= 1")

    def pipeline_config(self) -> PipelineConfig:
        if self.num_views is None:
            return self.pipeline
        return replace(self.pipeline, num_views=self.num_views)

    def as_dict(self) -> dict[str, Any]:
        pc = self.pipeline_config()
        return {
            "backends": list(self.backends),
            "num_views": pc.num_views,
            "pipeline": asdict(pc),
            "backend_options": {k: dict(v) for k, v in self.backend_options.items()},
            "max_frames": self.max_frames,
            "mapping": self.mapping,
            "min_inliers": self.min_inliers,
            "consistency_step": self.consistency_step,
            "slam_modes": list(self.slam_modes),
            "slam_runs": self.slam_runs,
        }


class OutcomeSink(Protocol):
    """Receives every backend's outcome for every frame (the restored-bag writer)."""

    def write(self, backend: str, outcome: RestorationOutcome) -> None: ...


@dataclass(frozen=True)
class _KeyframeInfo:
    """What mapping needs of a keyframe, without holding its images in memory."""

    index: int
    intrinsics: CameraIntrinsics
    pose: Pose | None
    image_files: dict[str, Path]  # stream -> PNG written for mapping


def _image_key(image: np.ndarray, reference: np.ndarray, stream: str) -> str:
    """``input`` when a stream's image equals the input, else the stream name."""
    return INPUT if image is reference or np.array_equal(image, reference) else stream


class Replay:
    """Feed frames one by one, then :meth:`finish` for the result.

    ``restorers`` maps backend names to ready restorers (else they are
    created from ``config.backends`` with ``config.backend_options``).
    ``workdir`` holds keyframe PNGs for mapping (a temporary folder, removed
    by :meth:`finish`, when not given).
    """

    def __init__(
        self,
        config: ReplayConfig | None = None,
        restorers: Mapping[str, Restorer] | None = None,
        sink: OutcomeSink | None = None,
        workdir: Path | None = None,
        source: str = "",
    ) -> None:
        self.config = cfg = config or ReplayConfig()
        if restorers is None:
            restorers = {b: create_restorer(b, **dict(cfg.backend_options.get(b, {}))) for b in cfg.backends}
        missing = [b for b in cfg.backends if b not in restorers]
        if missing:
            raise ValueError(f"no restorer given for backend(s) {missing}")
        self.restorers = {b: restorers[b] for b in cfg.backends}
        self.streams = [INPUT, *cfg.backends]
        self.pipeline = RestorationPipeline(cfg.pipeline_config(), self.restorers[cfg.backends[0]])
        self.sink = sink
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="sirdiff_eval_")) if workdir is None else Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.result = EvaluationResult(
            source=source,
            streams=list(self.streams),
            records=[],
            frames=0,
            min_inliers=cfg.min_inliers,
            latencies_ms={b: [] for b in cfg.backends},
            backend_errors={b: 0 for b in cfg.backends},
            config=cfg.as_dict(),
        )
        self._ingest_s = 0.0
        self._restore_s = {b: 0.0 for b in cfg.backends}
        # Output images of the keyframes still in the buffer (possible partners):
        # stamp -> stream -> (content key, image).
        self._outputs: dict[int, dict[str, tuple[str, np.ndarray]]] = {}
        self._feature_cache: dict[tuple[int, str, str], Features] = {}
        self._keyframes: list[_KeyframeInfo] = []
        self._slam = None
        if cfg.slam_modes:
            from ..slam.orbslam import require_slam
            from ..slam.vocabulary import resolve_vocabulary
            from .slam_eval import SlamRecorder

            require_slam()
            # Resolved (and, the first time, built) before the replay: a missing file fails now, not after it.
            self._slam_vocabulary = resolve_vocabulary(cfg.slam_vocabulary, announce=log.info)
            self._slam = SlamRecorder(self.workdir / "slam", self.streams, cfg.slam_modes)

    # -- feeding -------------------------------------------------------------------
    def feed(self, frame: Frame) -> None:
        """Run one frame through the pipeline with every backend and measure it."""
        index = self.result.frames
        t0 = time.perf_counter()
        decision = self.pipeline.ingest(frame)
        self._ingest_s += time.perf_counter() - t0
        outcomes: dict[str, RestorationOutcome] = {}
        for name, restorer in self.restorers.items():
            t0 = time.perf_counter()
            out = self.pipeline.restore(decision, restorer=restorer)
            self._restore_s[name] += time.perf_counter() - t0
            outcomes[name] = out
            if out.error is not None:
                self.result.backend_errors[name] += 1
                log.warning("backend %s failed on frame %d: %s", name, index, out.error)
            if decision.is_target and len(out.views) >= 2:  # the backend was called
                self.result.latencies_ms[name].append(out.latency_s * 1e3)
            if self.sink is not None:
                self.sink.write(name, out)
        self.result.frames += 1
        if self._slam is not None:
            streams = {INPUT: (INPUT, frame.image)}
            streams.update({n: (_image_key(o.image, frame.image, n), o.image) for n, o in outcomes.items()})
            self._slam.add(frame, streams)
        # Every frame's outputs, while it can be a partner (keyframe or recent frame).
        self._outputs[frame.stamp_ns] = {INPUT: (INPUT, frame.image)} | {
            name: (_image_key(out.image, frame.image, name), out.image) for name, out in outcomes.items()}
        if decision.is_keyframe or decision.is_target:
            self._evaluate_keyframe(index, decision, outcomes)
        # Forget outputs of frames that can no longer be partners.
        alive = self.pipeline.partner_candidate_stamps()
        for s in [s for s in self._outputs if s not in alive]:
            del self._outputs[s]
        for ck in [ck for ck in self._feature_cache if ck[0] not in alive]:
            del self._feature_cache[ck]

    def _evaluate_keyframe(self, index: int, decision: FrameDecision, outcomes: dict[str, RestorationOutcome]) -> None:
        frame = decision.frame
        stamp = frame.stamp_ns
        first = outcomes[self.config.backends[0]]
        if decision.is_target:
            views, overlaps = list(first.views), list(first.overlaps)
        elif frame.pose is not None:
            sel = self.pipeline.select(decision)
            views, overlaps = list(sel.views), list(sel.overlaps)
        else:
            views, overlaps = [frame], [1.0]
        outputs = self._outputs[stamp]

        sharp = frame.extras.get("sharp")
        # A ground truth of another size (the super-resolution degradation) gives no PSNR.
        if not (isinstance(sharp, np.ndarray) and sharp.shape == frame.image.shape):
            sharp = None
        else:
            self.result.ground_truth = True

        record = KeyframeRecord(
            stamp_ns=stamp,
            index=index,
            is_target=decision.is_target,
            is_keyframe=decision.is_keyframe,
            decision_reason=decision.reason,
            views=[v.stamp_ns for v in views],
            overlaps=[float(o) for o in overlaps],
        )
        # Streams whose images in this view set are the same share one computation.
        shared: dict[tuple, dict[str, Any]] = {}
        for stream in self.streams:
            metrics = dict(self._view_set_metrics(stream, views, sharp, shared))
            if stream != INPUT:
                out = outcomes[stream]
                metrics.update(restored=bool(out.restored), reason=out.reason)
                if decision.is_target and len(out.views) >= 2:
                    metrics["latency_ms"] = out.latency_s * 1e3
            record.streams[stream] = metrics
        self.result.records.append(record)
        if decision.is_target:
            self._update_crops(record, frame, outcomes, sharp)
        if decision.is_keyframe:
            self._remember_for_mapping(index, frame, outputs)

    # -- metrics -------------------------------------------------------------------
    def _stream_image(self, stream: str, stamp: int) -> tuple[str, np.ndarray]:
        outputs = self._outputs.get(stamp)
        if outputs is None:  # evicted from our store: cannot happen for buffer members
            raise RuntimeError(f"no stored output for keyframe stamp {stamp}")
        return outputs[stream]

    def _view_set_metrics(
        self, stream: str, views: list[Frame], sharp: np.ndarray | None, shared: dict[tuple, dict[str, Any]]
    ) -> dict[str, Any]:
        keyed = [self._stream_image(stream, v.stamp_ns) for v in views]
        cache_key = tuple((v.stamp_ns, k) for v, (k, _) in zip(views, keyed))
        cached = shared.get(cache_key)
        if cached is not None:
            return cached
        images = [img for _, img in keyed]
        target = images[0]
        m: dict[str, Any] = {
            "psnr": psnr(target, sharp) if sharp is not None else math.nan,
            "ssim": ssim(target, sharp) if sharp is not None else math.nan,
            "sharpness": sharpness(target),
        }
        m.update(self._pair_metrics(views, keyed))
        shared[cache_key] = m
        return m

    def _features(self, stamp: int, key: str, image: np.ndarray, method: str) -> Features:
        """Keypoints of one stored image, detected once (partners recur in many sets)."""
        ck = (stamp, key, method)
        if ck not in self._feature_cache:
            self._feature_cache[ck] = detect_features(image, method)
        return self._feature_cache[ck]

    def _pair_metrics(self, views: list[Frame], keyed: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
        nan = math.nan
        images = [img for _, img in keyed]
        partners = range(1, len(views))
        if not partners:
            return {
                "consistency": nan,
                "epipolar_px": nan,
                "inliers": nan,
                "orb_matches": nan,
                "sift_inliers": nan,
                "sift_matches": nan,
                "pairs": 0,
                "pairs_matched": 0,
            }
        # Warp only from views with depth; pairs in both directions.
        pairs = [(a, b) for k in partners for (a, b) in ((0, k), (k, 0)) if views[a].depth is not None]
        consistency = nan
        if pairs and all(v.pose is not None for v in views):
            consistency = reprojection_consistency(
                images,
                [v.pose for v in views],  # type: ignore[misc]
                [v.intrinsics for v in views],
                [v.depth for v in views],
                pairs=pairs,
                step=self.config.consistency_step,
            ).mean_abs_diff
        orb, sift = [], []
        for k in partners:
            posed = views[0].pose is not None and views[k].pose is not None
            geo = {"poses": (views[0].pose, views[k].pose), "intrinsics": (views[0].intrinsics, views[k].intrinsics)} if posed else {}
            feats = {
                m: [self._features(views[i].stamp_ns, keyed[i][0], images[i], m) for i in (0, k)] for m in ("orb", "sift")
            }
            orb.append(match_features(*feats["orb"], "orb"))
            sift.append(match_features(*feats["sift"], "sift", **geo))
        epi = [r.epipolar_px for r in sift if math.isfinite(r.epipolar_px)]
        return {
            "consistency": consistency,
            "epipolar_px": float(np.mean(epi)) if epi else nan,
            "inliers": float(np.mean([r.inliers for r in orb])),
            "orb_matches": float(np.mean([r.matches for r in orb])),
            "sift_inliers": float(np.mean([r.inliers for r in sift])),
            "sift_matches": float(np.mean([r.matches for r in sift])),
            "pairs": len(orb),
            "pairs_matched": sum(r.inliers >= self.config.min_inliers for r in orb),
        }

    # -- crops and mapping -----------------------------------------------------------
    def _update_crops(
        self, record: KeyframeRecord, frame: Frame, outcomes: dict[str, RestorationOutcome], sharp: np.ndarray | None
    ) -> None:
        tol = GAIN_TOLERANCE["psnr" if sharp is not None else "sharpness"]
        for name, out in outcomes.items():
            gain = keyframe_gain(record.streams[INPUT], record.streams[name])
            if not math.isfinite(gain) or abs(gain) <= tol:
                continue
            kind = "most_improved" if gain > 0 else "most_degraded"
            best = self.result.crops.setdefault(name, {}).get(kind)
            if best is None or abs(gain) > abs(best.gain):
                self.result.crops[name][kind] = CropCandidate(stamp_ns=record.stamp_ns, gain=gain, input=frame.image, output=out.image, sharp=sharp)

    def _remember_for_mapping(self, index: int, frame: Frame, outputs: dict[str, tuple[str, np.ndarray]]) -> None:
        if not self.config.mapping:
            return
        files: dict[str, Path] = {}
        for stream in self.streams:
            key, image = outputs[stream]
            if key == INPUT and stream != INPUT:
                files[stream] = files[INPUT]  # identical image: share the file
                continue
            folder = self.workdir / "keyframes" / stream
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{index:07d}.png"
            bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            cv2.imwrite(str(path), bgr)
            files[stream] = path
        self._keyframes.append(_KeyframeInfo(index, frame.intrinsics, frame.pose, files))

    def _run_mapping(self) -> None:
        kfs = self._keyframes
        done: dict[tuple[Path, ...], dict[str, Any]] = {}
        for stream in self.streams:
            if len(kfs) < 3:
                self.result.mapping[stream] = {"error": f"only {len(kfs)} keyframes; mapping needs at least 3"}
                continue
            files = tuple(k.image_files[stream] for k in kfs)
            if files in done:  # the same images as another stream (e.g. passthrough)
                self.result.mapping[stream] = dict(done[files])
                continue
            views = [
                MappingView(f"{k.index:07d}.png", k.image_files[stream], k.intrinsics, k.pose)
                for k in kfs
            ]
            try:
                res = run_mapping(views, self.config.mapping_options).as_dict()
            except MappingError as exc:
                res = {"error": str(exc)}
            except Exception as exc:  # pycolmap failures must not lose the rest of the report
                log.warning("mapping failed for %s: %r", stream, exc)
                res = {"error": repr(exc)}
            done[files] = res
            self.result.mapping[stream] = res

    def _run_slam(self) -> None:
        rec = self._slam
        if rec is None or not rec.frames:
            return
        outcomes = rec.run(self._slam_vocabulary.path, runs=self.config.slam_runs)
        res = self.result
        res.slam = {stream: {mode: o.metrics for mode, o in modes.items()} for stream, modes in outcomes.items()}
        res.slam_outcomes = outcomes
        res.slam_ground_truth = rec.ground_truth()
        res.slam_input_sharpness = rec.input_sharpness()
        res.slam_info = {"system": "orbslam3", "modes": list(rec.modes), "fps": rec.fps(), "runs": self.config.slam_runs,
                         "vocabulary": self._slam_vocabulary.as_dict()}

    # -- result --------------------------------------------------------------------
    def finish(self, *, partial: bool = False, error: str = "", mapping: bool | None = None,
               slam: bool | None = None) -> EvaluationResult:
        """Run mapping and SLAM (unless disabled), compute throughput, clean up; return the result."""
        res = self.result
        res.partial = res.partial or partial
        if error:
            res.error = error
        try:
            if self.config.mapping if mapping is None else mapping:
                self._run_mapping()
            if slam is None or slam:
                self._run_slam()
        finally:
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
        for name in self.config.backends:
            total = self._ingest_s + self._restore_s[name]
            res.throughput_fps[name] = res.frames / total if total > 0 else math.nan
        counts = self.pipeline.counts()
        res.config["pipeline_counts"] = counts
        return res


def degrade_stream(
    frames: Iterable[Frame], seed: int, fraction: float = 0.5, depth_prior: float = 2.0, **blur_options: Any
) -> Iterator[Frame]:
    """Ground truth for real, sharp recordings: motion-blur a ``fraction`` of
    the frames with the data package's physical degrader
    (:func:`sirdiff_ros.data.degrade.blur_frame`, the frame's depth or a
    plane at ``depth_prior`` metres) and keep each original as
    ``extras['sharp']``. Untouched frames get ``sharp`` = their own image.
    Which frames, and their blur, are fixed by ``seed``."""
    from ..data.degrade import blur_frame

    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"degrade fraction must be in [0, 1], got {fraction}")
    for i, frame in enumerate(frames):
        if np.random.default_rng([seed, i, 0xDE6]).random() < fraction:
            prior = None if frame.depth is not None else depth_prior
            blurred, _ = blur_frame(frame, seed * 1_000_003 + i, depth_prior=prior, **blur_options)
            yield blurred
        else:
            frame.extras["sharp"] = frame.image
            yield frame


def evaluate_frames(
    frames: Iterable[Frame],
    config: ReplayConfig | None = None,
    *,
    restorers: Mapping[str, Restorer] | None = None,
    sink: OutcomeSink | None = None,
    source: str = "frames",
    progress: Callable[[Iterable[Frame]], Iterable[Frame]] | None = None,
) -> EvaluationResult:
    """Replay ``frames`` (up to ``config.max_frames``) and return the result.

    An exception raised *by the frame source* (e.g. a truncated bag) ends the
    replay early: what was processed is kept and the result is marked
    ``partial`` with the error message; so does Ctrl-C (a long replay still
    reports what it measured). Errors of our own code propagate.
    """
    replay = Replay(config, restorers=restorers, sink=sink, source=source)
    limit = replay.config.max_frames
    it = iter(progress(frames) if progress else frames)
    error = ""
    try:
        while limit is None or replay.result.frames < limit:
            try:
                frame = next(it)
            except StopIteration:
                break
            except Exception as exc:  # the source failed: keep what we have
                error = f"{type(exc).__name__}: {exc}"
                log.error("frame source failed after %d frames: %s", replay.result.frames, error)
                break
            replay.feed(frame)
    except KeyboardInterrupt:
        error = f"interrupted after {replay.result.frames} frames"
        log.error("%s; writing a partial report (mapping and SLAM skipped)", error)
        return replay.finish(partial=True, error=error, mapping=False, slam=False)
    return replay.finish(partial=bool(error), error=error)


def evaluate_bag(
    bag: str | Path,
    out_dir: str | Path,
    config: ReplayConfig | None = None,
    *,
    topics: Mapping[str, str | None] | None = None,
    intrinsics: CameraIntrinsics | None = None,
    write_bag: bool = True,
    bag_format: str = "db3",
    progress: bool = True,
    degrade: Mapping[str, Any] | None = None,
    announce: Callable[[str], None] = log.info,
) -> EvaluationResult:
    """Replay a ROS 1/2 bag, write the restored bag and the report into ``out_dir``.

    ``topics`` may give ``image``, ``info``, ``pose``, ``gt``, ``depth``;
    the others are detected (:func:`sirdiff_ros.data.bags.detect_topics`),
    and ``announce`` is told which were chosen. ``intrinsics`` stands in
    for a bag without CameraInfo. A bag that cannot be opened, or whose
    topics are missing or ambiguous, raises before anything is written; one
    that breaks part-way gives a report marked partial. ``degrade`` (keyword
    arguments of :func:`degrade_stream`, ``seed`` required) blurs real
    frames to create ground truth.
    """
    from tqdm import tqdm

    from ..data.bags import detect_topics, read_bag_frames
    from .bagout import RestoredBagWriter
    from .report import write_report

    cfg = config or ReplayConfig()
    given = {k: v for k, v in (topics or {}).items() if v}
    unknown = set(given) - {"image", "info", "pose", "gt", "depth"}
    if unknown:
        raise ValueError(f"unknown topic role(s) {sorted(unknown)}")
    chosen = detect_topics(
        bag,
        image_topic=given.get("image"),
        info_topic=given.get("info"),
        pose_topic=given.get("pose"),
        gt_topic=given.get("gt"),
        depth_topic=given.get("depth"),
        require_info=intrinsics is None,
    )
    for role, topic in chosen._asdict().items():
        how = "given" if role in given else "detected"
        announce(f"{role:>6} topic: {topic or '(none)'}" + (f" ({how})" if topic else ""))
    if chosen.pose is None:
        announce("no pose topic: keyframes need poses, so nothing will be restored or matched")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = _message_count(bag, chosen.image)
    if cfg.max_frames is not None and total is not None:
        total = min(total, cfg.max_frames)
    frames: Iterable[Frame] = read_bag_frames(bag, *chosen, intrinsics=intrinsics)
    if degrade is not None:
        if chosen.gt is not None:
            raise ValueError(f"the bag has ground truth ({chosen.gt}); degrading its frames would replace it")
        frames = degrade_stream(frames, **dict(degrade))
        announce(f"degrading frames for ground truth: {dict(degrade)}")

    def bar(it: Iterable[Frame]) -> Iterable[Frame]:
        return tqdm(it, total=total, unit="frame", desc="replay", disable=not progress)

    if write_bag:
        with RestoredBagWriter(bag, out / "restored_bag", list(cfg.backends), chosen.image, chosen.info, bag_format) as sink:
            result = evaluate_frames(frames, cfg, sink=sink, source=str(bag), progress=bar)
            copy_error = sink.copy_source()
        result.restored_bag = str(out / "restored_bag")
        if copy_error and not result.partial:
            result.partial, result.error = True, f"copying the source bag: {copy_error}"
    else:
        result = evaluate_frames(frames, cfg, source=str(bag), progress=bar)
    result.topics = chosen._asdict()
    write_report(result, out)
    return result


def _message_count(bag: str | Path, topic: str) -> int | None:
    """Messages on ``topic`` per the bag's index, for the progress bar (None if unknown)."""
    from rosbags.highlevel import AnyReader

    from ..data.bags import bag_storage_path

    try:
        with AnyReader([bag_storage_path(bag)]) as reader:
            info = reader.topics.get(topic)
            return int(info.msgcount) if info is not None else None
    except Exception:  # only cosmetic: the replay itself reports read errors
        return None
