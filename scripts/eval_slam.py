"""Does restoration help SLAM? ORB-SLAM3 on held-out synthetic burst sequences and degraded real frames.

For each held-out seed: a ``--preset slam`` sequence is written as a bag,
ORB-SLAM3 (mono and RGB-D) runs on its sharp renders (the bar the sequences
must pass: blur, not the scene, decides tracking), then ``sirdiff-eval
--slam`` runs it on the blurred input and on each backend's output. The
real RGB-D frames of ``../shared/data/slambook2_rgbd`` go through
``sirdiff-eval --degrade`` the same way. Writes ``OUT/summary.md`` and
``OUT/summary.json`` (and each evaluation's report under ``OUT/<name>/``).

    python scripts/eval_slam.py runs/eval_slam --frames 150 --exposure-s 0.03 --slam-runs 3

``--exposure-s`` gives the pipeline the camera's exposure time (the
``slam`` preset's is 0.03 s), as a robot whose driver reports it would: the
camera's motion then gates the frames and every view is deblurred by it.

Needs the optional extra (``make venv-slam``). Heavy: run it with ``nice``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from sirdiff_ros.data.bags import write_frames_bag
from sirdiff_ros.data.synth import generate_sequence
from sirdiff_ros.evaluation.cli import main as eval_main
from sirdiff_ros.slam.orbslam import SlamInput, run_orbslam, slam_metrics
from sirdiff_ros.slam.vocabulary import resolve_vocabulary

REPO = Path(__file__).resolve().parents[1]
SLAMBOOK = REPO.parent / "shared" / "data" / "slambook2_rgbd"
MODES = ("mono", "rgbd")


def _sharp_rows(seed: int, frames: int, vocabulary: Path) -> dict[str, dict[str, Any]]:
    """ORB-SLAM3 on the sharp renders of the sequence (the reference the blur is judged against)."""
    seq = list(generate_sequence(seed, frames, 640, 480, preset="slam"))
    gt = {f.stamp_ns: f.pose for f in seq}
    out = {}
    for mode in MODES:
        inputs = [SlamInput(f.stamp_ns, f.extras["sharp"], f.depth) for f in seq]
        run = run_orbslam(inputs, seq[0].intrinsics, mode, vocabulary, fps=30.0)
        m = slam_metrics(run, gt)
        m["timeline"] = "".join({"OK": ".", "RECENTLY_LOST": "r", "LOST": "L", "NOT_INITIALIZED": "n"}.get(s, "X")
                                for s in run.states)
        out[mode] = m
    return out


def _evaluate(name: str, bag: Path, out: Path, backends: str, vocabulary: Path, extra: list[str]) -> dict[str, Any]:
    target = out / name
    args = [str(bag), "--out", str(target), "--backend", backends, "--no-mapping", "--no-bag", "--quiet",
            "--slam", ",".join(f"orbslam3:{m}" for m in MODES), "--orb-vocab", str(vocabulary), *extra]
    rc = eval_main(args)
    if rc not in (0, 1):
        raise SystemExit(f"sirdiff-eval failed on {name} (exit {rc})")
    report = json.loads((target / "report.json").read_text())
    rows = {stream: agg.get("slam", {}) for stream, agg in report["backends"].items()}
    psnr = {stream: agg["targets"].get("gain_mean") for stream, agg in report["backends"].items() if stream != "input"}
    return {"streams": rows, "target_gain_db": psnr, "targets": report["summary"]["targets"], "report": str(target)}


def _fmt(v: Any, scale: float = 1.0, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v * scale:.{digits}f}"


def _verdict(inp: dict[str, Any], out: dict[str, Any]) -> str:
    """The goal: at least 50 % fewer lost frames (LOST + RECENTLY_LOST) than the input, with ATE no worse."""
    lost_in, lost_out = inp.get("lost_frames", 0), out.get("lost_frames", 0)
    a_in, a_out = inp.get("ate_rmse_m"), out.get("ate_rmse_m")
    fewer = lost_out <= 0.5 * lost_in if lost_in else lost_out == 0
    ate_ok = a_out is not None and (a_in is None or a_out <= a_in * 1.05 + 1e-3)
    return "yes" if fewer and ate_ok else "no"


def summary_markdown(results: dict[str, Any]) -> str:
    lines = [
        "| sequence | mode | stream | tracked % | lost | not init. | first tracked | map resets | ATE cm | RPE cm | goal met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        for mode in MODES:
            rows = [("sharp renders", res.get("sharp", {}).get(mode))] if "sharp" in res else []
            rows += [(s, r.get(mode)) for s, r in res["streams"].items() if s != "passthrough"]
            inp = res["streams"]["input"].get(mode, {})
            for stream, m in rows:
                if not m:
                    continue
                goal = "" if stream in ("input", "sharp renders") else _verdict(inp, m)
                # With several ORB-SLAM3 runs: the median run's count, then every run's.
                runs = m.get("runs")
                lost = f"{m['lost_frames']}" + (f" ({', '.join(str(r['lost_frames']) for r in runs)})" if runs else "")
                lines.append(
                    f"| {name} | {mode} | {stream} | {_fmt(m['tracked_fraction'], 100)} | {lost} | "
                    f"{m['not_initialized_frames']} | {m['first_tracked_frame'] if m['first_tracked_frame'] is not None else '–'} | "
                    f"{m['map_resets']} | {_fmt(m['ate_rmse_m'], 100, 2)} | {_fmt(m['rpe_rmse_m'], 100, 2)} | {goal} |"
                )
    # Totals over the sequences with a burst (every row but the sharp renders), median runs.
    lines += ["", "| mode | stream | lost frames, all sequences | sequences with the goal met |", "|---|---|---|---|"]
    for mode in MODES:
        streams = sorted({s for res in results.values() for s in res["streams"] if s != "passthrough"},
                         key=lambda s: (s != "input", s))
        for stream in streams:
            rows = [(res["streams"][stream].get(mode), res["streams"]["input"].get(mode, {}))
                    for res in results.values() if stream in res["streams"]]
            rows = [(m, inp) for m, inp in rows if m]
            met = "" if stream == "input" else f"{sum(_verdict(inp, m) == 'yes' for m, inp in rows)} / {len(rows)}"
            lines.append(f"| {mode} | {stream} | {sum(m['lost_frames'] for m, _ in rows)} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--seeds", default="1000001,1000002,1000003,1000007,1000008",
                   help="held-out seeds (>= 1000000; 1000001 has no pan in 150 frames: a control)")
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--backends", default="fusion,sirdiff")
    p.add_argument("--orb-vocab", type=Path, default=None)
    p.add_argument("--no-real", action="store_true", help="skip the degraded real frames")
    p.add_argument("--exposure-s", type=float, default=0.0,
                   help="the camera's exposure time given to the pipeline (node parameter exposure_s; 0: unknown)")
    p.add_argument("--slam-runs", type=int, default=1, help="ORB-SLAM3 runs per stream and mode (median run reported)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    extra = ["--slam-runs", str(args.slam_runs)]
    if args.exposure_s > 0:
        params = args.out / "params.yaml"
        params.write_text(f"/**:\n  ros__parameters:\n    exposure_s: {args.exposure_s}\n")
        extra += ["--params", str(params)]
    vocabulary = resolve_vocabulary(args.orb_vocab, announce=print).path
    results: dict[str, Any] = {}
    summary_json = args.out / "summary.json"
    for seed in (int(s) for s in args.seeds.split(",")):
        if seed < 1_000_000:
            raise SystemExit(f"seed {seed} is a training seed; evaluate on held-out seeds (>= 1000000)")
        name = f"synth-{seed}"
        bag = args.out / f"{name}_bag"
        if not bag.exists():
            write_frames_bag(bag, generate_sequence(seed, args.frames, 640, 480, preset="slam"), fmt="db3")
        res = _evaluate(name, bag, args.out, args.backends, vocabulary, extra)
        res["sharp"] = _sharp_rows(seed, args.frames, vocabulary)
        results[name] = res
        summary_json.write_text(json.dumps(results, indent=1))
        print(summary_markdown({name: res}), flush=True)
    if not args.no_real and SLAMBOOK.is_dir():
        from sirdiff_ros.data.readers import read_slambook_rgbd

        bag = args.out / "slambook2_bag"
        if not bag.exists():
            write_frames_bag(bag, read_slambook_rgbd(SLAMBOOK), fmt="db3")
        results["slambook2 (real, --degrade 0)"] = _evaluate("slambook2", bag, args.out, args.backends, vocabulary,
                                                             ["--degrade", "0", *extra])
        summary_json.write_text(json.dumps(results, indent=1))
    (args.out / "summary.md").write_text(summary_markdown(results))
    print(summary_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
