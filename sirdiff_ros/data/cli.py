"""``sirdiff-synth``: write a synthetic motion-blur sequence as a TUM-style folder (and a bag).

Example::

    sirdiff-synth /tmp/seq --frames 50 --seed 7 --width 640 --height 480 --bag --bag-format mcap

writes ``/tmp/seq`` (see :mod:`sirdiff_ros.data.folder`) and, with ``--bag``,
the ROS 2 bag ``/tmp/seq/bag`` (see :mod:`sirdiff_ros.data.bags`).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from .bags import FrameBagWriter
from .folder import SynthFolderWriter
from .synth import PRESETS, SynthConfig, generate_sequence
from .textures import is_heldout_seed

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    d = SynthConfig()
    t = d.trajectory
    p = argparse.ArgumentParser(prog="sirdiff-synth", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", type=Path, help="output folder (created; must be empty)")
    p.add_argument("--frames", type=int, default=100, help="number of frames")
    p.add_argument("--seed", type=int, default=0, help=">= 1000000 selects the held-out split")
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--fps", type=float, default=d.fps)
    p.add_argument("--exposure", type=float, default=d.exposure_s, help="exposure time, seconds")
    p.add_argument("--subframes", type=int, default=d.subframes, help="renders averaged per exposure")
    p.add_argument("--hfov", type=float, default=d.hfov_deg, help="horizontal field of view, degrees")
    p.add_argument("--noise", type=float, default=d.noise_std, help="read noise std (linear intensity)")
    p.add_argument("--shot-noise", type=float, default=d.shot_noise, help="Poisson gain (linear intensity)")
    p.add_argument("--downsample", type=int, default=d.downsample, help="e.g. 4: low-res input, full-res sharp")
    p.add_argument("--soften", type=float, default=d.soften_px,
                   help="Gaussian sigma (px) softening the scene: smooth textures, soft sharp frames")
    p.add_argument("--speed", type=float, default=t.speed, help="mean linear speed, m/s")
    p.add_argument("--angular-speed", type=float, default=t.angular_speed, help="RMS angular rate, rad/s")
    p.add_argument("--burst-rate", type=float, default=t.burst_rate, help="fast pans per second")
    p.add_argument("--burst-speed", type=float, default=t.burst_speed, help="peak pan rate, rad/s")
    p.add_argument("--burst-angle", type=float, default=t.burst_angle, help="mean pan angle, rad")
    p.add_argument("--burst-start", type=float, default=t.burst_start_s, help="no pan before this time, s")
    p.add_argument("--tile-scale", type=float, default=d.tile_scale, help="multiplies how large scene textures repeat")
    p.add_argument("--photo-share", type=float, default=d.photo_share,
                   help="chance a room surface or box gets a photograph, not a procedural pattern")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="named settings (explicit options override them); slam: sequences where blur decides SLAM "
                        "tracking (30 fps, pans)")
    p.add_argument("--bag", action="store_true", help="also write a ROS 2 bag to OUT/bag")
    p.add_argument("--bag-format", choices=("mcap", "db3"), default="mcap")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


# Preset keys (SynthConfig / TrajectoryConfig fields) -> argparse destinations.
_PRESET_DEST = {"exposure_s": "exposure", "burst_start_s": "burst_start", "hfov_deg": "hfov", "noise_std": "noise",
                "soften_px": "soften"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, with a ``--preset``'s values as the defaults that explicit options override."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.preset:
        parser.set_defaults(**{_PRESET_DEST.get(k, k): v for k, v in PRESETS[first.preset].items()})
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.frames < 1:
        print("sirdiff-synth: --frames must be >= 1", file=sys.stderr)
        return 2
    options = dict(fps=args.fps, exposure_s=args.exposure, subframes=args.subframes, hfov_deg=args.hfov,
                   noise_std=args.noise, shot_noise=args.shot_noise, downsample=args.downsample, soften_px=args.soften,
                   tile_scale=args.tile_scale, photo_share=args.photo_share, speed=args.speed, angular_speed=args.angular_speed,
                   burst_rate=args.burst_rate, burst_speed=args.burst_speed, burst_angle=args.burst_angle,
                   burst_start_s=args.burst_start)
    try:
        cfg = SynthConfig.from_kwargs(width=args.width, height=args.height, **options)
    except (ValueError, TypeError) as exc:
        print(f"sirdiff-synth: {exc}", file=sys.stderr)
        return 2
    meta = {"generator": "sirdiff_ros.data.synth.generate_sequence", "seed": args.seed, "preset": args.preset,
            "heldout": is_heldout_seed(args.seed), "config": asdict(cfg)}
    try:
        folder = SynthFolderWriter(args.out, meta)
        bag = FrameBagWriter(args.out / "bag", args.bag_format) if args.bag else None
    except FileExistsError as exc:
        print(f"sirdiff-synth: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    frames = generate_sequence(args.seed, args.frames, args.width, args.height, **options)
    with ExitStack() as stack:
        writers = [stack.enter_context(w) for w in (folder, bag) if w is not None]
        for f in tqdm(frames, total=args.frames, unit="frame", disable=args.no_progress, desc="sirdiff-synth"):
            for w in writers:
                w.write(f)
    dt = time.perf_counter() - start
    where = f"{args.out}" + (f" and bag {args.out / 'bag'} ({args.bag_format})" if bag else "")
    size = f"{args.width}x{args.height}"
    if args.downsample > 1:
        size += f" (camera images {args.width // args.downsample}x{args.height // args.downsample})"
    print(f"wrote {args.frames} frames {size} to {where} in {dt:.1f} s "
          f"({args.frames / dt:.2f} frames/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
