"""The ``fusion`` backend: take sharp content from aligned partner views.

A region blurred in the target is often sharp in another view. For each
partner that is sharper than the target (and has its image size and colour
layout: one camera), per target pixel:

1. Align and check (:mod:`sirdiff_ros.core.alignment`): reprojection with
   depth and poses or DIS flow, checked by forward-backward consistency,
   depth, photometric residual against the partner re-blurred with the
   relative blur kernel, and local correlation; a trust map in [0, 1].
2. Weigh: a partner counts where it is *locally* sharper than the target
   (ratio of local gradient energy, from ``sharper_ratio`` to full weight at
   ``full_ratio``) and its alignment is trusted. Weight maps are eroded (so
   untrusted regions get exactly zero) and Gaussian-smoothed (no seams), and
   normalised so partner weights sum to at most 1; the target keeps the rest.
3. Fuse: ``out = target + sum_j w_j (gain_j * warped_j - target)``, where
   ``gain_j`` is a per-channel exposure gain fitted on trusted pixels.

Wherever no partner is trustworthy the output is the target's own pixels,
bit for bit, so the restorer cannot create seams or ghosts there; on an
already sharp target no partner is locally sharper and nothing changes.
The fused image never invents content: every pixel is a convex blend of
observed pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np

from ..alignment import AlignmentConfig, FrameCache, align_partners, channel_scalar, soft_mask, warp_full
from ..blur import local_sharpness
from ..device import resolve_device
from ..frame import Frame
from ..profiling import stage
from ..reasons import PassReason
from .base import RestoredView, RestoreRequest, RestoreResult, register_restorer
from .passthrough import check_request

__all__ = ["FusionConfig", "FusionRestorer"]


@dataclass(frozen=True)
class FusionConfig(AlignmentConfig):
    """Parameters of the fusion restorer: the alignment's
    (:class:`~sirdiff_ros.core.alignment.AlignmentConfig`) and the weighing of
    aligned partners (pixel sizes are at ``work_scale``)."""

    min_global_ratio: float = 1.05  # partner's sharpness / target's to consider it
    sharper_ratio: float = 1.1  # local sharpness gain where a partner starts to count
    full_ratio: float = 1.5  # gain where it counts fully
    sharpness_sigma: float = 3.0  # neighbourhood of the local sharpness (px)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1.0 <= self.sharper_ratio < self.full_ratio:
            raise ValueError("need 1 <= sharper_ratio < full_ratio")


@register_restorer("fusion")
class FusionRestorer:
    """Geometric multi-view fusion (module docstring). CPU only."""

    name = "fusion"
    # Calls share only the thread-safe frame cache; OpenCV and numpy release the GIL.
    parallel_calls = True

    def __init__(self, device: str = "cpu", config: FusionConfig | None = None, **overrides: Any) -> None:
        self.device_choice = resolve_device(device, supported=("cpu",))  # DeviceError (a ValueError) otherwise
        self.device = self.device_choice.device
        base = config or FusionConfig()
        if overrides:
            known = {f.name for f in fields(FusionConfig)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise ValueError(f"unknown fusion options {unknown}; known: {sorted(known)}")
            base = FusionConfig(**{**{f.name: getattr(base, f.name) for f in fields(base)}, **overrides})
        self.config = base
        # Keyframes recur as partners of consecutive targets: their work-scale
        # images are kept (a few view sets' worth).
        self.cache = FrameCache()

    def restore(self, request: RestoreRequest) -> RestoreResult:
        t0 = time.perf_counter()
        check_request(request)
        out = [self._restore_one(request.views, i) for i in request.targets]
        return RestoreResult(out, self.name, self.device, time.perf_counter() - t0)

    def _restore_one(self, views: Any, ti: int) -> RestoredView:
        cfg = self.config
        target: Frame = views[ti]
        img = target.image
        with stage("select"):
            t_score = self.cache.sharpness(img)
            partners = [
                (j, v)
                for j, v in enumerate(views)
                # Same camera geometry (size, colour) as the target: the alignment
                # works on one pixel grid.
                if j != ti and v.image.shape == img.shape and self.cache.sharpness(v.image) > cfg.min_global_ratio * t_score
            ]
        if not partners:
            return RestoredView(ti, img, False, PassReason.NO_SHARPER_PARTNER, {"partners_used": 0})
        aligned, scale, extent, tg = align_partners(target, [p for _, p in partners], cfg, self.cache)
        with stage("weigh"):
            e_t = local_sharpness(tg, cfg.sharpness_sigma)
            weighted = []
            for (j, _), al in zip(partners, aligned):
                # Local sharpness of the *unblurred* partner, warped to the target.
                ratio = local_sharpness(al.sharp, cfg.sharpness_sigma) / (e_t + 1.0)
                gain = np.clip((ratio - cfg.sharper_ratio) / (cfg.full_ratio - cfg.sharper_ratio), 0.0, 1.0)
                weighted.append((j, al.method, al.gain, soft_mask(al.trust * gain, cfg), al.flow))
        with stage("blend"):
            view = self._blend(views, ti, weighted, scale)
        view.info["work_scale"] = scale
        view.info["blur_extent_px"] = extent / scale
        return view

    def _blend(self, views: Any, ti: int, aligned: list, scale: float) -> RestoredView:
        """Fuse the aligned partners into the target at full resolution.

        Only the bounding box of each partner's non-zero weights is resampled
        and blended: everywhere else the output is the target's pixels."""
        img = views[ti].image
        H, W = img.shape[:2]
        wsum = np.sum([a[3] for a in aligned], axis=0)
        norm = np.maximum(wsum, 1.0)
        info: dict[str, Any] = {"partners_used": 0, "methods": {}, "mean_weight": {}}
        used = []  # (partner index, gain, full-resolution weights, their box, flow)
        for j, method, gain, wmap, flow in aligned:
            wn = wmap / norm
            if float(wn.max()) < 1e-3:
                continue
            # Work scale -> full resolution.
            wf = cv2.resize(wn, (W, H), interpolation=cv2.INTER_LINEAR)
            x, y, bw, bh = cv2.boundingRect(cv2.compare(wf, 0.0, cv2.CMP_GT))  # type: ignore[call-overload]
            used.append((j, gain, wf, (y, y + bh, x, x + bw), flow))
            info["partners_used"] += 1
            info["methods"][j] = method
            info["mean_weight"][j] = float(np.mean(wn))
        if info["partners_used"] == 0:
            return RestoredView(ti, img, False, PassReason.NO_TRUSTWORTHY_PARTNER, info)
        info["replaced_fraction"] = float(np.mean(np.minimum(wsum, 1.0)))
        # The union of the partners' boxes; the accumulator covers it only.
        y0, y1 = min(b[3][0] for b in used), max(b[3][1] for b in used)
        x0, x1 = min(b[3][2] for b in used), max(b[3][3] for b in used)
        tgt_f = img[y0:y1, x0:x1].astype(np.float32)
        acc = np.zeros_like(tgt_f)  # sum_j w_j * (gain_j * warped_j - target)
        for j, gain, wf, (by0, by1, bx0, bx1), flow in used:
            if by1 <= by0 or bx1 <= bx0:
                continue
            warped, inside = warp_full(views[j].image, flow, (slice(by0, by1), slice(bx0, bx1)))
            # Smoothed weights reach a few pixels past the partner's border: cut there.
            w = wf[by0:by1, bx0:bx1]
            np.multiply(w, inside, out=w)
            sub = (slice(by0 - y0, by1 - y0), slice(bx0 - x0, bx1 - x0))
            channels = warped.shape[2] if warped.ndim == 3 else 1
            scaled = cv2.multiply(warped, channel_scalar(gain, channels), dtype=cv2.CV_32F)
            cv2.subtract(scaled, tgt_f[sub], dst=scaled)
            # cv2 over a 3-channel copy of w: numpy's broadcast over a last axis of 3 is several times slower.
            cv2.multiply(scaled, cv2.merge((w,) * 3) if warped.ndim == 3 else w, dst=scaled)
            acc[sub] += scaled
        # out = target + sum_j w_j (gain_j warped_j - target), rounded and saturated to uint8.
        out = img.copy()
        out[y0:y1, x0:x1] = cv2.add(tgt_f, acc, dtype=cv2.CV_8U)
        return RestoredView(ti, out, True, "", info)
