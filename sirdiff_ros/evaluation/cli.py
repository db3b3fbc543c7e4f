"""``sirdiff-eval``: replay a bag offline through the restoration pipeline and report.

Example::

    sirdiff-eval run.mcap --out eval_run --backend passthrough,fusion,sirdiff --views 4

Exit codes: 0 done, 1 done but the report is partial (the bag broke
part-way), 2 bad arguments, unreadable bag or missing/ambiguous topics.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

__all__ = ["main", "build_parser", "pipeline_from_params_file"]

log = logging.getLogger("sirdiff-eval")


def _intrinsics(text: str):  # -> CameraIntrinsics (argparse type for --intrinsics)
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--intrinsics wants fx,fy,cx,cy,width,height numbers, got {text!r}") from None
    if len(vals) != 6:
        raise argparse.ArgumentTypeError(f"--intrinsics wants 6 values fx,fy,cx,cy,width,height, got {len(vals)}")
    from ..core.geometry import CameraIntrinsics, GeometryError

    try:
        return CameraIntrinsics(vals[0], vals[1], vals[2], vals[3], int(vals[4]), int(vals[5]))
    except GeometryError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def pipeline_from_params_file(path: Path):  # -> PipelineConfig
    """The node's pipeline settings from its parameters YAML (``config/restore.yaml``
    layout: ``<node or /**>: ros__parameters: {...}``), so the replay makes
    the same keyframe, gate and selection decisions as the deployed node.
    Parameters not given keep the node's defaults; unknown or invalid ones
    raise ValueError."""
    import yaml

    from ..ros.params import check_value, defaults, pipeline_config

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read parameters file {path}: {exc}") from exc
    blocks = [v["ros__parameters"] for v in (doc or {}).values() if isinstance(v, dict) and "ros__parameters" in v]
    if len(blocks) != 1:
        raise ValueError(f"{path}: expected one '<node>: ros__parameters:' block, found {len(blocks)}")
    values = defaults()
    for name, value in blocks[0].items():
        problem = check_value(name, value)
        if problem:
            raise ValueError(f"{path}: {problem}")
        values[name] = value
    return pipeline_config(values)


def _cli_wording(message: str) -> str:
    """The data package names Python arguments (``image_topic=``); say the CLI flags."""
    message = re.sub(r"\b(image|info|pose|gt|depth)_topic=", r"--\1-topic", message)
    if "CameraInfo" in message:
        message += " (or give the calibration with --intrinsics fx,fy,cx,cy,width,height)"
    return message


def _slam_modes(specs: list[str]) -> tuple[str, ...]:
    """``--slam`` values (``orbslam3:mono,orbslam3:rgbd`` ...) -> distinct modes in the order given."""
    from ..slam.orbslam import parse_slam_spec

    modes: list[str] = []
    for spec in (s for v in specs for s in v.split(",") if s.strip()):
        mode = parse_slam_spec(spec)
        if mode not in modes:
            modes.append(mode)
    return tuple(modes)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sirdiff-eval",
        description="Replay a ROS 1 (.bag) or ROS 2 (.db3/.mcap) bag through the keyframe / view-selection / "
        "restoration pipeline with several backends side by side; write a restored bag and a report.",
    )
    p.add_argument("bag", type=Path, help="bag file (.bag, .db3, .mcap) or ROS 2 bag directory")
    p.add_argument("--out", type=Path, required=True, help="output folder (report, crops, plots, restored bag)")
    p.add_argument(
        "--backend",
        default="passthrough,fusion",
        help="comma-separated backends run side by side (default: %(default)s; available: passthrough, fusion, "
        "sirdiff, sirdiff-single)",
    )
    p.add_argument("--views", type=int, default=None, help="views per restoration set, target included (default 4)")
    p.add_argument(
        "--params", type=Path, help="the node's parameters YAML (e.g. config/restore.yaml): same keyframe/gate/selection"
    )
    p.add_argument("--image-topic", help="camera image topic (detected when unambiguous)")
    p.add_argument("--info-topic", help="CameraInfo topic (detected)")
    p.add_argument("--pose-topic", help="PoseStamped/PoseWithCovarianceStamped/Odometry topic (detected)")
    p.add_argument("--gt-topic", help="ground-truth sharp image topic (detected under /ground_truth/)")
    p.add_argument("--depth-topic", help="depth image topic (detected)")
    p.add_argument("--intrinsics", type=_intrinsics, help="fx,fy,cx,cy,width,height for bags without CameraInfo")
    p.add_argument(
        "--degrade",
        type=int,
        metavar="SEED",
        help="real, sharp recordings: motion-blur a fraction of the frames (physical degrader) and score "
        "against the originals",
    )
    p.add_argument("--degrade-fraction", type=float, default=0.5, help="share of frames blurred (default %(default)s)")
    p.add_argument(
        "--degrade-depth", type=float, default=2.0, help="scene depth (m) assumed by the degrader without a depth topic"
    )
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many images")
    p.add_argument("--no-mapping", action="store_true", help="skip the pycolmap mapping evaluation")
    p.add_argument("--no-bag", action="store_true", help="do not write the restored bag")
    p.add_argument(
        "--slam",
        action="append",
        metavar="orbslam3[:mono|rgbd]",
        help="run ORB-SLAM3 on the input and on every backend's full output stream (repeat or comma-separate "
        "for several modes; needs the optional extra sirdiff_ros[slam])",
    )
    p.add_argument(
        "--slam-runs",
        type=int,
        default=1,
        help="ORB-SLAM3 runs per stream and mode (it is not deterministic); the median run by lost frames is "
        "reported, with every run listed (default %(default)s)",
    )
    p.add_argument(
        "--orb-vocab",
        type=Path,
        help="DBoW2 ORB vocabulary for --slam (e.g. the official ORBvoc.txt; default $PYORBSLAM3_VOCAB, else a "
        "vocabulary built once from training-split synthetic renders, see sirdiff-vocab)",
    )
    p.add_argument("--bag-format", choices=("db3", "mcap"), default="db3", help="restored bag storage")
    p.add_argument("--device", default=None, help="device for model backends (cpu, cuda:0)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps for model backends")
    p.add_argument("--checkpoint", default=None, help="checkpoint for model backends (default: shipped weights)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="sirdiff-eval: %(message)s")
    from ..core.restorers import available_restorers
    from ..data.bags import BagError
    from ..slam.orbslam import SlamUnavailable
    from .replay import ReplayConfig, evaluate_bag

    backends = tuple(b.strip() for b in args.backend.split(",") if b.strip())
    known = available_restorers()
    bad = [b for b in backends if b not in known]
    if bad:
        print(f"sirdiff-eval: unknown backend(s) {', '.join(bad)}; available: {', '.join(known)}", file=sys.stderr)
        return 2
    try:
        slam_modes = _slam_modes(args.slam or [])
    except ValueError as exc:
        print(f"sirdiff-eval: {exc}", file=sys.stderr)
        return 2
    model_opts = {k: v for k, v in (("device", args.device), ("steps", args.steps), ("checkpoint", args.checkpoint)) if v is not None}
    options = {b: model_opts for b in backends if b.startswith("sirdiff")}
    try:
        pipeline = pipeline_from_params_file(args.params) if args.params else None
        config = ReplayConfig(
            backends=backends,
            **({"pipeline": pipeline} if pipeline is not None else {}),
            num_views=args.views,
            backend_options=options,
            max_frames=args.max_frames,
            mapping=not args.no_mapping,
            slam_modes=slam_modes,
            slam_vocabulary=str(args.orb_vocab) if args.orb_vocab else None,
            slam_runs=args.slam_runs,
        )
        result = evaluate_bag(
            args.bag,
            args.out,
            config,
            topics={"image": args.image_topic, "info": args.info_topic, "pose": args.pose_topic, "gt": args.gt_topic, "depth": args.depth_topic},
            intrinsics=args.intrinsics,
            write_bag=not args.no_bag,
            bag_format=args.bag_format,
            progress=not args.quiet,
            degrade=None
            if args.degrade is None
            else {"seed": args.degrade, "fraction": args.degrade_fraction, "depth_prior": args.degrade_depth},
            announce=log.info,
        )
    except (BagError, ValueError, FileExistsError, SlamUnavailable) as exc:
        print(f"sirdiff-eval: {_cli_wording(str(exc))}", file=sys.stderr)
        return 2
    print(f"sirdiff-eval: {result.frames} frames, {len(result.keyframes)} keyframes, {len(result.targets)} targets; "
          f"report: {args.out / 'report.md'}")
    if result.partial:
        print(f"sirdiff-eval: PARTIAL report — {result.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
