"""Partner views aligned to a target view: the one alignment both backends use.

For a target and each partner of one camera (same image size), per target
pixel, at ``work_scale`` of the image (halved, with ``adapt_scale``, when the
relative blur kernel comes out longer than 0.8 ``kernel_size``: such a blur
cannot be modelled at that scale and the checks would reject most pixels):

1. Align (target pixel -> partner pixel):
   * depth path (the target has depth, both views have poses): reprojection,
     exact for a static scene with exact poses. When the relative blur
     kernel comes out off-centre by more than ``refine_shift_px`` (motion
     blur is centred on the mid-exposure pose, so this means a pose error),
     a residual DIS flow against the partner pre-warped by it is added, kept
     per pixel only where it explains the target better by ``refine_margin``;
   * flow path: DIS optical flow target -> partner on grey images, the partner
     first blurred with a Gaussian matching the target's sharpness score,
     then a second pass against the partner re-blurred with the estimated
     relative blur kernel (:mod:`sirdiff_ros.core.reblur`; motion blur is
     directional). On real views (robustmvd, bench/core.py) the second
     pass raises the fusion backend's mean gain from +3.2 to +3.9 dB.
2. Check the alignment: forward-backward consistency (flow path); the
   partner's depth must show the same surface (depth path, where the
   partner has depth: occlusion and moved objects); and photometric checks
   against the partner re-blurred with the centred relative kernel: a colour
   residual within ``photo_abs`` + ``photo_px`` pixels of misalignment at
   the local gradient, and, where the target is textured, local normalised
   cross-correlation above ``ncc_min`` (different content correlates ~0).

The result per partner (:class:`Alignment`) is a flow, a trust map in [0, 1]
and a per-channel exposure gain. :func:`soft_mask` turns a trust (or weight)
map into one that is exactly zero where untrusted and free of seams;
:func:`warp_full` resamples a partner into the target's full-resolution grid.
The ``fusion`` backend weighs aligned partners by local sharpness and blends
them (:mod:`.restorers.fusion`); the learned backend sees partners resampled
into the target's grid (:mod:`.registration`).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any, Callable, cast

import cv2
import numpy as np

from .blur import local_sharpness, sharpness, to_grey
from .frame import Frame
from .profiling import stage
from .remap import remap_linear
from .reblur import center_kernel, estimate_kernel, kernel_centroid, kernel_extent, reblur

__all__ = [
    "AlignmentConfig",
    "Alignment",
    "FrameCache",
    "align_partner",
    "align_partners",
    "channel_scalar",
    "lands_inside",
    "match_blur",
    "reprojection_flow",
    "soft_mask",
    "warp",
    "warp_full",
]


@dataclass(frozen=True)
class AlignmentConfig:
    """Parameters of the alignment and its checks (pixel sizes are at ``work_scale``)."""

    work_scale: float = 0.5  # resolution of flow, checks and weight maps ...
    adapt_scale: bool = True  # ... halved when the relative blur outgrows 0.8 kernel_size
    use_depth: bool = True  # reprojection when the target has depth and poses
    refine_flow: bool = True  # depth path: residual flow (pose errors); flow path: re-blurred second pass
    refine_shift_px: float = 1.5  # depth path: refine only when the blur kernel is off-centre by more (px)
    max_refine_px: float = 8.0  # refinements moving the alignment further are discarded
    refine_margin: float = 1.0  # grey levels of residual a refinement must gain to replace the initial flow
    dis_preset: str = "medium"  # "ultrafast" | "fast" | "medium"
    fb_threshold: float = 1.0  # forward-backward error (px) at full trust ... x2 = none
    depth_tolerance: float = 0.05  # relative z difference of the same-surface (occlusion) test
    photo_abs: float = 6.0  # grey levels of residual tolerated everywhere
    photo_px: float = 1.0  # ... plus this many pixels of misalignment at the local gradient
    structure_std: float = 3.0  # grey-level std above which the target counts as textured ...
    ncc_sigma: float = 4.0  # window of the correlation (px)
    ncc_min: float = 0.3  # ... and the aligned partner must correlate above this (full trust at (1+ncc_min)/2)
    erode_px: int = 1  # untrusted regions grow by this before smoothing
    weight_sigma: float = 2.0  # smoothing of weight maps (px)
    kernel_size: int = 25  # relative blur kernel estimated for the photometric check (px, odd)

    def __post_init__(self) -> None:
        if not 0.1 <= self.work_scale <= 1.0:
            raise ValueError(f"work_scale must be in [0.1, 1], got {self.work_scale}")
        if self.dis_preset not in _DIS_PRESETS:
            raise ValueError(f"dis_preset must be one of {sorted(_DIS_PRESETS)}, got {self.dis_preset!r}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {self.kernel_size}")
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not np.isfinite(v):
                raise ValueError(f"{type(self).__name__}.{f.name} must be finite")


_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
# Gaussian sigmas (px at work scale) tried when matching a partner's blur to the target's.
_BLUR_SIGMAS = (0.0, 0.5, 0.8, 1.2, 1.6, 2.2, 3.0, 4.0, 5.5)


@dataclass
class Alignment:
    """A partner aligned to the target at work scale.

    ``flow`` (h, w, 2): target pixel -> partner pixel offset; ``trust`` (h, w)
    in [0, 1]; ``matched`` the partner grey warped to the target and re-blurred
    like it; ``sharp`` the same without re-blurring; ``gain`` the per-channel
    exposure gain partner -> target; ``blur_extent`` the length (px at work
    scale) of the relative blur kernel;
    ``method`` "depth" or "flow", with "+refine" when refined.
    """

    flow: np.ndarray
    trust: np.ndarray
    matched: np.ndarray
    sharp: np.ndarray
    gain: np.ndarray
    method: str
    blur_extent: float = 0.0


def _grey_f32(image: np.ndarray) -> np.ndarray:
    return to_grey(image).astype(np.float32)


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def match_blur(partner: np.ndarray, target_score: float, memo: dict[int, float] | None = None) -> tuple[np.ndarray, float]:
    """Blur ``partner`` (float32 grey) with the sigma of :data:`_BLUR_SIGMAS` whose
    sharpness score is closest to the target's (in log). The score falls
    monotonically with sigma, so a bisection finds it in ~4 evaluations.
    ``memo`` keeps the partner's log-scores by sigma index across calls (the
    same ``partner`` for another target)."""
    scores = memo if memo is not None else {}

    def blurred(k: int) -> np.ndarray:
        return cv2.GaussianBlur(partner, (0, 0), _BLUR_SIGMAS[k]) if _BLUR_SIGMAS[k] > 0 else partner

    def log_score(k: int) -> float:
        if k not in scores:
            scores[k] = float(np.log(sharpness(np.clip(blurred(k), 0, 255).astype(np.uint8)) + 1e-9))
        return scores[k]

    goal = float(np.log(target_score + 1e-9))
    lo, hi = 0, len(_BLUR_SIGMAS) - 1  # score(lo) >= goal >= score(hi) once bracketed
    if log_score(lo) <= goal:
        k = lo  # the partner is no sharper than the target
    elif log_score(hi) >= goal:
        k = hi
    else:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if log_score(mid) >= goal else (lo, mid)
        k = lo if abs(log_score(lo) - goal) <= abs(log_score(hi) - goal) else hi
    return blurred(k), _BLUR_SIGMAS[k]


class FrameCache:
    """Work-scale images derived from frames' arrays, kept for the next targets.

    In a stream a keyframe is a partner of several targets in a row (and a
    target itself): its grey and colour images at work scale, its resized
    depth, its sharpness and its blur-matching scores are computed once.
    Entries are keyed by the source array's identity and hold a reference to
    it (so the identity cannot be reused while cached); source arrays are
    treated as immutable, as everywhere in the core. Thread-safe; at most
    ``capacity`` source arrays are kept (least recently used dropped).
    """

    def __init__(self, capacity: int = 16) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[int, tuple[np.ndarray, dict[Any, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, array: np.ndarray, key: Any, make: Callable[[], Any]) -> Any:
        """The value derived from ``array`` under ``key``, made by ``make()`` when missing."""
        with self._lock:
            entry = self._items.get(id(array))
            if entry is not None and entry[0] is array:
                self._items.move_to_end(id(array))
                if key in entry[1]:
                    return entry[1][key]
        value = make()
        if isinstance(value, np.ndarray):
            value.flags.writeable = False  # shared with later targets
        with self._lock:
            entry = self._items.get(id(array))
            if entry is None or entry[0] is not array:
                entry = self._items[id(array)] = (array, {})
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
            self._items.move_to_end(id(array))
            return entry[1].setdefault(key, value)

    def grey(self, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """float32 grey at ``size`` (w, h)."""
        return self.get(image, ("grey", size), lambda: _resize(_grey_f32(image), size))

    def colour(self, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """float32 (h, w, 3) at ``size`` (w, h)."""
        return self.get(image, ("colour", size), lambda: _resize(image.astype(np.float32), size))

    def depth(self, depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """float32 depth area-resized to ``size`` (w, h)."""
        return self.get(depth, ("depth", size), lambda: _resize(depth.astype(np.float32), size))

    def sharpness(self, image: np.ndarray) -> float:
        return float(self.get(image, "sharpness", lambda: sharpness(image)))

    def blur_scores(self, image: np.ndarray, size: tuple[int, int]) -> dict[int, float]:
        """The memo of :func:`match_blur` for ``image``'s grey at ``size``."""
        return self.get(image, ("blur_scores", size), dict)


