"""Training data: view sets cached to shards, sampled into random-N batches.

A *view set* is N overlapping views of one scene with a sharp target and a
degraded input per view. Sets come from the synthetic generator
(:func:`sirdiff_ros.data.synth.sample_view_set`, training seeds only) and are
cached to ``.npz`` shards under a git-ignored folder (``cache/``) once, since
rendering costs more than a training step on 2 CPU cores.

Sets from synthetic *sequences* (:func:`sequence_view_sets`) are the ones
the online core itself builds: video keyframes and the partners
:func:`~sirdiff_ros.core.selection.select_views` picks for them, blurred by
the trajectory's own motion (often every view of a set alike, none sharp).

Batches draw a random number of views per batch and a random view order
(the model must work for any N and must not rely on view position), a random
crop (the same window in every view, so overlap is kept) and a random
horizontal flip applied to all views alike. The degraded input is the cached
blurred view for ``task='deblur'``; for ``task='sr4'`` it is the sharp view
downsampled 4x (area) and upsampled back (bicubic), computed on the fly.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch

if TYPE_CHECKING:
    from sirdiff_ros.core.pipeline import PipelineConfig

__all__ = [
    "DataError",
    "synthetic_view_sets",
    "dataset_view_sets",
    "sequence_view_sets",
    "register_view_set",
    "registered_view_sets",
    "synthetic_frames",
    "shard_frames",
    "write_shards",
    "ShardStore",
    "BatchSampler",
    "degrade_sr4",
    "soften_set",
]


class DataError(ValueError):
    """Missing or inconsistent training data."""


ViewSet = tuple[np.ndarray, np.ndarray]  # sharp (V, H, W, 3) uint8, blurred (V, H, W, 3) uint8


def synthetic_frames(seeds: Iterable[int], n_views: int, width: int, height: int,
                     **kwargs) -> Iterator[tuple[np.ndarray, list]]:
    """(sharp (V, H, W, 3), rendered frames with poses and depth) from the synthetic
    generator for ``seeds`` (held-out seeds are refused)."""
    from sirdiff_ros.data import synth

    for seed in seeds:
        if synth.is_heldout_seed(int(seed)):
            raise DataError(f"seed {seed} belongs to the held-out evaluation split; never train on it")
        frames = synth.sample_view_set(int(seed), n_views, width, height, **kwargs)
        yield np.stack([f.extras["sharp"] for f in frames]), frames


def synthetic_view_sets(seeds: Iterable[int], n_views: int, width: int, height: int, **kwargs) -> Iterator[ViewSet]:
    """View sets from the synthetic generator for ``seeds`` (held-out seeds are refused)."""
    for sharp, frames in synthetic_frames(seeds, n_views, width, height, **kwargs):
        yield sharp, np.stack([f.image for f in frames])


def register_view_set(sharp: np.ndarray, frames: Sequence, target: int, by_flow: bool = False) -> ViewSet:
    """A view set resampled into the pixel grid of view ``target``
    (:mod:`sirdiff_ros.core.registration`): view 0 is the target, then the other
    views in order, each partner's sharp and degraded image resampled with one
    registration (computed on the degraded frames, as at run time), so every
    view stays a (sharp, degraded) pair of the same pixels. ``by_flow``
    registers by optical flow even when the frames carry depth (as for a
    camera without depth)."""
    import dataclasses

    from sirdiff_ros.core.registration import register_others, resample_others

    if by_flow:
        frames = [dataclasses.replace(f, depth=None) for f in frames]
    regs = register_others(frames, target)
    return (np.stack(resample_others(regs, list(sharp), target)),
            np.stack(resample_others(regs, [f.image for f in frames], target)))


def registered_view_sets(sets: Iterable[tuple[np.ndarray, Sequence]], seed: int = 0,
                         flow_fraction: float = 0.0, blurriest_fraction: float = 0.0) -> Iterator[ViewSet]:
    """:func:`register_view_set` over (sharp (V, H, W, 3), frames) pairs. The target
    is the least sharp view (:func:`sirdiff_ros.core.blur.sharpness`; the online
    core restores blurred keyframes) for ``blurriest_fraction`` of the sets, a
    random view otherwise. ``flow_fraction`` of the sets are registered without
    depth (optical flow, as for a camera without depth) even when frames carry it."""
    from sirdiff_ros.core.blur import sharpness

    rng = np.random.default_rng([seed, 0x2E6])
    for sharp, frames in sets:
        if blurriest_fraction > 0 and rng.random() < blurriest_fraction:  # no draw at 0: same targets as before
            target = int(np.argmin([sharpness(f.image) for f in frames]))
        else:
            target = int(rng.integers(len(frames)))
        yield register_view_set(sharp, frames, target, by_flow=rng.random() < flow_fraction)


def shard_frames(store: "ShardStore") -> Iterator[tuple[np.ndarray, list]]:
    """(sharp, frames) per cached set, the frames holding the degraded views
    without poses or depth (registration falls back to optical flow)."""
    from sirdiff_ros.core.frame import Frame
    from sirdiff_ros.core.geometry import CameraIntrinsics

    h, w = store.size
    # Flow registration does not use intrinsics; a Frame needs some.
    k = CameraIntrinsics(fx=float(w), fy=float(w), cx=(w - 1) / 2, cy=(h - 1) / 2, width=w, height=h)
    for i in range(len(store)):
        yield store.sharp[i], [Frame(image=img, stamp_ns=v, intrinsics=k) for v, img in enumerate(store.blurred[i])]


def dataset_view_sets(path: str | Path, n_views: int, stride: int = 1, seed: int = 0,
                      max_angular_speed: float = 3.0, **reader_options) -> Iterator[ViewSet]:
    """View sets from a recorded dataset read by :func:`sirdiff_ros.data.readers.read_frames`.

    Each set is ``n_views`` consecutive frames, a new set every ``stride``
    frames. Frames that carry a ground-truth sharp image (``extras['sharp']``,
    synthetic sequences) give (sharp, recorded) pairs; sharp real frames are
    motion-blurred by the physical degrader (:func:`sirdiff_ros.data.degrade.blur_frame`)
    with an angular speed drawn uniformly in [0, ``max_angular_speed``] per
    view, so blur varies across the views of a set. Mono frames become RGB.
    """
    from sirdiff_ros.data.degrade import blur_frame
    from sirdiff_ros.data.readers import read_frames

    if n_views < 1 or stride < 1:
        raise DataError(f"n_views and stride must be >= 1, got {n_views}, {stride}")
    rng = np.random.default_rng(seed)
    rgb = lambda a: np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a  # noqa: E731
    window: deque = deque(maxlen=n_views)  # (frame index, (sharp, degraded))
    for i, frame in enumerate(read_frames(path, **reader_options)):
        if "sharp" in frame.extras:
            pair = (rgb(frame.extras["sharp"]), rgb(frame.image))
        else:
            strength = float(rng.uniform(0, max_angular_speed))
            blurred, _ = blur_frame(frame, seed=seed * 100003 + i, angular_speed=strength)
            pair = (rgb(frame.image), rgb(blurred.image))
        window.append((i, pair))
        if len(window) == n_views and window[0][0] % stride == 0:
            yield np.stack([p[1][0] for p in window]), np.stack([p[1][1] for p in window])


def _online_view_sets(frames: Iterable, config: PipelineConfig, rng: np.random.Generator, flow_fraction: float,
                      targets_only: bool) -> Iterator[ViewSet]:
    """One registered set per keyframe of ``frames`` with a full selection, as the online core builds it.

    With a known exposure (``config.exposure_s``) and ``config.deconvolve``
    the views are deblurred by their own motion first, exactly what the
    backends receive at run time.
    """
    from sirdiff_ros.core.deblur import deblurred_view
    from sirdiff_ros.core.pipeline import RestorationPipeline

    pipeline = RestorationPipeline(config)
    sharp: dict[int, np.ndarray] = {}  # the buffer drops extras; ground truth by stamp
    for frame in frames:
        decision = pipeline.ingest(frame)
        sharp[frame.stamp_ns] = frame.extras["sharp"]
        if not decision.is_keyframe or (targets_only and not decision.is_target):
            continue
        views = list(pipeline.select(decision).views)
        if len(views) < config.num_views:
            continue
        if config.deconvolve and config.exposure_s > 0:
            views = [deblurred_view(v) for v in views]
        yield register_view_set(np.stack([sharp[v.stamp_ns] for v in views]), views, 0,
                                by_flow=rng.random() < flow_fraction)


def sequence_view_sets(seeds: Iterable[int], n_frames: int, n_views: int, width: int, height: int,
                       seed: int = 0, flow_fraction: float = 0.0, targets_only: bool = False,
                       pipeline_config: PipelineConfig | None = None, **synth_options) -> Iterator[ViewSet]:
    """View sets as the online core builds them, from synthetic training-seed sequences.

    Each seed's sequence (:func:`sirdiff_ros.data.synth.generate_sequence`,
    ``n_frames`` frames, ``synth_options`` as there) runs through a
    :class:`~sirdiff_ros.core.pipeline.RestorationPipeline` (keyframe buffer,
    blur gate, view selection; ``pipeline_config`` with ``num_views`` =
    ``n_views``). Every admitted keyframe for which the selection finds
    ``n_views - 1`` partners gives one set, that keyframe as the target (only
    the gate's targets with ``targets_only``), registered into its grid as the
    ``sirdiff`` backend does at run time (:func:`register_view_set`; by optical
    flow instead of depth and poses for ``flow_fraction`` of the sets).
    Held-out seeds are refused.
    """
    import dataclasses

    from sirdiff_ros.core.pipeline import PipelineConfig
    from sirdiff_ros.data import synth

    if not 0.0 <= flow_fraction <= 1.0:
        raise DataError(f"flow_fraction must lie in [0, 1], got {flow_fraction}")
    config = dataclasses.replace(pipeline_config or PipelineConfig(), num_views=n_views)
    rng = np.random.default_rng([seed, 0x5E9])
    for s in seeds:
        if synth.is_heldout_seed(int(s)):
            raise DataError(f"seed {s} belongs to the held-out evaluation split; never train on it")
        yield from _online_view_sets(synth.generate_sequence(int(s), n_frames, width, height, **synth_options),
                                     config, rng, flow_fraction, targets_only)


def real_photo_view_sets(n_sequences: int, n_frames: int, n_views: int, width: int, height: int, seed: int = 0,
                         flow_fraction: float = 0.0, targets_only: bool = True,
                         root: str | Path | None = None) -> Iterator[ViewSet]:
    """View sets from hand-held sequences of the *train* split of the real-photo corpus
    (:func:`sirdiff_ros.data.real_photos.photo_plane_sequence`), built as
    :func:`sequence_view_sets` does, with each sequence's exposure known: the
    views are deblurred by their own motion, as the backends receive them."""

    from sirdiff_ros.core.pipeline import PipelineConfig
    from sirdiff_ros.data.real_photos import photo_plane_sequence, real_photo_paths

    paths = real_photo_paths("train", root)
    if not paths:
        raise DataError("the train split of the real-photo corpus has no images")
    rng = np.random.default_rng([seed, 0x9E7])
    order = rng.permutation(len(paths))
    for k in range(n_sequences):
        path = paths[int(order[k % len(paths)])]
        frames = list(photo_plane_sequence(path, 30_000 + seed * 100_003 + k, n_frames, width, height))
        config = PipelineConfig(num_views=n_views, exposure_s=float(frames[0].extras["exposure_s"]))
        yield from _online_view_sets(frames, config, rng, flow_fraction, targets_only)


def write_shards(sets: Iterable[ViewSet], out_dir: str | Path, sets_per_shard: int = 64,
                 meta: dict | None = None, progress: bool = True) -> list[Path]:
    """Write ``sets`` into ``out_dir/shard_XXXXX.npz`` (atomic per shard; existing shards are kept,
    numbering continues, so an interrupted cache build can be extended)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = len(sorted(out.glob("shard_*.npz")))
    written: list[Path] = []
    sharp_buf: list[np.ndarray] = []
    blur_buf: list[np.ndarray] = []

    def flush() -> None:
        nonlocal index
        if not sharp_buf:
            return
        path = out / f"shard_{index:05d}.npz"
        tmp = out / f".shard_{index:05d}.tmp.npz"
        np.savez(tmp, sharp=np.stack(sharp_buf), blurred=np.stack(blur_buf))
        tmp.replace(path)
        written.append(path)
        index += 1
        sharp_buf.clear()
        blur_buf.clear()

    it = sets
    if progress:
        from tqdm import tqdm

        it = tqdm(sets, desc="caching view sets", unit="set")
    for sharp, blurred in it:
        if sharp.shape != blurred.shape or sharp.dtype != np.uint8 or sharp.ndim != 4 or sharp.shape[-1] != 3:
            raise DataError(f"view set arrays must be matching uint8 (V, H, W, 3), got {sharp.shape} / {blurred.shape}")
        sharp_buf.append(sharp)
        blur_buf.append(blurred)
        if len(sharp_buf) >= sets_per_shard:
            flush()
    flush()
    if meta is not None:
        (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return written


class ShardStore:
    """All shards of one or more cache folders in memory: ``sharp``/``blurred`` (S, V, H, W, 3) uint8.

    Several folders (e.g. sets rendered with different baselines or blur
    ranges) are concatenated in the order given, shards sorted by name within
    each folder; their view sets must have one shape.
    """

    def __init__(self, folders: str | Path | Sequence[str | Path]) -> None:
        if isinstance(folders, (str, Path)):
            folders = [folders]
        self.folders = [Path(f) for f in folders]
        if not self.folders:
            raise DataError("no cache folder given")
        paths: list[Path] = []
        for folder in self.folders:
            found = sorted(folder.glob("shard_*.npz"))
            if not found:
                raise DataError(f"no shard_*.npz files in {folder} (build them with `sirdiff-train cache`)")
            paths += found
        kinds = {self._registration(f) for f in self.folders}
        if len(kinds) != 1:
            raise DataError(f"cache folders mix registered and unregistered view sets: {kinds}")
        #: "none", or how partners were resampled into view 0's grid ("fusion-align").
        self.registration = kinds.pop()
        # Shapes from the .npy headers first, so the sets are read straight into one
        # array (a list plus np.concatenate needed twice the memory: 15 GB for 7.7 GB of sets).
        shapes = [_shard_shape(p) for p in paths]
        set_shapes = {sh[1:] for sh in shapes}
        if len(set_shapes) != 1:
            names = ", ".join(str(f) for f in self.folders)
            raise DataError(f"shards in {names} have different view-set shapes: {sorted(set_shapes)}")
        total = sum(sh[0] for sh in shapes)
        self.sharp = np.empty((total, *set_shapes.pop()), np.uint8)
        self.blurred = np.empty_like(self.sharp)
        at = 0
        for p, sh in zip(paths, shapes):
            try:
                with np.load(p) as z:
                    self.sharp[at : at + sh[0]] = z["sharp"]
                    self.blurred[at : at + sh[0]] = z["blurred"]
            except (OSError, KeyError, ValueError) as exc:
                raise DataError(f"corrupt shard {p}: {exc}") from exc
            at += sh[0]

    @staticmethod
    def _registration(folder: Path) -> str:
        meta = folder / "meta.json"
        if not meta.is_file():
            return "none"
        try:
            return str(json.loads(meta.read_text()).get("registration", "none"))
        except json.JSONDecodeError as exc:
            raise DataError(f"corrupt {meta}: {exc}") from exc

    def __len__(self) -> int:
        return int(self.sharp.shape[0])

    @property
    def views(self) -> int:
        return int(self.sharp.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the cached views."""
        return int(self.sharp.shape[2]), int(self.sharp.shape[3])


def _shard_shape(path: Path) -> tuple[int, ...]:
    """(S, V, H, W, 3) of a shard from its .npy headers (reads no pixels); the two
    arrays must agree and be uint8."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            found = []
            for key in ("sharp", "blurred"):
                with zf.open(f"{key}.npy") as fh:
                    version = np.lib.format.read_magic(fh)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _fortran, dtype = read(fh)
                    found.append((tuple(shape), np.dtype(dtype)))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"corrupt shard {path}: {exc}") from exc
    (a, da), (b, db) = found
    if a != b or da != np.uint8 or db != np.uint8 or len(a) != 5 or a[-1] != 3:
        raise DataError(f"corrupt shard {path}: sharp {a} {da} / blurred {b} {db}, expected matching uint8 (S, V, H, W, 3)")
    return a


def degrade_sr4(sharp: np.ndarray) -> np.ndarray:
    """4x super-resolution input: area-downsample by 4, bicubic-upsample back. (..., H, W, 3) uint8."""
    h, w = sharp.shape[-3:-1]
    flat = sharp.reshape(-1, h, w, 3)
    out = np.empty_like(flat)
    for i, im in enumerate(flat):
        small = cv2.resize(im, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
        out[i] = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(sharp.shape)


@dataclass
class Batch:
    sharp: torch.Tensor  # (B, N, 3, H, W) in [-1, 1]
    degraded: torch.Tensor  # (B, N, 3, H, W) in [-1, 1]


def soften_set(sharp: np.ndarray, blurred: np.ndarray | None, sigma: float) -> tuple[np.ndarray, np.ndarray | None]:
    """The same set seen on a softer scene: every view, sharp and blurred alike,
    convolved with one isotropic Gaussian of ``sigma`` px.

    Convolutions commute, so (for locally uniform motion) Gaussian(blurred) is the
    motion-blurred image of the Gaussian-filtered scene: a valid pair whose sharp
    side has soft edges. Trained on, it tells the model that softness alone is not
    motion blur (held-out scenes with smooth textures were over-sharpened)."""

    def f(views: np.ndarray) -> np.ndarray:  # (N, H, W, 3) uint8
        return np.stack([cv2.GaussianBlur(v, (0, 0), sigma) for v in views])

    return f(sharp), None if blurred is None else f(blurred)


class BatchSampler:
    """Random-N, random-order, random-crop batches from a :class:`ShardStore`.

    All randomness comes from one numpy Generator whose state is part of the
    training checkpoint (``state_dict``/``load_state_dict``), so a resumed run
    draws the same batches as an uninterrupted one.
    """

    def __init__(self, store: ShardStore, batch_size: int, crop: tuple[int, int] | None,
                 n_views: tuple[int, int], task: str = "deblur", seed: int = 0,
                 degrade: Callable[[np.ndarray], np.ndarray] | None = None,
                 soften_fraction: float = 0.0, soften_sigma: tuple[float, float] = (0.5, 3.0)) -> None:
        lo, hi = n_views
        if not 1 <= lo <= hi <= store.views:
            raise DataError(f"n_views range {n_views} must lie within 1..{store.views} (views per cached set)")
        h, w = store.size
        if crop is not None and (crop[0] > h or crop[1] > w):
            raise DataError(f"crop {crop} is larger than the cached views {(h, w)}")
        if task not in ("deblur", "sr4"):
            raise DataError(f"unknown task {task!r} (expected 'deblur' or 'sr4')")
        self.store, self.batch_size, self.crop, self.n_views, self.task = store, batch_size, crop, n_views, task
        if not 0.0 <= soften_fraction <= 1.0 or not 0.0 < soften_sigma[0] <= soften_sigma[1]:
            raise DataError(f"soften_fraction {soften_fraction} must lie in [0, 1] and soften_sigma "
                            f"{soften_sigma} be an increasing pair of positive sigmas")
        self.rng = np.random.default_rng(seed)
        self._degrade = degrade
        self.soften_fraction, self.soften_sigma = soften_fraction, soften_sigma

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]

    def next(self) -> Batch:
        s = self.store
        n = int(self.rng.integers(self.n_views[0], self.n_views[1] + 1))
        idx = self.rng.integers(0, len(s), size=self.batch_size)
        h, w = s.size
        ch, cw = self.crop or (h, w)
        sharp_l, deg_l = [], []
        for i in idx:
            order = self.rng.permutation(s.views)[:n]
            y = int(self.rng.integers(0, h - ch + 1))
            x = int(self.rng.integers(0, w - cw + 1))
            sh = s.sharp[i, order, y : y + ch, x : x + cw]
            dg = s.blurred[i, order, y : y + ch, x : x + cw] if self.task == "deblur" else None
            if self.rng.random() < 0.5:  # same flip for every view keeps the set consistent
                sh, dg = sh[:, :, ::-1], None if dg is None else dg[:, :, ::-1]
            # Drawn last, and not at all at soften_fraction 0: runs without it keep their batches.
            if self.soften_fraction > 0.0 and self.rng.random() < self.soften_fraction:
                sh, dg = soften_set(sh, dg, float(self.rng.uniform(*self.soften_sigma)))
            if dg is None:  # sr4: from the flipped (and softened) crop; degrade_sr4 commutes with the flip
                dg = (self._degrade or degrade_sr4)(sh)
            sharp_l.append(sh)
            deg_l.append(dg)

        def to_t(a: list[np.ndarray]) -> torch.Tensor:
            # (B, N, H, W, 3) uint8 -> (B, N, 3, H, W) float in [-1, 1]
            t = torch.from_numpy(np.ascontiguousarray(np.stack(a))).permute(0, 1, 4, 2, 3).float()
            return t / 127.5 - 1.0

        return Batch(sharp=to_t(sharp_l), degraded=to_t(deg_l))
