"""Partner views resampled into a target view's pixel grid.

The learned restorer (``sirdiff`` with a registered checkpoint) sees a target
and its partners *in the target's pixel grid*: at every pixel, the partners
show the same surface point as the target where that could be checked, and
the target's own pixels elsewhere. A network of a CPU training budget then
only has to learn *which* view is sharper where and how to merge them, not
where the same point lies in another view (SIR-Diff's 3D attention learns
that from millions of images; ours measured 0.01-0.1 gate weights on
unregistered views, see MODEL_CARD.md).

Alignment is the one both backends use (:func:`~.alignment.align_partners`:
reprojection with depth and poses, DIS flow otherwise, each checked by
forward-backward consistency, photometric residual and local correlation);
its trust map, eroded and smoothed, decides per pixel between partner and
target. Unlike fusion, no partner is left out for being blurrier: the network
judges sharpness itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from .frame import Frame
from .alignment import AlignmentConfig, align_partners, soft_mask, warp_full

__all__ = ["REGISTRATION", "Registration", "register_partners", "register_others", "resample_others", "registered_views"]

#: Name of this registration in cache metadata and checkpoints (``view_registration``).
REGISTRATION = "fusion-align"


@dataclass
class Registration:
    """One partner registered to a target.

    ``flow`` (h, w, 2): target pixel -> partner pixel at work scale;
    ``trust`` (H, W) float32 in [0, 1] at the target's full resolution (soft:
    eroded and smoothed); ``gain`` the per-channel exposure gain partner ->
    target; ``method`` how it was aligned ("depth"/"flow" ...).
    """

    flow: np.ndarray
    trust: np.ndarray
    gain: np.ndarray
    method: str

    def resample(self, partner_image: np.ndarray, target_image: np.ndarray) -> np.ndarray:
        """``partner_image`` in the target's grid: exposure-matched partner pixels
        where trusted, ``target_image`` pixels elsewhere (both (H, W[, 3]) uint8,
        the partner's grid being the one the flow was computed on)."""
        warped, inside = warp_full(partner_image, self.flow)
        w = self.trust * inside
        tgt = target_image.astype(np.float32)
        gain = np.atleast_1d(self.gain).astype(np.float32)
        part = warped.astype(np.float32) * (gain if warped.ndim == 3 else float(gain[0]))
        if tgt.ndim == 3:
            w = w[..., None]
        return np.clip(np.rint(w * part + (1.0 - w) * tgt), 0, 255).astype(np.uint8)


def register_partners(target: Frame, partners: Sequence[Frame], config: AlignmentConfig | None = None) -> list[Registration]:
    """Register every partner (same image size as ``target``) to ``target``."""
    if not partners:
        return []
    cfg = config or AlignmentConfig()
    for p in partners:
        if p.image.shape[:2] != target.image.shape[:2]:
            raise ValueError(f"partner size {p.image.shape[:2]} differs from the target's {target.image.shape[:2]}")
    aligned, _scale, _extent, _grey = align_partners(target, list(partners), cfg)
    H, W = target.image.shape[:2]
    out = []
    for al in aligned:
        trust = cv2.resize(soft_mask(al.trust, cfg), (W, H), interpolation=cv2.INTER_LINEAR)
        out.append(Registration(al.flow, np.clip(trust, 0.0, 1.0).astype(np.float32), al.gain, al.method))
    return out


def register_others(views: Sequence[Frame], target: int, config: AlignmentConfig | None = None) -> list[Registration]:
    """Every view but ``target`` registered to it, in view order."""
    return register_partners(views[target], [v for j, v in enumerate(views) if j != target], config)


def resample_others(registrations: Sequence[Registration], images: Sequence[np.ndarray], target: int) -> list[np.ndarray]:
    """``images[target]`` followed by every other image resampled into its grid with
    its registration (:func:`register_others` of the same views), in view order."""
    others = [im for j, im in enumerate(images) if j != target]
    return [images[target]] + [r.resample(im, images[target]) for r, im in zip(registrations, others)]


def registered_views(views: Sequence[Frame], target: int, config: AlignmentConfig | None = None) -> list[np.ndarray]:
    """The target's image followed by every other view resampled into its grid
    (:meth:`Registration.resample`), in view order."""
    return resample_others(register_others(views, target, config), [v.image for v in views], target)
