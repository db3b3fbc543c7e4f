"""Pick the partner views a target keyframe is restored with.

:func:`select_views` chooses up to ``n - 1`` keyframes that together cover the
target's image well, preferring sharp ones and avoiding near-duplicates:

1. Candidates: keyframes stamped strictly before the target (online and
   causal; the target itself is never its own partner).
2. Screening (linear in the buffer size): a coarse overlap estimate of every
   candidate (3x3 cells at the middle of ``depth_range`` in inverse depth);
   the ``prefilter`` best go on.
3. Fine overlap: per-cell visibility on the ``grid`` (default 16x12 cells,
   ``n_depths`` depth samples, or the target's depth image) via
   :mod:`sirdiff_ros.core.overlap`; candidates under ``min_overlap`` drop out.
4. Greedy maximisation of the set objective

   ``J(S) = mean_c [1 - prod_{i in S} (1 - q_i m_i(c))] - duplicate_penalty * sum_{i<j in S} dup(i, j)``

   where ``m_i(c)`` is candidate i's visibility of cell c, ``q_i`` its quality
   ``(1 - sharpness_weight) + sharpness_weight * min(1, s_i / s_max)`` (sharper
   is better) and ``dup(i, j) = exp(-(d_ij / duplicate_distance)^2 -
   (angle_ij / duplicate_angle_deg)^2)`` for two partners' camera centres and
   viewing directions. The coverage term is submodular: a second view of cells
   already covered adds less than a view of uncovered cells, so the set spreads
   over the image; the penalty keeps two almost identical poses out. Greedy
   stops when no candidate improves ``J``. Ties go to the more recent keyframe.

View order (stable, documented for the multi-view model, whose 3D
convolutions see the views as a sequence): the target first, then partners by
decreasing overlap, ties by more recent stamp. ``ViewSelection.overlaps`` is
parallel to ``views`` (1.0 for the target).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .frame import Frame
from .keyframes import Keyframe, KeyframeBuffer, KeyframeSnapshot
from .overlap import DEFAULT_DEPTH_RANGE, CameraStack, target_grid, visibility

__all__ = ["SelectionConfig", "ViewSelection", "select_views", "set_objective", "duplicate_matrix"]


@dataclass(frozen=True)
class SelectionConfig:
    """Parameters of :func:`select_views` (see the module docstring)."""

    min_overlap: float = 0.3
    depth_range: tuple[float, float] = DEFAULT_DEPTH_RANGE
    grid: tuple[int, int] = (16, 12)
    n_depths: int = 3
    prefilter: int = 24
    sharpness_weight: float = 0.5
    duplicate_penalty: float = 0.1
    duplicate_distance: float = 0.02  # metres
    duplicate_angle_deg: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in [0, 1], got {self.min_overlap}")
        if not 0.0 <= self.sharpness_weight <= 1.0:
            raise ValueError(f"sharpness_weight must be in [0, 1], got {self.sharpness_weight}")
        if self.prefilter < 1 or self.n_depths < 1:
            raise ValueError("prefilter and n_depths must be >= 1")
        if self.duplicate_penalty < 0 or self.duplicate_distance <= 0 or self.duplicate_angle_deg <= 0:
            raise ValueError("duplicate_penalty must be >= 0, duplicate_distance/angle > 0")


@dataclass(frozen=True)
class ViewSelection:
    """The chosen view set, in model order (see the module docstring)."""

    views: tuple[Frame, ...]
    overlaps: tuple[float, ...]
    partners: tuple[Keyframe, ...]  # parallel to views[1:]
    coverage: float  # fraction of target cells seen by at least one partner
    score: float  # J(S) of the chosen partners
    candidates: int  # keyframes that passed causality

    @property
    def target_index(self) -> int:
        return 0


def _viewing_dirs(cameras: CameraStack) -> np.ndarray:
    # Optical axis (z) in the world: third row of R_cw (= third column of R_wc).
    return cameras.R_cw[:, 2, :]


def duplicate_matrix(positions: np.ndarray, directions: np.ndarray, config: SelectionConfig) -> np.ndarray:
    """(K, K) pairwise near-duplicate scores in [0, 1] (1 = same pose), zero diagonal."""
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    cosang = np.clip(directions @ directions.T, -1.0, 1.0)
    ang = np.degrees(np.arccos(cosang))
    dup = np.exp(-((d / config.duplicate_distance) ** 2) - (ang / config.duplicate_angle_deg) ** 2)
    np.fill_diagonal(dup, 0.0)
    return dup


def set_objective(
    vis: np.ndarray, quality: np.ndarray, dup: np.ndarray, subset: Sequence[int], penalty: float
) -> float:
    """``J(S)`` for candidate indices ``subset`` (see module docstring).

    ``vis`` (K, G) visibilities, ``quality`` (K,), ``dup`` (K, K).
    """
    idx = list(subset)
    if not idx:
        return 0.0
    miss = np.prod(1.0 - quality[idx, None] * vis[idx], axis=0)  # (G,)
    pairs = dup[np.ix_(idx, idx)].sum() / 2.0
    return float((1.0 - miss).mean() - penalty * pairs)


def select_views(
    target: Frame,
    source: KeyframeBuffer | KeyframeSnapshot | Sequence[Keyframe],
    n: int,
    config: SelectionConfig | None = None,
) -> ViewSelection:
    """Choose up to ``n - 1`` partners for ``target`` (module docstring).

    ``source`` is a buffer, a snapshot of one, or keyframes in stamp order.
    Without a usable candidate the set is the target alone.
    Raises ValueError when the target has no pose or ``n < 1``.
    """
    cfg = config or SelectionConfig()
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if target.pose is None:
        raise ValueError("the target frame has no pose; view selection needs one")
    snap = _as_snapshot(source)
    # 1. causality: only keyframes stamped before the target.
    cand = np.flatnonzero(snap.stamps_ns < target.stamp_ns) if len(snap) else np.zeros(0, dtype=np.int64)
    if n == 1 or cand.size == 0:
        return ViewSelection((target,), (1.0,), (), 0.0, 0.0, int(cand.size))
    # Newest first, so that argmax/argsort ties favour recent keyframes.
    cand = cand[::-1]
    cams = snap.cameras.subset(cand)
    # 2. coarse screening of every candidate.
    coarse = target_grid(target.pose, target.intrinsics, (3, 3), cfg.depth_range, 1, None)
    coarse_ov = visibility(coarse, cams).mean(axis=1)  # (M,)
    keep = np.flatnonzero(coarse_ov > 0)
    if keep.size > cfg.prefilter:
        # Stable sort on -overlap keeps the newest-first order among ties.
        keep = keep[np.argsort(-coarse_ov[keep], kind="stable")[: cfg.prefilter]]
    if keep.size == 0:
        return ViewSelection((target,), (1.0,), (), 0.0, 0.0, int(cand.size))
    # 3. fine per-cell visibility.
    fine = target_grid(target.pose, target.intrinsics, cfg.grid, cfg.depth_range, cfg.n_depths, target.depth)
    vis = visibility(fine, cams.subset(keep))  # (K, G)
    ov = vis.mean(axis=1)
    ok = ov >= cfg.min_overlap
    keep, vis, ov = keep[ok], vis[ok], ov[ok]
    if keep.size == 0:
        return ViewSelection((target,), (1.0,), (), 0.0, 0.0, int(cand.size))
    sidx = cand[keep]  # snapshot indices of the survivors
    s = snap.sharpness[sidx]
    smax = float(s.max())
    rel = np.minimum(1.0, s / smax) if smax > 0 else np.ones_like(s)
    quality = (1.0 - cfg.sharpness_weight) + cfg.sharpness_weight * rel
    dup = duplicate_matrix(snap.positions[sidx], _viewing_dirs(cams.subset(keep)), cfg)
    # 4. greedy maximisation of J.
    chosen: list[int] = []
    miss = np.ones(vis.shape[1])
    score = 0.0
    qv = quality[:, None] * vis  # (K, G)
    for _ in range(min(n - 1, keep.size)):
        gain = (miss[None, :] * qv).mean(axis=1) - cfg.duplicate_penalty * (
            dup[:, chosen].sum(axis=1) if chosen else 0.0
        )
        gain[chosen] = -np.inf
        best = int(np.argmax(gain))
        if gain[best] <= 1e-9:
            break
        chosen.append(best)
        miss = miss * (1.0 - qv[best])
        score += float(gain[best])
    # Model order: partners by decreasing overlap, ties to the newer keyframe.
    chosen.sort(key=lambda i: (-ov[i], -int(snap.stamps_ns[sidx[i]])))
    partners = tuple(snap.keyframes[int(sidx[i])] for i in chosen)
    coverage = float((vis[chosen] > 0).any(axis=0).mean()) if chosen else 0.0
    return ViewSelection(
        views=(target,) + tuple(k.frame for k in partners),
        overlaps=(1.0,) + tuple(float(ov[i]) for i in chosen),
        partners=partners,
        coverage=coverage,
        score=score if math.isfinite(score) else 0.0,
        candidates=int(cand.size),
    )


def _as_snapshot(source: KeyframeBuffer | KeyframeSnapshot | Sequence[Keyframe]) -> KeyframeSnapshot:
    if isinstance(source, KeyframeSnapshot):
        return source
    if isinstance(source, KeyframeBuffer):
        return source.snapshot()
    return KeyframeSnapshot.build(source)
