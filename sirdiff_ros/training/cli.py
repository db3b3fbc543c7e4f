"""``sirdiff-train``: cache training view sets, train (resumable), export weights.

Examples::

    sirdiff-train cache --out cache/synth96 --sets 3000 --views 4 --size 96x96
    sirdiff-train train --run runs/cpu --cache cache/synth96 --preset small --steps 20000
    sirdiff-train train --run runs/cpu --steps 30000      # resume, go further
    sirdiff-train export --run runs/cpu --out exported/cpu
    sirdiff-train refine --run runs/cpu-head --base exported/cpu --cache cache/synth96 --steps 3000
    sirdiff-train export --run runs/cpu-head --out sirdiff_ros/weights/sirdiff-cpu   # base + head
    accelerate launch -m sirdiff_ros.training.cli train --run runs/gpu --cache ...   # multi-GPU
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from ..core.registration import REGISTRATION

__all__ = ["main", "build_parser"]


def _size(text: str) -> tuple[int, int]:
    """'WxH' -> (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 96x96 (WxH), got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def _range(text: str) -> tuple[int, int]:
    parts = [int(v) for v in text.split("-")]
    lo, hi = (parts[0], parts[-1])
    if lo < 1 or hi < lo:
        raise argparse.ArgumentTypeError(f"view range must look like 1-4, got {text!r}")
    return lo, hi


def _run_options(p: argparse.ArgumentParser, config_cls: type) -> None:
    """The options train and refine runs share; a run's config is their one source of defaults."""
    from .config import LR_SCHEDULES

    p.add_argument("--steps", type=int, dest="max_steps", help="total steps to reach")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--crop", type=_size, help="random crop WxH (same window in all views)")
    p.add_argument("--views", type=_range, dest="n_views", help="random views per batch, e.g. 1-4")
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="after warmup: constant, or cosine decay to 0 at --steps")
    p.add_argument("--soften-fraction", type=float,
                   help="share of sets seen on a Gaussian-softened scene (sharp and blurred views alike): "
                        "soft textures are not motion blur")
    p.add_argument("--soften-sigma", type=float, nargs=2, metavar=("LO", "HI"),
                   help="range of the softening Gaussian's sigma in px")
    p.add_argument("--seed", type=int)
    p.add_argument("--save-every", type=int)
    p.add_argument("--threads", type=int, dest="num_threads", help="torch threads (1 is fastest on a shared CPU)")
    p.add_argument("--stop-after", type=int, default=None, help="train at most this many steps in this call")
    # Defaults and the (default: ...) of every help text come from the config dataclass.
    defaults = {f.name: f.default for f in fields(config_cls) if f.default is not MISSING}
    for action in p._actions:
        if action.dest in defaults and action.default in (None, False):
            value = defaults[action.dest]
            if action.dest == "crop" and value is not None:
                value = (value[1], value[0])  # the config holds (h, w), the option WxH
            action.default = value
            shown = {"crop": "x", "n_views": "-", "soften_sigma": " "}.get(action.dest, "").join(map(str, value)) \
                if isinstance(value, tuple) else value
            action.help = f"{action.help or ''} (default: {shown})".strip()


