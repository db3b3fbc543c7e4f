"""Per-keyframe records, their aggregation, and the written report.

A *stream* is one version of the camera images: ``input`` (as recorded) or
one backend's output. Every evaluated keyframe has one metric dict per
stream (:class:`KeyframeRecord`; restoration targets between keyframes get
one too); :func:`aggregate` reduces them per stream, over all keyframes and
over restoration targets only; :func:`write_report`
writes ``report.json``, ``report.md``, before/after crops and gain plots.

Aggregation rules (also in docs/evaluation.md):

* quality and matching metrics: mean over the keyframes where the metric is
  defined (finite); ``n_<metric>`` says how many;
* ``latency_ms_median`` / ``latency_ms_p90``: over the backend calls
  (restoration targets) — absent for ``input``;
* ``match_success``: fraction of (keyframe, partner) pairs with at least
  ``min_inliers`` ORB RANSAC inliers, pooled over pairs;
* per backend ``improved`` / ``degraded``: targets whose gain (below) is
  above / below the tolerance; ``gain_mean`` its mean over targets.

A keyframe's *gain* for a backend is the PSNR difference to the input (dB)
where ground truth exists, else the log2 ratio of no-reference sharpness
(+1 = twice as sharp).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "INPUT",
    "METRIC_KEYS",
    "KeyframeRecord",
    "CropCandidate",
    "EvaluationResult",
    "keyframe_gain",
    "aggregate",
    "write_report",
    "report_markdown",
]

INPUT = "input"

# Per-keyframe numeric metrics, aggregated by their mean.
METRIC_KEYS = (
    "psnr",
    "ssim",
    "sharpness",
    "consistency",
    "epipolar_px",
    "inliers",
    "orb_matches",
    "sift_inliers",
    "sift_matches",
)

# Gains within this tolerance count as neither improved nor degraded
# (PSNR dB with ground truth, log2 sharpness ratio without).
GAIN_TOLERANCE = {"psnr": 0.1, "sharpness": 0.05}


@dataclass
class KeyframeRecord:
    """Everything measured for one keyframe.

    ``views`` are the stamps (ns) of the view set in model order (target
    first) — the set the pipeline used for a target, and the set it would
    use for any other keyframe (matching and consistency need partners).
    ``streams[name]`` holds that stream's metrics (:data:`METRIC_KEYS`,
    NaN where undefined) plus ``pairs`` / ``pairs_matched`` (partners and
    those with at least ``min_inliers`` ORB inliers) and, for backends,
    ``restored``, ``reason`` and ``latency_ms`` (targets only).
    """

    stamp_ns: int
    index: int  # position of the frame in the replayed stream
    is_target: bool
    decision_reason: str
    is_keyframe: bool = True  # False: a restoration target between keyframes
    views: list[int] = field(default_factory=list)
    overlaps: list[float] = field(default_factory=list)
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)

    def gain(self, stream: str) -> float:
        return keyframe_gain(self.streams.get(INPUT, {}), self.streams.get(stream, {}))


def keyframe_gain(before: Mapping[str, Any], after: Mapping[str, Any]) -> float:
    """PSNR gain (dB) when both have PSNR, else log2 sharpness ratio; NaN if neither."""
    p0, p1 = before.get("psnr", math.nan), after.get("psnr", math.nan)
    if _finite(p0) and _finite(p1):
        return float(p1 - p0)
    if math.isinf(p0) and math.isinf(p1):  # identical to ground truth in both
        return 0.0
    s0, s1 = before.get("sharpness", math.nan), after.get("sharpness", math.nan)
    if _finite(s0) and _finite(s1) and s0 > 0 and s1 > 0:
        return float(math.log2(s1 / s0))
    return math.nan


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@dataclass
class CropCandidate:
    """Images of one keyframe for the before/after picture."""

    stamp_ns: int
    gain: float
    input: np.ndarray
    output: np.ndarray
    sharp: np.ndarray | None = None


@dataclass
class EvaluationResult:
    """The outcome of one replay (see :mod:`sirdiff_ros.evaluation.replay`)."""

    source: str
    streams: list[str]  # "input" first, then backends in the requested order
    records: list[KeyframeRecord]
    frames: int
    topics: dict[str, str | None] = field(default_factory=dict)
    partial: bool = False
    error: str = ""
    ground_truth: bool = False
    min_inliers: int = 15
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    backend_errors: dict[str, int] = field(default_factory=dict)
    throughput_fps: dict[str, float] = field(default_factory=dict)
    mapping: dict[str, dict[str, Any]] = field(default_factory=dict)
    crops: dict[str, dict[str, CropCandidate]] = field(default_factory=dict)  # backend -> kind -> candidate
    config: dict[str, Any] = field(default_factory=dict)
    restored_bag: str = ""
    # ORB-SLAM3 on each stream: stream -> mode -> metrics; slam_info: vocabulary, modes, frame rate;
    # slam_outcomes (runs with per-frame poses), slam_ground_truth and slam_input_sharpness feed the plots only.
    slam: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    slam_info: dict[str, Any] = field(default_factory=dict)
    slam_outcomes: dict[str, Any] = field(default_factory=dict, repr=False)
    slam_ground_truth: dict[int, Any] = field(default_factory=dict, repr=False)
    slam_input_sharpness: list[float] = field(default_factory=list, repr=False)

    @property
    def backends(self) -> list[str]:
        return [s for s in self.streams if s != INPUT]

    @property
    def targets(self) -> list[KeyframeRecord]:
        return [r for r in self.records if r.is_target]

    @property
    def keyframes(self) -> list[KeyframeRecord]:
        return [r for r in self.records if r.is_keyframe]


# --------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------


def _mean_metrics(records: Sequence[KeyframeRecord], stream: str) -> dict[str, Any]:
    out: dict[str, Any] = {"keyframes": len(records)}
    for key in METRIC_KEYS:
        vals = [r.streams[stream].get(key, math.nan) for r in records if stream in r.streams]
        vals = [float(v) for v in vals if _finite(v)]
        out[key] = float(np.mean(vals)) if vals else None
        out[f"n_{key}"] = len(vals)
    pairs = sum(int(r.streams.get(stream, {}).get("pairs", 0)) for r in records)
    matched = sum(int(r.streams.get(stream, {}).get("pairs_matched", 0)) for r in records)
    out["match_pairs"] = pairs
    out["match_success"] = matched / pairs if pairs else None
    return out


def _gain_summary(records: Sequence[KeyframeRecord], stream: str, ground_truth: bool) -> dict[str, Any]:
    tol = GAIN_TOLERANCE["psnr" if ground_truth else "sharpness"]
    gains = [g for g in (r.gain(stream) for r in records) if math.isfinite(g)]
    return {
        "gain_kind": "psnr_db" if ground_truth else "log2_sharpness",
        "gain_mean": float(np.mean(gains)) if gains else None,
        "improved": sum(g > tol for g in gains),
        "degraded": sum(g < -tol for g in gains),
        "unchanged": sum(abs(g) <= tol for g in gains),
    }


def aggregate(result: EvaluationResult) -> dict[str, dict[str, Any]]:
    """``{stream: {metric: value, ..., 'targets': {...}}}`` (module docstring)."""
    targets = result.targets
    out: dict[str, dict[str, Any]] = {}
    for stream in result.streams:
        agg = _mean_metrics(result.keyframes, stream)
        agg["targets"] = _mean_metrics(targets, stream)
        if stream != INPUT:
            lat = result.latencies_ms.get(stream, [])
            agg["latency_ms_median"] = float(np.median(lat)) if lat else None
            agg["latency_ms_p90"] = float(np.percentile(lat, 90)) if lat else None
            agg["restore_calls"] = len(lat)
            agg["restored"] = sum(bool(r.streams.get(stream, {}).get("restored")) for r in targets)
            agg["backend_errors"] = int(result.backend_errors.get(stream, 0))
            agg["targets"].update(_gain_summary(targets, stream, result.ground_truth))
            if stream in result.throughput_fps:
                agg["throughput_fps"] = result.throughput_fps[stream]
        if stream in result.mapping:
            agg["mapping"] = result.mapping[stream]
        if stream in result.slam:
            agg["slam"] = result.slam[stream]
        out[stream] = agg
    return out


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null; numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


_TABLE_COLUMNS = (
    ("psnr", "PSNR dB", 2),
    ("ssim", "SSIM", 3),
    ("sharpness", "sharpness", 3),
    ("consistency", "consistency ↓", 2),
    ("epipolar_px", "epipolar px ↓", 2),
    ("inliers", "ORB inliers", 1),
    ("sift_inliers", "SIFT inliers", 1),
    ("match_success", "match success", 2),
)


def _metrics_table(backends: Mapping[str, Mapping[str, Any]], scope: str | None) -> list[str]:
    head = "| stream | keyframes | " + " | ".join(c[1] for c in _TABLE_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(_TABLE_COLUMNS) + 2)]
    for name, agg in backends.items():
        a = agg[scope] if scope else agg
        cells = [_fmt(a.get(k), d) for k, _, d in _TABLE_COLUMNS]
        lines.append(f"| {name} | {a['keyframes']} | " + " | ".join(cells) + " |")
    return lines


def report_markdown(report: Mapping[str, Any]) -> str:
    """The human-readable report (tables of the aggregates in ``report``)."""
    s = report["summary"]
    backends = report["backends"]
    lines = [f"# Replay evaluation: `{report['source']}`", ""]
    if report["partial"]:
        lines += [f"**PARTIAL REPORT** — replay stopped early: {report['error']}", ""]
    lines += [
        f"{s['frames']} frames, {s['keyframes']} keyframes, {s['targets']} restoration targets; "
        f"ground truth: {'yes' if s['ground_truth'] else 'no'}; views per set: {report['config'].get('num_views', '?')}.",
        "",
        "Topics: " + ", ".join(f"{k} `{v}`" for k, v in report["topics"].items() if v),
        "",
        "## All keyframes",
        "",
        *_metrics_table(backends, None),
        "",
        "## Restoration targets",
        "",
        *_metrics_table(backends, "targets"),
        "",
        "## Backends",
        "",
        "| backend | restored / targets | gain mean | improved | degraded | latency median ms | p90 ms | replay fps | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, agg in backends.items():
        if name == INPUT:
            continue
        t = agg["targets"]
        unit = " dB" if t.get("gain_kind") == "psnr_db" else " (log2 sharpness)"
        lines.append(
            f"| {name} | {agg['restored']} / {t['keyframes']} | {_fmt(t.get('gain_mean'))}{unit} | {t['improved']} | "
            f"{t['degraded']} | {_fmt(agg.get('latency_ms_median'), 1)} | {_fmt(agg.get('latency_ms_p90'), 1)} | "
            f"{_fmt(agg.get('throughput_fps'), 2)} | {agg['backend_errors']} |"
        )
    if any("mapping" in agg for agg in backends.values()):
        lines += [
            "",
            "## Mapping (pycolmap incremental SfM on the keyframes)",
            "",
            "| stream | registered / images | 3D points | reprojection px | ATE RMSE m (Sim3) | rotation deg |",
            "|---|---|---|---|---|---|",
        ]
        for name, agg in backends.items():
            m = agg.get("mapping")
            if not m:
                continue
            if "error" in m:
                lines.append(f"| {name} | failed: {m['error']} | | | | |")
                continue
            lines.append(
                f"| {name} | {m['registered']} / {m['images']} | {m['points3d']} | {_fmt(m['reprojection_px'])} | "
                f"{_fmt(m['ate_rmse_m'], 4)} | {_fmt(m['rotation_deg'])} |"
            )
    if report.get("slam"):
        lines += ["", *slam_table(report)]
    if report.get("crops"):
        lines += ["", "## Before / after", ""]
        for name, kinds in report["crops"].items():
            for kind, info in kinds.items():
                lines.append(
                    f"- {name}, {kind.replace('_', ' ')} (stamp {info['stamp_ns']}, gain {_fmt(info['gain'])}): "
                    f"![{name} {kind}]({info['file']})"
                )
    if report.get("plots"):
        lines += ["", "## Per-keyframe gains", ""] + [f"![gains]({p})" for p in report["plots"]]
    lines += ["", "Metric definitions: see docs/evaluation.md in the sirdiff_ros repository.", ""]
    return "\n".join(lines)


def slam_table(report: Mapping[str, Any]) -> list[str]:
    """The ORB-SLAM3 section of report.md: one row per (stream, mode), then the plots."""
    info = report["slam"]
    voc = info.get("vocabulary", {})
    lines = [
        "## SLAM in the loop (ORB-SLAM3)",
        "",
        f"Vocabulary: `{voc.get('path')}` ({voc.get('source')}); frames fed at {_fmt(info.get('fps'), 1)} fps; "
        f"{info.get('runs', 1)} run(s) per stream (several: the median run by lost frames, all runs' lost frames "
        "in brackets). "
        "ATE / RPE: translation RMSE against the bag's poses over the tracked frames, each map segment aligned "
        "on its own (Sim3 monocular, SE3 RGB-D).",
        "",
        "| stream | mode | tracked | lost frames | first tracked | map resets | ATE RMSE m | RPE RMSE m | frames in ATE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, agg in report["backends"].items():
        for mode, m in (agg.get("slam") or {}).items():
            err = f" ({m['error']})" if m.get("error") else ""
            spread = f" [{', '.join(str(r['lost_frames']) for r in m['runs'])}]" if m.get("runs") else ""
            lines.append(
                f"| {name} | {mode} | {_fmt(100 * m['tracked_fraction'] if m.get('tracked_fraction') is not None else None, 1)} % | "
                f"{m['lost_frames']}{spread} | {m['first_tracked_frame'] if m['first_tracked_frame'] is not None else '-'} | "
                f"{m['map_resets']} | {_fmt(m.get('ate_rmse_m'), 4)} | {_fmt(m.get('rpe_rmse_m'), 4)} | "
                f"{m.get('ate_frames', 0)}{err} |"
            )
    lines += [""] + [f"![{Path(p).stem}]({p})" for p in info.get("plots", [])]
    return lines


def _crop_box(cand: CropCandidate, size: int) -> tuple[int, int, int, int]:
    """(y0, x0, h, w) of the ``size`` window where the output changed most
    (where it gained most on the ground truth, if there is one)."""
    h, w = cand.input.shape[:2]
    ch, cw = min(size, h), min(size, w)
    a = cand.input.astype(np.float32)
    b = cand.output.astype(np.float32)
    if cand.sharp is not None:
        ref = cand.sharp.astype(np.float32)
        score = np.abs(a - ref) - np.abs(b - ref)  # > 0 where the output is closer to the truth
        if cand.gain < 0:
            score = -score
    else:
        score = np.abs(a - b)
    if score.ndim == 3:
        score = score.mean(axis=2)
    # Window sums via an integral image; pick the best window.
    ii = np.pad(score.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = ii[ch:, cw:] - ii[:-ch, cw:] - ii[ch:, :-cw] + ii[:-ch, :-cw]
    y0, x0 = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(y0), int(x0), ch, cw


def _save_crop(cand: CropCandidate, backend: str, path: Path, size: int = 192) -> None:
    import cv2

    y0, x0, ch, cw = _crop_box(cand, size)
    tiles = [("input", cand.input), (backend, cand.output)]
    if cand.sharp is not None:
        tiles.append(("ground truth", cand.sharp))
    out = []
    for label, img in tiles:
        tile = img[y0 : y0 + ch, x0 : x0 + cw]
        tile = cv2.cvtColor(tile, cv2.COLOR_GRAY2RGB) if tile.ndim == 2 else tile.copy()
        cv2.putText(tile, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
        out.append(tile)
    sep = np.full((out[0].shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([x for t in out for x in (t, sep)][:-1], axis=1)
    cv2.imwrite(str(path), cv2.cvtColor(row, cv2.COLOR_RGB2BGR))


def _plot_gains(result: EvaluationResult, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = result.targets
    if not targets or not result.backends:
        return False
    fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    x = np.arange(len(targets))
    for name in result.backends:
        gains = [r.gain(name) for r in targets]
        cons = [
            r.streams.get(name, {}).get("consistency", math.nan) - r.streams[INPUT].get("consistency", math.nan)
            for r in targets
        ]
        axes[0].plot(x, gains, marker="o", ms=3, lw=1, label=name)
        axes[1].plot(x, cons, marker="o", ms=3, lw=1, label=name)
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[0].set_ylabel("PSNR gain dB" if result.ground_truth else "log2 sharpness gain")
    axes[1].set_ylabel("consistency change\n(grey levels, lower better)")
    axes[1].set_xlabel("restoration target (stream order)")
    axes[0].legend(fontsize=8)
    axes[0].set_title("Per-keyframe gain over the input")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_report(result: EvaluationResult, out_dir: Path) -> dict[str, Any]:
    """Write report.json, report.md, crops/*.png and gains.png; return the JSON dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    crops: dict[str, dict[str, Any]] = {}
    if result.crops:
        (out_dir / "crops").mkdir(exist_ok=True)
    for backend, kinds in result.crops.items():
        for kind, cand in kinds.items():
            rel = f"crops/{backend}_{kind}.png"
            _save_crop(cand, backend, out_dir / rel)
            crops.setdefault(backend, {})[kind] = {"file": rel, "stamp_ns": cand.stamp_ns, "gain": cand.gain}
    plots = ["gains.png"] if _plot_gains(result, out_dir / "gains.png") else []
    slam_info: dict[str, Any] = {}
    if result.slam_info:
        from .slam_eval import plot_timeline, plot_trajectories

        slam_plots = []
        if plot_timeline(result.slam_outcomes, result.slam_input_sharpness, out_dir / "slam_timeline.png"):
            slam_plots.append("slam_timeline.png")
        if plot_trajectories(result.slam_outcomes, result.slam_ground_truth, out_dir / "slam_trajectories.png"):
            slam_plots.append("slam_trajectories.png")
        slam_info = {**result.slam_info, "plots": slam_plots}
    report = {
        "source": result.source,
        "partial": result.partial,
        "error": result.error or None,
        "topics": result.topics,
        "summary": {
            "frames": result.frames,
            "keyframes": len(result.keyframes),
            "targets": len(result.targets),
            "ground_truth": result.ground_truth,
            "min_inliers": result.min_inliers,
        },
        "config": result.config,
        "backends": aggregate(result),
        "keyframes": [asdict(r) for r in result.records],
        "crops": crops,
        "plots": plots,
        "restored_bag": result.restored_bag or None,
    }
    if slam_info:
        report["slam"] = slam_info
    report = _jsonable(report)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    (out_dir / "report.md").write_text(report_markdown(report))
    return report

