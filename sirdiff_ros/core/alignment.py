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

import functools
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np

from .blur import local_sharpness, sharpness, to_grey
from .frame import Frame
from .reblur import center_kernel, estimate_kernel, kernel_centroid, kernel_extent, reblur

__all__ = [
    "AlignmentConfig",
    "Alignment",
    "align_partner",
    "align_partners",
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


def match_blur(partner: np.ndarray, target_score: float) -> tuple[np.ndarray, float]:
    """Blur ``partner`` (float32 grey) with the sigma of :data:`_BLUR_SIGMAS` whose
    sharpness score is closest to the target's (in log). The score falls
    monotonically with sigma, so a bisection finds it in ~4 evaluations."""

    def blurred(k: int) -> np.ndarray:
        return cv2.GaussianBlur(partner, (0, 0), _BLUR_SIGMAS[k]) if _BLUR_SIGMAS[k] > 0 else partner

    def log_score(img: np.ndarray) -> float:
        return float(np.log(sharpness(np.clip(img, 0, 255).astype(np.uint8)) + 1e-9))

    goal = float(np.log(target_score + 1e-9))
    lo, hi = 0, len(_BLUR_SIGMAS) - 1  # score(lo) >= goal >= score(hi) once bracketed
    imgs = {lo: blurred(lo)}
    scores = {lo: log_score(imgs[lo])}
    if scores[lo] <= goal:
        return imgs[lo], _BLUR_SIGMAS[lo]  # the partner is no sharper than the target
    imgs[hi] = blurred(hi)
    scores[hi] = log_score(imgs[hi])
    if scores[hi] >= goal:
        return imgs[hi], _BLUR_SIGMAS[hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        imgs[mid] = blurred(mid)
        scores[mid] = log_score(imgs[mid])
        lo, hi = (mid, hi) if scores[mid] >= goal else (lo, mid)
    k = lo if abs(scores[lo] - goal) <= abs(scores[hi] - goal) else hi
    return imgs[k], _BLUR_SIGMAS[k]


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
    # map2=None (one two-channel map) is valid at run time; OpenCV's stubs do not list it.
    return cv2.remap(img, m, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)  # type: ignore[call-overload]


def lands_inside(flow: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Target pixels whose flow lands inside an image of ``shape``."""
    h, w = flow.shape[:2]
    m = _pixel_grid(h, w) + flow
    mx, my = m[..., 0], m[..., 1]
    return (mx >= 0) & (mx <= shape[1] - 1) & (my >= 0) & (my <= shape[0] - 1)


def reprojection_flow(target: Frame, partner: Frame, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flow target->partner at ``size`` from the target's depth and both poses.

    Returns (flow (h, w, 2), z in the partner camera (h, w), valid (h, w)).
    """
    w, h = size
    sx = w / target.width  # the working size keeps the aspect ratio: one scale
    Kt = target.intrinsics.scaled(sx)
    # Nearest depth (no mixing of foreground and background at edges).
    depth = cv2.resize(target.depth, (w, h), interpolation=cv2.INTER_NEAREST)  # type: ignore[arg-type]
    valid = np.isfinite(depth) & (depth > 0)
    uv = Kt.pixel_grid()[:h, :w]  # (h, w, 2)
    pts = Kt.unproject(uv, np.where(valid, depth, 1.0))  # (h, w, 3) target camera
    rel = target.pose.relative_to(partner.pose)  # type: ignore[union-attr, arg-type]
    pc = rel.transform_points(pts)  # (h, w, 3) partner camera
    # The partner is resized by the same factor as the target.
    Kpw = partner.intrinsics.scaled(sx)
    puv, z = Kpw.project(pc)
    valid &= z > 1e-6
    flow = (puv - uv).astype(np.float32)
    flow[~valid] = 0.0
    return flow, z.astype(np.float32), valid


def _local_ncc(a: np.ndarray, b: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-windowed normalised cross-correlation of a and b, and b's local std."""

    def g(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (0, 0), sigma)

    ma, mb = g(a), g(b)
    va = np.maximum(g(a * a) - ma * ma, 0.0)
    vb = np.maximum(g(b * b) - mb * mb, 0.0)
    cov = g(a * b) - ma * mb
    return cov / (np.sqrt(va * vb) + 1e-3), np.sqrt(vb)


def _needs_refinement(
    pg: np.ndarray, target_grey: np.ndarray, flow: np.ndarray, trust: np.ndarray, config: AlignmentConfig
) -> bool:
    """Whether the reprojection is off: motion blur is centred on the
    mid-exposure pose, so the relative blur kernel of an aligned partner is
    centred too; an offset of more than ``refine_shift_px`` means a pose (or
    depth) error. Exact geometry is left alone: flow refinement between a
    blurred and a sharp image is less precise than a good reprojection."""
    mask = (trust > 0.5) & lands_inside(flow, pg.shape)
    kernel = estimate_kernel(warp(pg, flow), target_grey, mask, config.kernel_size)
    return float(np.linalg.norm(kernel_centroid(kernel))) > config.refine_shift_px


def _checked_flow(dis: Any, t8: np.ndarray, p8: np.ndarray, fb_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """DIS flow target -> partner and its forward-backward trust (1 under the
    threshold, 0 at twice it)."""
    flow = dis.calc(t8, p8, None)
    back_at = warp(dis.calc(p8, t8, None), flow)
    d = flow + back_at
    fb = cv2.magnitude(d[..., 0], d[..., 1])
    return flow, np.clip(2.0 - fb / fb_threshold, 0.0, 1.0).astype(np.float32)


def align_partner(
    target: Frame,
    partner: Frame,
    target_grey: np.ndarray,
    target_score: float,
    config: AlignmentConfig,
    dis: Any,
) -> Alignment:
    """Align ``partner`` to ``target`` at work scale (see the module docstring).

    ``target_grey`` is the target's float32 grey image at work scale and
    ``target_score`` the sharpness of that image (scores are compared at one
    scale); ``dis`` a cv2 DIS optical flow object.
    """
    h, w = target_grey.shape
    pg = _resize(_grey_f32(partner.image), (w, h))
    t8 = np.clip(target_grey, 0, 255).astype(np.uint8)
    # The partner blurred to the target's sharpness, for matching only.
    mg = match_blur(pg, target_score)[0]
    m8 = np.clip(mg, 0, 255).astype(np.uint8)
    geometric = (
        config.use_depth and target.depth is not None and target.pose is not None and partner.pose is not None
    )
    trust = np.ones((h, w), np.float32)
    # 1. Initial alignment.
    if geometric:
        flow, z, valid = reprojection_flow(target, partner, (w, h))
        method = "depth"
        trust *= valid
        if partner.depth is not None:
            pdw = warp(_resize(partner.depth.astype(np.float32), (w, h)), flow)
            # The partner must see the same surface: something closer there means
            # occlusion, something farther means our point is missing there
            # (it moved, or the target's depth is wrong).
            trust *= ~((pdw > 0) & (np.abs(z - pdw) > pdw * config.depth_tolerance))
    else:
        method = "flow"
        if config.refine_flow:
            # First pass forward only: it just has to align well enough to
            # estimate the relative blur kernel on the pixels it lands inside.
            flow = dis.calc(t8, m8, None)
            sharp_w, inside = warp(pg, flow), lands_inside(flow, pg.shape)
            k = center_kernel(estimate_kernel(sharp_w, target_grey, inside, config.kernel_size))
            # Second pass against the partner re-blurred with that kernel
            # (directional, like the target's blur) instead of a Gaussian.
            m8 = np.clip(reblur(pg, k), 0, 255).astype(np.uint8)
            method += "+reblur"
        flow, fb_trust = _checked_flow(dis, t8, m8, config.fb_threshold)
        trust *= fb_trust
    if config.refine_flow and geometric and _needs_refinement(pg, target_grey, flow, trust, config):
        # 2. Refinement: residual flow from the target to the partner pre-warped
        # by the current alignment (corrects pose and depth errors), composed
        # with it; residuals beyond max_refine_px are discarded.
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
        flow = (wts[0, ..., None] * flow + wts[1, ..., None] * refined).astype(np.float32)
        method += "+refine"
    sharp_w = warp(pg, flow)
    trust *= lands_inside(flow, pg.shape)
    # 3. Photometric check: the aligned partner re-blurred with the relative
    # blur kernel (estimated on trusted pixels and centred, so that a
    # misalignment cannot hide in a shifted kernel) against the target.
    kernel = center_kernel(estimate_kernel(sharp_w, target_grey, trust > 0.5, config.kernel_size))
    matched = reblur(sharp_w, kernel)
    if target.image.ndim == 3 and partner.image.ndim == 3:
        # In colour (after an exposure gain): different content of similar
        # brightness, e.g. an object that moved in, differs in hue.
        tc = _resize(target.image.astype(np.float32), (w, h))
        pc = reblur(warp(_resize(partner.image.astype(np.float32), (w, h)), flow), kernel)
        gain = _exposure_gain(tc, pc, trust > 0.5)
        diff = np.abs(pc * gain - tc).max(axis=2)
    else:
        gain = _exposure_gain(target_grey, matched, trust > 0.5)
        diff = np.abs(matched * gain - target_grey)
    res = cv2.GaussianBlur(diff, (0, 0), 1.5)
    # A misalignment of d pixels leaves a residual of about d * |grad target|:
    # the tolerance is photo_px pixels of that, plus a floor for noise.
    grad = np.sqrt(local_sharpness(target_grey, 1.5)) / 8.0  # 3x3 Sobel gain 8 -> grey levels per pixel
    tol = config.photo_abs + config.photo_px * grad
    trust *= np.clip(2.0 - res / tol, 0.0, 1.0)
    # Structure check: where the target has texture, the re-blurred partner
    # must correlate with it (different content - a moved object, an
    # occluder - correlates ~0 even when its residual is small).
    ncc, std_t = _local_ncc(matched, target_grey, config.ncc_sigma)
    structured = std_t > config.structure_std
    ok = np.clip((ncc - config.ncc_min) / (1.0 - config.ncc_min) * 2.0, 0.0, 1.0)
    trust *= np.where(structured, ok, 1.0)
    return Alignment(flow, trust.astype(np.float32), matched, sharp_w, gain, method, kernel_extent(kernel))


def align_partners(
    target: Frame, partners: list[Frame], config: AlignmentConfig
) -> tuple[list[Alignment], float, float, np.ndarray]:
    """Align every partner to ``target`` (:func:`align_partner`) at ``config.work_scale``,
    or at half of it when the longest relative blur comes out longer than 0.8
    ``kernel_size`` (``adapt_scale``: such a blur cannot be modelled at that
    scale and the checks would reject most pixels).

    Returns (alignments in partner order, the scale used, the longest relative
    blur in px at that scale, the target's float32 grey image at that scale).
    """
    if not partners:
        raise ValueError("align_partners needs at least one partner")
    H, W = target.image.shape[:2]

    def at(scale: float) -> tuple[list[Alignment], float, np.ndarray]:
        size = (max(8, int(round(W * scale))), max(8, int(round(H * scale))))
        tg = _resize(_grey_f32(target.image), size)
        tg_score = sharpness(np.clip(tg, 0, 255).astype(np.uint8))
        dis = cv2.DISOpticalFlow.create(_DIS_PRESETS[config.dis_preset])
        out = [align_partner(target, p, tg, tg_score, config, dis) for p in partners]
        return out, max(a.blur_extent for a in out), tg

    scale = config.work_scale
    aligned, extent, tg = at(scale)
    if config.adapt_scale and extent > 0.8 * config.kernel_size and W * scale / 2 >= 64:
        scale /= 2
        aligned, extent, tg = at(scale)
    return aligned, scale, extent, tg


def soft_mask(weights: np.ndarray, config: AlignmentConfig) -> np.ndarray:
    """Erode a weight map by ``erode_px`` (untrusted regions get exactly zero) and
    smooth it with ``weight_sigma`` (no seams where it is applied)."""
    if config.erode_px:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * config.erode_px + 1,) * 2)
        weights = cv2.erode(weights, kernel)
    return cv2.GaussianBlur(weights, (0, 0), config.weight_sigma)


def warp_full(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resample a partner ``image`` into the target's full-resolution grid with a
    work-scale ``flow`` (upsampled, offsets scaled with it). The target has the
    partner's size (one camera). Returns (warped image, mask of pixels that land
    inside the partner)."""
    H, W = image.shape[:2]
    h, w = flow.shape[:2]
    ff = cv2.resize(flow, (W, H), interpolation=cv2.INTER_LINEAR) * np.array([W / w, H / h], np.float32)
    return warp(image, ff), lands_inside(ff, image.shape)


def _exposure_gain(target: np.ndarray, warped: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel gain mapping the partner's exposure onto the target's (trusted pixels)."""
    n = target.shape[2] if target.ndim == 3 else 1
    m8 = mask.astype(np.uint8)
    if cv2.countNonZero(m8) < 64:
        return np.ones(n, np.float32).squeeze()
    t = np.array(cv2.mean(target, mask=m8)[:n])
    p = np.array(cv2.mean(warped, mask=m8)[:n])
    return np.clip((t + 1.0) / (p + 1.0), 0.5, 2.0).astype(np.float32).squeeze()