def _config_from_args(config_cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """A new run's config from the parsed options (every field an option sets, plus ``extra``)."""
    values = {f.name: getattr(args, f.name) for f in fields(config_cls) if hasattr(args, f.name)}
    if values.get("crop") is not None:
        values["crop"] = (values["crop"][1], values["crop"][0])  # WxH -> (h, w)
    if values.get("soften_sigma") is not None:
        values["soften_sigma"] = tuple(values["soften_sigma"])
    cache = args.cache[0] if len(args.cache) == 1 else args.cache  # one folder: run.json as before
    return config_cls(**{**values, "cache": cache, **extra})


class _UsageError(Exception):
    """A command line that cannot start the run (reported with exit code 2)."""


def _run_config(config_cls: type, args: argparse.Namespace, required: tuple[str, ...], **extra: Any) -> Any:
    """The config of ``args.run``: its run.json (resumed; --steps moves the goal) or a new one."""
    run = Path(args.run)
    if (run / "run.json").is_file():
        cfg = config_cls.from_json(run / "run.json")
        cfg.max_steps = args.max_steps
        return cfg
    missing = [f"--{name}" for name in required if not getattr(args, name)]
    if missing:
        raise _UsageError(f"{run} is a new run; {' and '.join(missing)} required")
    return _config_from_args(config_cls, args, **extra)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sirdiff-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("cache", help="render training view sets (training seeds only) into .npz shards")
    c.add_argument("--out", required=True, help="shard folder (git-ignored, e.g. cache/synth96)")
    c.add_argument("--dataset", help="instead of the generator: a dataset folder/bag read by sirdiff_ros.data.readers "
                   "(sets of consecutive frames; sharp real frames are blurred by the physical degrader)")
    c.add_argument("--stride", type=int, default=2, help="--dataset: a new set every STRIDE frames")
    c.add_argument("--sequences", type=int, default=None, metavar="N",
                   help="instead of --sets: N synthetic sequences (training seeds from --first-seed), one registered "
                        "set per keyframe as the online core builds it (keyframe buffer, view selection)")
    c.add_argument("--real-photos", type=int, default=None, metavar="N",
                   help="instead of --sets: N hand-held sequences of the real-photo corpus's train split "
                        "(../shared/data/real_images), exposure known, views deblurred as the backends receive them; "
                        "the gate's targets only")
    c.add_argument("--frames", type=int, default=60, help="--sequences / --real-photos: frames per sequence")
    c.add_argument("--targets-only", action="store_true",
                   help="--sequences: only the keyframes the blur gate makes restoration targets")
    c.add_argument("--sets", type=int, default=2000, help="number of view sets")
    c.add_argument("--views", type=int, default=4, help="views per set")
    c.add_argument("--size", type=_size, default=(96, 96), help="view size WxH")
    c.add_argument("--first-seed", type=int, default=0, help="first training seed index")
    c.add_argument("--shard-size", type=int, default=64)
    c.add_argument("--baseline", type=float, nargs=2, default=(0.05, 0.3), metavar=("MIN", "MAX"),
                   help="distance between views of a set, metres (close views overlap more)")
    c.add_argument("--max-angular-speed", type=float, default=4.0, help="rad/s during the exposure of the blurriest view")
    c.add_argument("--max-speed", type=float, default=1.5, help="m/s during the exposure of the blurriest view")
    c.add_argument("--register", action="store_true",
                   help="store each set in the grid of a random target view (sirdiff_ros.core.registration; "
                        "trains checkpoints that the sirdiff backend feeds registered partners)")
    c.add_argument("--flow-fraction", type=float, default=0.5,
                   help="--register / --sequences: share of sets registered by optical flow instead of depth and poses")
    c.add_argument("--blurriest-fraction", type=float, default=0.0,
                   help="--register: share of sets whose target is the least sharp view (the rest: a random view)")

    r = sub.add_parser("register", help="resample the sets of existing shard folders into a random target view's "
                                        "grid (optical flow: cached sets carry no depth)")
    r.add_argument("--cache", nargs="+", required=True, help="unregistered shard folder(s)")
    r.add_argument("--out", required=True, help="new shard folder")
    r.add_argument("--seed", type=int, default=0, help="seed of the target choice")
    r.add_argument("--shard-size", type=int, default=64)

    from .config import RefineConfig, TrainConfig

    t = sub.add_parser("train", help="train or resume a run")
    t.add_argument("--run", required=True, help="run folder (resumed if it holds checkpoints)")
    t.add_argument("--cache", nargs="+", help="shard folder(s), concatenated in order (required for a new run)")
    t.add_argument("--preset", help="model preset (sirdiff_ros.model.presets)")
    t.add_argument("--task", choices=("deblur", "sr4"))
    t.add_argument("--ema-decay", type=float)
    t.add_argument("--prediction-type", choices=("epsilon", "v_prediction", "sample"),
                   help="network target; v (SD 2.1's choice) by default: with eps, 500 CPU steps gave samples at "
                        "6.6 dB vs 18.7 dB input (x0 error amplified 15x at t=999), see docs/training.md")
    t.add_argument("--snr-gamma", type=float, help="min-SNR-gamma loss weighting (e.g. 5)")
    t.add_argument("--high-t-fraction", type=float,
                   help="share of sets trained at the noisiest timesteps, [START*T, T) (few-step sampling starts there)")
    t.add_argument("--high-t-start", type=float, help="START for --high-t-fraction (0..1)")
    t.add_argument("--view-lr-scale", type=float,
                   help="learning-rate multiplier for the cross-view paths (3D convolutions, their gates)")
    t.add_argument("--init-from", help="a run folder whose newest EMA weights initialise this new run (fine-tuning)")
    t.add_argument("--no-zero-snr", action="store_true",
                   help="keep SD's schedule (t=999 still holds 0.068*x0); always so for --prediction-type epsilon")
    t.add_argument("--no-residual", action="store_true", help="diffuse the sharp latents, not the residual")
    t.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"))
    t.add_argument("--export", help="after training, export the EMA weights to this folder")
    _run_options(t, TrainConfig)

    f = sub.add_parser("refine", help="train or resume the full-resolution refinement head of an exported "
                                      "checkpoint (its UNet frozen; sirdiff_ros.model.refiner)")
    f.add_argument("--run", required=True, help="refine run folder (resumed if it holds checkpoints)")
    f.add_argument("--base", help="exported checkpoint folder without a head (required for a new run)")
    f.add_argument("--cache", nargs="+", help="shard folder(s) (required for a new run)")
    f.add_argument("--channels", type=int, help="feature channels of the head")
    f.add_argument("--blocks", type=int, help="residual blocks of the head")
    f.add_argument("--set-context", action="store_true",
                   help="the head also sees the mean and spread of its view set's degraded views")
    f.add_argument("--restored-context", action="store_true",
                   help="with --set-context: the same summary of the set's restored views too")
    f.add_argument("--mean-gate", action="store_true",
                   help="start from a learned per-pixel blend of the restoration and its set's mean (implies --set-context)")
    f.add_argument("--init-head", help="a saved head folder to fine-tune (e.g. a checkpoint's refiner/)")
    _run_options(f, RefineConfig)

    e = sub.add_parser("export", help="export a run's weights as a checkpoint folder (a refine run: its base "
                                      "checkpoint with the head attached)")
    e.add_argument("--run", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--fp16", action="store_true", help="store weights in float16 (train runs)")
    e.add_argument("--raw", action="store_true", help="export the raw weights, not the EMA (train runs)")
    e.add_argument("--default-steps", type=int, default=None,
                   help="sampling steps the backend uses by default (train runs: 4; refine runs: the base's)")
    e.add_argument("--deblurred-head-for", metavar="CHECKPOINT",
                   help="refine runs: write CHECKPOINT (the same UNet as the run's base, with its own head) with the "
                        "run's head added as its head for view sets deblurred by their own motion")
    return p


def _cache(args: argparse.Namespace) -> int:
    """Render training view sets into .npz shards."""
    from ..data.textures import training_seeds
    from .data import (dataset_view_sets, real_photo_view_sets, registered_view_sets, sequence_view_sets,
                       synthetic_frames, synthetic_view_sets, write_shards)

    if sum([bool(args.dataset), args.sequences is not None, args.real_photos is not None]) > 1:
        raise _UsageError("--dataset, --sequences and --real-photos are different sources; give one")
    w, h = args.size
    if args.dataset:
        meta = {"dataset": args.dataset, "views": args.views, "stride": args.stride}
        sets = dataset_view_sets(args.dataset, args.views, stride=args.stride, seed=args.first_seed)
    elif args.real_photos is not None:
        meta = {"generator": "sirdiff_ros.data.real_photos.photo_plane_sequence", "split": "train",
                "sequences": args.real_photos, "frames": args.frames, "views": args.views, "width": w, "height": h,
                "first_seed": args.first_seed, "registration": REGISTRATION, "flow_fraction": args.flow_fraction,
                "targets_only": True, "deblurred": True}
        sets = real_photo_view_sets(args.real_photos, args.frames, args.views, w, h, seed=args.first_seed,
                                    flow_fraction=args.flow_fraction)
    elif args.sequences is not None:
        meta = {"generator": "sirdiff_ros.data.synth.generate_sequence", "sequences": args.sequences,
                "frames": args.frames, "views": args.views, "width": w, "height": h,
                "first_seed": args.first_seed, "registration": REGISTRATION, "flow_fraction": args.flow_fraction,
                "targets_only": args.targets_only, "target_seed": args.first_seed}
        sets = sequence_view_sets(training_seeds(args.sequences, args.first_seed), args.frames, args.views, w, h,
                                  seed=args.first_seed, flow_fraction=args.flow_fraction,
                                  targets_only=args.targets_only)
    else:
        seeds = training_seeds(args.sets, args.first_seed)
        opts = {"baseline_m": tuple(args.baseline), "max_angular_speed": args.max_angular_speed,
                "max_speed": args.max_speed}
        meta = {"generator": "sirdiff_ros.data.synth.sample_view_set", "sets": args.sets, "views": args.views,
                "width": w, "height": h, "first_seed": args.first_seed, **opts}
        if args.register:
            meta.update(registration=REGISTRATION, flow_fraction=args.flow_fraction,
                        blurriest_fraction=args.blurriest_fraction, target_seed=args.first_seed)
            sets = registered_view_sets(synthetic_frames(seeds, args.views, w, h, **opts), seed=args.first_seed,
                                        flow_fraction=args.flow_fraction,
                                        blurriest_fraction=args.blurriest_fraction)
        else:
            sets = synthetic_view_sets(seeds, args.views, w, h, **opts)
    paths = write_shards(sets, args.out, args.shard_size, meta=meta)
    print(f"wrote {len(paths)} shards to {args.out}")
    return 0


def _register(args: argparse.Namespace) -> int:
    """Resample existing shards into a target view's grid."""
    from .data import DataError, ShardStore, registered_view_sets, shard_frames, write_shards

    try:
        store = ShardStore(args.cache)
    except DataError as exc:
        raise _UsageError(str(exc)) from exc
    if store.registration != "none":
        raise _UsageError(f"{args.cache} is already registered ({store.registration})")
    meta = {"registered_from": args.cache, "sets": len(store), "views": store.views,
            "registration": REGISTRATION, "flow_fraction": 1.0, "target_seed": args.seed}
    sets = registered_view_sets(shard_frames(store), seed=args.seed)
    paths = write_shards(sets, args.out, args.shard_size, meta=meta)
    print(f"wrote {len(paths)} shards to {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    """Train or resume a diffusion run."""
    from .trainer import TrainConfig, Trainer, export_run

    cfg = _run_config(TrainConfig, args, ("cache",),
                      zero_terminal_snr=not args.no_zero_snr and args.prediction_type != "epsilon",
                      residual=not args.no_residual)
    trainer = Trainer(args.run, cfg)
    step = trainer.fit(stop_after=args.stop_after)
    print(f"reached step {step} of {trainer.config.max_steps}")
    if args.export:
        out = export_run(args.run, args.export)
        print(f"exported to {out}")
    return 0


def _refine(args: argparse.Namespace) -> int:
    """Train or resume a refinement-head run."""
    from .refine import RefineConfig, RefinerTrainer

    cfg = _run_config(RefineConfig, args, ("base", "cache"), set_context=args.set_context or args.restored_context or args.mean_gate)
    refiner = RefinerTrainer(args.run, cfg)
    step = refiner.fit(stop_after=args.stop_after)
    print(f"reached step {step} of {refiner.config.max_steps}")
    return 0


def _export(args: argparse.Namespace) -> int:
    """Export a run's weights as a checkpoint folder."""
    from .refine import export_refined_run, is_refine_run
    from .trainer import export_run

    if is_refine_run(args.run):
        out = export_refined_run(args.run, args.out, default_steps=args.default_steps,
                                 deblurred_head_for=args.deblurred_head_for)
    elif args.deblurred_head_for:
        raise _UsageError("--deblurred-head-for exports the head of a refine run")
    else:
        out = export_run(args.run, args.out, use_ema=not args.raw, fp16=args.fp16,
                         default_steps=4 if args.default_steps is None else args.default_steps)
    print(f"exported to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {"cache": _cache, "register": _register, "train": _train, "refine": _refine, "export": _export}[args.cmd]
    try:
        return command(args)
    except _UsageError as exc:
        print(f"sirdiff-train: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