@functools.lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int) -> np.ndarray:
    """(h, w, 2) float32 pixel coordinates (x, y); cached per image size."""
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    grid = np.stack([gx, gy], axis=-1)
    grid.flags.writeable = False
    return grid


def warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``img`` at target pixel + flow (bilinear, replicated borders)."""
    h, w = flow.shape[:2]
    m = _pixel_grid(h, w) + flow  # (h, w, 2) absolute sample positions
    return remap_linear(img, m)


def lands_inside(flow: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Target pixels whose flow lands inside an image of ``shape``."""
    h, w = flow.shape[:2]
    return _inside(_pixel_grid(h, w) + flow, shape)


def _inside(positions: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Where (h, w, 2) sample positions (x, y) lie inside an image of ``shape``, bounds inclusive (one pass)."""
    return cv2.inRange(positions, (0.0, 0.0), (shape[1] - 1.0, shape[0] - 1.0)) > 0


def channel_scalar(gain: np.ndarray | float, channels: int) -> Any:
    """A per-channel gain as OpenCV's multiplier for an image of ``channels`` channels:
    a float for one, else a Scalar tuple padded to 4 (the stubs only list arrays)."""
    g = np.atleast_1d(gain).astype(np.float64).tolist()
    return (*g, 0.0) if channels > 1 else g[0]


def reprojection_flow(target: Frame, partner: Frame, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flow target->partner at ``size`` from the target's depth and both poses.

    Returns (flow (h, w, 2), z in the partner camera (h, w), valid (h, w)).
    """
    return _reproject(_lift(target, size), target, partner)


@dataclass
class _Lifted:
    """A target's pixels at work scale lifted to 3D with its depth (:func:`_lift`)."""

    uv: np.ndarray  # (h, w, 2) pixel coordinates at work scale
    points: np.ndarray  # (h, w, 3) in the target camera
    valid: np.ndarray  # (h, w) pixels with a depth
    scale: float


def _lift(target: Frame, size: tuple[int, int]) -> _Lifted:
    w, h = size
    sx = w / target.width  # the working size keeps the aspect ratio: one scale
    Kt = target.intrinsics.scaled(sx)
    # Nearest depth (no mixing of foreground and background at edges).
    depth = cv2.resize(target.depth, (w, h), interpolation=cv2.INTER_NEAREST)  # type: ignore[arg-type]
    valid = np.isfinite(depth) & (depth > 0)
    uv = Kt.pixel_grid()[:h, :w]  # (h, w, 2)
    return _Lifted(uv, Kt.unproject(uv, np.where(valid, depth, 1.0)), valid, sx)


def _reproject(lifted: _Lifted, target: Frame, partner: Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The target's lifted pixels seen from ``partner``: (flow, z, valid) as :func:`reprojection_flow`."""
    rel = target.pose.relative_to(partner.pose)  # type: ignore[union-attr, arg-type]
    pc = rel.transform_points(lifted.points)  # (h, w, 3) partner camera
    # The partner is resized by the same factor as the target.
    puv, z = partner.intrinsics.scaled(lifted.scale).project(pc)
    valid = lifted.valid & (z > 1e-6)
    flow = (puv - lifted.uv).astype(np.float32)
    flow[~valid] = 0.0
    return flow, z.astype(np.float32), valid


def _local_ncc(a: np.ndarray, b_stats: tuple[np.ndarray, np.ndarray, np.ndarray], sigma: float) -> np.ndarray:
    """Gaussian-windowed normalised cross-correlation of ``a`` and an image b
    given as :func:`_local_stats` ``(b, mean, std)`` of the same ``sigma``."""

    def g(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (0, 0), sigma)

    b, mb, sb = b_stats
    ma = g(a)
    va = np.maximum(g(a * a) - ma * ma, 0.0)
    cov = g(a * b) - ma * mb
    return cov / (np.sqrt(va) * sb + 1e-3)


def _local_stats(b: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(b, local mean, local std)`` in a Gaussian window (for :func:`_local_ncc`)."""
    mb = cv2.GaussianBlur(b, (0, 0), sigma)
    return b, mb, np.sqrt(np.maximum(cv2.GaussianBlur(b * b, (0, 0), sigma) - mb * mb, 0.0))


def _reprojection_kernel(
    pg: np.ndarray, target_grey: np.ndarray, flow: np.ndarray, trust: np.ndarray, config: AlignmentConfig
) -> np.ndarray:
    """The relative blur kernel (not centred) of a reprojection. Motion blur is
    centred on the mid-exposure pose, so the kernel of an aligned partner is
    centred too; an offset of more than ``refine_shift_px`` means a pose (or
    depth) error (:func:`_initial_alignment` then refines). Exact geometry is
    left alone: flow refinement between a blurred and a sharp image is less
    precise than a good reprojection."""
    mask = (trust > 0.5) & lands_inside(flow, pg.shape)
    return estimate_kernel(warp(pg, flow), target_grey, mask, config.kernel_size)


def _checked_flow(dis: Any, t8: np.ndarray, p8: np.ndarray, fb_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """DIS flow target -> partner and its forward-backward trust (1 under the
    threshold, 0 at twice it)."""
    flow = dis.calc(t8, p8, None)
    back_at = warp(dis.calc(p8, t8, None), flow)
    d = flow + back_at
    fb = cv2.magnitude(d[..., 0], d[..., 1])
    return flow, np.clip(2.0 - fb / fb_threshold, 0.0, 1.0).astype(np.float32)


@dataclass
class _Target:
    """What every partner's alignment uses of the target at one work scale,
    computed once per target (:meth:`at`; what only the checks use, once they run)."""

    frame: Frame
    grey: np.ndarray  # (h, w) float32
    grey8: np.ndarray  # the same as uint8 (DIS input)
    score: float  # sharpness of ``grey``
    lifted: _Lifted | None  # pixels lifted with the depth, when it has one
    config: AlignmentConfig
    cache: FrameCache

    @classmethod
    def at(cls, frame: Frame, size: tuple[int, int], config: AlignmentConfig, cache: FrameCache) -> "_Target":
        grey = cache.grey(frame.image, size)
        grey8 = np.clip(grey, 0, 255).astype(np.uint8)
        lifted = _lift(frame, size) if config.use_depth and frame.depth is not None and frame.pose is not None else None
        return cls(frame, grey, grey8, sharpness(grey8), lifted, config, cache)

    @functools.cached_property
    def tolerance(self) -> np.ndarray:
        """Photometric residual tolerated per pixel (grey levels): a misalignment
        of d pixels leaves a residual of about d * |grad target|; photo_px pixels
        of that, plus a floor for noise."""
        grad = np.sqrt(local_sharpness(self.grey, 1.5)) / 8.0  # 3x3 Sobel gain 8 -> grey levels per pixel
        return self.config.photo_abs + self.config.photo_px * grad

    @functools.cached_property
    def stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The grey image's local mean and std (structure check)."""
        return _local_stats(self.grey, self.config.ncc_sigma)

    @functools.cached_property
    def colour(self) -> np.ndarray | None:
        """(h, w, 3) float32 when the target is RGB."""
        if self.frame.image.ndim != 3:
            return None
        h, w = self.grey.shape
        return self.cache.colour(self.frame.image, (w, h))


@dataclass
class _Initial:
    """A partner's alignment before the photometric checks (:func:`_initial_alignment`)."""

    partner: Frame
    pg: np.ndarray  # partner grey at work scale (float32)
    flow: np.ndarray
    trust: np.ndarray
    sharp_w: np.ndarray  # pg warped to the target
    kernel: np.ndarray  # centred relative blur kernel partner -> target
    method: str


def _initial_alignment(tgt: _Target, partner: Frame, config: AlignmentConfig, dis: Any) -> _Initial:
    """Steps 1 (alignment, refined) and the relative blur kernel of the module docstring."""
    target_grey, t8 = tgt.grey, tgt.grey8
    h, w = target_grey.shape
    with stage("align.prepare"):
        pg = tgt.cache.grey(partner.image, (w, h))

    @functools.cache
    def matched_grey() -> np.ndarray:
        """The partner blurred to the target's sharpness, for matching only."""
        with stage("align.prepare"):
            return match_blur(pg, tgt.score, tgt.cache.blur_scores(partner.image, (w, h)))[0]

    geometric = tgt.lifted is not None and partner.pose is not None
    trust = np.ones((h, w), np.float32)
    kernel = None  # the relative blur kernel, once known for the final flow
    # 1. Initial alignment.
    if geometric:
        with stage("align.reprojection"):
            flow, z, valid = _reproject(tgt.lifted, tgt.frame, partner)  # type: ignore[arg-type]
            method = "depth"
            trust *= valid
            if partner.depth is not None:
                pdw = warp(tgt.cache.depth(partner.depth, (w, h)), flow)
                # The partner must see the same surface: something closer there means
                # occlusion, something farther means our point is missing there
                # (it moved, or the target's depth is wrong).
                trust *= ~((pdw > 0) & (np.abs(z - pdw) > pdw * config.depth_tolerance))
        if config.refine_flow:
            with stage("align.kernel"):
                kernel = _reprojection_kernel(pg, target_grey, flow, trust, config)
            if float(np.linalg.norm(kernel_centroid(kernel))) > config.refine_shift_px:
                with stage("align.flow"):
                    flow = _refined_flow(flow, matched_grey(), target_grey, t8, config, dis)
                method += "+refine"
                kernel = None  # the flow changed
    else:
        method = "flow"
        m8 = np.clip(matched_grey(), 0, 255).astype(np.uint8)
        if config.refine_flow:
            # First pass forward only: it just has to align well enough to
            # estimate the relative blur kernel on the pixels it lands inside.
            with stage("align.flow"):
                flow = dis.calc(t8, m8, None)
            with stage("align.kernel"):
                sharp_w, inside = warp(pg, flow), lands_inside(flow, pg.shape)
                k = center_kernel(estimate_kernel(sharp_w, target_grey, inside, config.kernel_size))
                # Second pass against the partner re-blurred with that kernel
                # (directional, like the target's blur) instead of a Gaussian.
                m8 = np.clip(reblur(pg, k), 0, 255).astype(np.uint8)
            method += "+reblur"
        with stage("align.flow"):
            flow, fb_trust = _checked_flow(dis, t8, m8, config.fb_threshold)
        trust *= fb_trust
    with stage("align.kernel"):
        sharp_w = warp(pg, flow)
        trust *= lands_inside(flow, pg.shape)
        # The relative blur kernel, estimated on trusted pixels and centred, so
        # that a misalignment cannot hide in a shifted kernel (an unrefined
        # reprojection's was estimated on these very pixels above).
        if kernel is None:
            kernel = estimate_kernel(sharp_w, target_grey, trust > 0.5, config.kernel_size)
        kernel = center_kernel(kernel)
    return _Initial(partner, pg, flow, trust, sharp_w, kernel, method)


def _refined_flow(
    flow: np.ndarray, mg: np.ndarray, target_grey: np.ndarray, t8: np.ndarray, config: AlignmentConfig, dis: Any
) -> np.ndarray:
    """Step 1's refinement: residual flow from the target to the partner
    pre-warped by ``flow`` (corrects pose and depth errors), composed with it;
    residuals beyond max_refine_px are discarded."""
    pre = warp(mg, flow)
    r = dis.calc(t8, np.clip(pre, 0, 255).astype(np.uint8), None)
    r[cv2.magnitude(r[..., 0], r[..., 1]) >= config.max_refine_px] = 0.0
    refined = r + warp(flow, r)
    # Per pixel, blend the two by how well each explains the target (soft
    # minimum of the local residual: a smooth flow, no switching seams).
    res = np.stack([cv2.GaussianBlur(np.abs(warp(mg, f) - target_grey), (0, 0), 3.0) for f in (flow, refined)])
    res[1] += config.refine_margin  # the refinement must explain the target better to win
    wts = np.exp(-(res - res.min(axis=0)) / 2.0)  # (2, h, w)
    wts /= wts.sum(axis=0)
    return (wts[0, ..., None] * flow + wts[1, ..., None] * refined).astype(np.float32)


def _checked(tgt: _Target, init: _Initial, config: AlignmentConfig) -> Alignment:
    """Step 2 of the module docstring: the photometric checks of an initial alignment."""
    h, w = tgt.grey.shape
    partner, flow, kernel, trust = init.partner, init.flow, init.kernel, init.trust
    # Photometric check: the aligned partner re-blurred with the relative blur
    # kernel against the target.
    matched = reblur(init.sharp_w, kernel)
    if tgt.colour is not None and partner.image.ndim == 3:
        # In colour (after an exposure gain): different content of similar
        # brightness, e.g. an object that moved in, differs in hue.
        pc = reblur(warp(tgt.cache.colour(partner.image, (w, h)), flow), kernel)
        gain = _exposure_gain(tgt.colour, pc, trust > 0.5)
        # Largest channel residual after the gain (cv2 throughout: numpy's arithmetic and
        # reductions over a 3-long last axis are slow).
        d3 = cv2.absdiff(cv2.multiply(pc, channel_scalar(gain, 3)), tgt.colour)
        diff = cv2.reduce(d3.reshape(-1, 3), 1, cv2.REDUCE_MAX).reshape(h, w)
    else:
        gain = _exposure_gain(tgt.grey, matched, trust > 0.5)
        diff = np.abs(matched * gain - tgt.grey)
    res = cv2.GaussianBlur(diff, (0, 0), 1.5)
    trust *= np.clip(2.0 - res / tgt.tolerance, 0.0, 1.0)
    # Structure check: where the target has texture, the re-blurred partner
    # must correlate with it (different content - a moved object, an
    # occluder - correlates ~0 even when its residual is small).
    ncc = _local_ncc(matched, tgt.stats, config.ncc_sigma)
    structured = tgt.stats[2] > config.structure_std
    ok = np.clip((ncc - config.ncc_min) / (1.0 - config.ncc_min) * 2.0, 0.0, 1.0)
    trust *= np.where(structured, ok, 1.0)
    return Alignment(flow, trust.astype(np.float32), matched, init.sharp_w, gain, init.method, kernel_extent(kernel))


def align_partner(
    target: Frame,
    partner: Frame,
    target_grey: np.ndarray,
    target_score: float,
    config: AlignmentConfig,
    dis: Any,
) -> Alignment:
    """Align ``partner`` to ``target`` at the work scale of ``target_grey`` and
    check it (see the module docstring).

    ``target_grey`` is the target's float32 grey image at work scale (its size
    sets the scale) and ``target_score`` the sharpness of that image (scores
    are compared at one scale); ``dis`` a cv2 DIS optical flow object.
    """
    h, w = target_grey.shape
    tgt = dataclasses.replace(_Target.at(target, (w, h), config, FrameCache()), grey=target_grey, score=target_score)
    init = _initial_alignment(tgt, partner, config, dis)
    with stage("align.checks"):
        return _checked(tgt, init, config)


def align_partners(
    target: Frame, partners: list[Frame], config: AlignmentConfig, cache: FrameCache | None = None
) -> tuple[list[Alignment], float, float, np.ndarray]:
    """Align every partner to ``target`` (:func:`align_partner`) at ``config.work_scale``,
    or at half of it when the longest relative blur comes out longer than 0.8
    ``kernel_size`` (``adapt_scale``: such a blur cannot be modelled at that
    scale and the checks would reject most pixels).

    ``cache`` keeps frames' work-scale images for later calls (a stream).
    Returns (alignments in partner order, the scale used, the longest relative
    blur in px at that scale, the target's float32 grey image at that scale).
    """
    if not partners:
        raise ValueError("align_partners needs at least one partner")
    cache = cache if cache is not None else FrameCache()
    H, W = target.image.shape[:2]

    def at(scale: float, limit: float) -> tuple[list[_Initial] | None, _Target]:
        """Initial alignments at ``scale``; None as soon as a relative blur
        exceeds ``limit`` (px at that scale): the scale is then given up."""
        size = (max(8, int(round(W * scale))), max(8, int(round(H * scale))))
        with stage("align.prepare"):
            tgt = _Target.at(target, size, config, cache)
            dis = cv2.DISOpticalFlow.create(_DIS_PRESETS[config.dis_preset])
        out: list[_Initial | None] = [None] * len(partners)
        # Sharpest partner first: the longest relative blur is found first.
        for i in order:
            out[i] = init = _initial_alignment(tgt, partners[i], config, dis)
            if kernel_extent(init.kernel) > limit:
                return None, tgt
        return [a for a in out if a is not None], tgt

    order = sorted(range(len(partners)), key=lambda i: -cache.sharpness(partners[i].image))
    scale = config.work_scale
    # The scale is decided before the checks: they are run once, at the scale kept.
    can_halve = config.adapt_scale and W * scale / 2 >= 64
    found, tgt = at(scale, 0.8 * config.kernel_size if can_halve else np.inf)
    if found is None:
        scale /= 2
        found, tgt = at(scale, np.inf)
    initial = cast("list[_Initial]", found)  # no limit at the second scale
    extent = max(kernel_extent(a.kernel) for a in initial)
    with stage("align.checks"):
        aligned = [_checked(tgt, init, config) for init in initial]
    return aligned, scale, extent, tgt.grey


def soft_mask(weights: np.ndarray, config: AlignmentConfig) -> np.ndarray:
    """Erode a weight map by ``erode_px`` (untrusted regions get exactly zero) and
    smooth it with ``weight_sigma`` (no seams where it is applied)."""
    if config.erode_px:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * config.erode_px + 1,) * 2)
        weights = cv2.erode(weights, kernel)
    return cv2.GaussianBlur(weights, (0, 0), config.weight_sigma)


def warp_full(
    image: np.ndarray, flow: np.ndarray, box: tuple[slice, slice] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a partner ``image`` into the target's full-resolution grid with a
    work-scale ``flow`` (upsampled, offsets scaled with it). The target has the
    partner's size (one camera). Returns (warped image, mask of pixels that land
    inside the partner), of the target pixels in ``box`` (rows, columns) only
    when given."""
    H, W = image.shape[:2]
    h, w = flow.shape[:2]
    ff = cv2.resize(flow, (W, H), interpolation=cv2.INTER_LINEAR)
    rows, cols = box if box is not None else (slice(0, H), slice(0, W))
    # (rows, cols, 2) absolute sample positions of the box's target pixels.
    grid = _pixel_grid(H, W)[rows, cols]
    if W * h == H * w:  # one factor for both axes (the usual case): one fused pass
        m = cv2.scaleAdd(ff[rows, cols], W / w, grid)
    else:
        m = ff[rows, cols] * np.array([W / w, H / h], np.float32) + grid
    warped = remap_linear(image, m)
    return warped, _inside(m, image.shape)


def _exposure_gain(target: np.ndarray, warped: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel gain mapping the partner's exposure onto the target's (trusted pixels)."""
    n = target.shape[2] if target.ndim == 3 else 1
    m8 = mask.astype(np.uint8)
    if cv2.countNonZero(m8) < 64:
        return np.ones(n, np.float32).squeeze()
    t = np.array(cv2.mean(target, mask=m8)[:n])
    p = np.array(cv2.mean(warped, mask=m8)[:n])
    return np.clip((t + 1.0) / (p + 1.0), 0.5, 2.0).astype(np.float32).squeeze()
