"""View selection on a synthetic trajectory against brute-force searches."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sirdiff_ros.core.frame import Frame
from sirdiff_ros.core.keyframes import Keyframe, KeyframeBuffer, KeyframeConfig
from sirdiff_ros.core.overlap import target_grid, visibility
from sirdiff_ros.core.selection import SelectionConfig, duplicate_matrix, select_views, set_objective
from sirdiff_ros.data.synth import generate_sequence


@pytest.fixture(scope="module")
def trajectory():
    return list(generate_sequence(21, 70, 64, 48, subframes=1))


def keyframes_of(frames, sharpness=None):
    buf = KeyframeBuffer(KeyframeConfig(min_translation=0.08, min_rotation_deg=6.0, max_keyframes=1000))
    rng = np.random.default_rng(0)
    for f in frames:
        buf.consider(f, sharpness=float(rng.uniform(0.2, 1.0)) if sharpness is None else sharpness)
    return buf.snapshot()


def seen_masks(target: Frame, partners) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: per partner, which target pixels (true depth) it sees; and the valid-depth mask."""
    K = target.intrinsics
    valid = target.depth > 0
    pts = K.unproject(K.pixel_grid(), np.where(valid, target.depth, 1.0))
    masks = []
    for p in partners:
        uv, z = p.intrinsics.project(target.pose.relative_to(p.pose).transform_points(pts))
        masks.append((z > 1e-6) & p.intrinsics.in_image(uv) & valid)
    return np.array(masks).reshape(len(masks), -1), valid


def test_greedy_coverage_matches_brute_force_pixel_coverage(trajectory):
    snap = keyframes_of(trajectory, sharpness=1.0)
    # Pure coverage: no sharpness preference, no duplicate penalty, the target's depth image.
    cfg = SelectionConfig(min_overlap=0.1, sharpness_weight=0.0, duplicate_penalty=0.0, prefilter=1000)
    ratios = []
    for ti in range(len(snap) - 1, 8, -4):
        target = snap.keyframes[ti].frame
        sel = select_views(target, snap, 4, cfg)
        assert len(sel.partners) >= 1
        n_valid = (target.depth > 0).sum()
        chosen, _ = seen_masks(target, [k.frame for k in sel.partners])
        got = chosen.any(axis=0).sum() / n_valid
        # Brute force over every subset of up to 3 candidates with overlap >= min_overlap.
        masks, _ = seen_masks(target, [k.frame for k in snap.keyframes[:ti]])
        elig = masks[masks.sum(axis=1) / n_valid >= 0.1]
        best = max(elig[list(c)].any(axis=0).sum() / n_valid
                   for r in range(1, min(3, len(elig)) + 1) for c in itertools.combinations(range(len(elig)), r))
        ratios.append(got / best)
    print(f"\nselection coverage / brute-force best coverage over {len(ratios)} targets: "
          f"min {min(ratios):.3f}, mean {np.mean(ratios):.3f}")
    assert min(ratios) >= 0.95


def test_greedy_objective_within_5_percent_of_exhaustive(trajectory):
    snap = keyframes_of(trajectory)
    cfg = SelectionConfig(min_overlap=0.2)
    ratios = []
    for ti in range(len(snap) - 1, 8, -3):
        target = snap.keyframes[ti].frame
        sel = select_views(target, snap, 4, cfg)
        cands = list(range(ti))
        grid = target_grid(target.pose, target.intrinsics, cfg.grid, cfg.depth_range, cfg.n_depths, target.depth)
        cams = snap.cameras.subset(np.array(cands))
        vis = visibility(grid, cams)
        ok = vis.mean(axis=1) >= cfg.min_overlap
        elig = np.flatnonzero(ok)
        if elig.size == 0:
            assert sel.partners == ()
            continue
        s = snap.sharpness[elig]
        q = (1 - cfg.sharpness_weight) + cfg.sharpness_weight * np.minimum(1.0, s / s.max())
        dup = duplicate_matrix(snap.positions[elig], cams.subset(elig).R_cw[:, 2, :], cfg)
        best = max(set_objective(vis[elig], q, dup, c, cfg.duplicate_penalty)
                   for r in range(1, min(3, elig.size) + 1) for c in itertools.combinations(range(elig.size), r))
        ratios.append(sel.score / best)
    print(f"\nselection objective / exhaustive best over {len(ratios)} targets: min {min(ratios):.3f}")
    assert min(ratios) >= 0.95


def test_order_causality_determinism_and_min_overlap(trajectory):
    snap = keyframes_of(trajectory)
    target = snap.keyframes[-1].frame
    sel = select_views(target, snap, 4, SelectionConfig(min_overlap=0.3))
    assert sel.views[0] is target and sel.overlaps[0] == 1.0 and sel.target_index == 0
    assert list(sel.overlaps[1:]) == sorted(sel.overlaps[1:], reverse=True)
    assert all(o >= 0.3 for o in sel.overlaps[1:])
    assert all(k.stamp_ns < target.stamp_ns for k in sel.partners)
    again = select_views(target, list(snap.keyframes), 4, SelectionConfig(min_overlap=0.3))
    assert [k.index for k in again.partners] == [k.index for k in sel.partners]
    assert again.overlaps == sel.overlaps
    # An older target only sees keyframes before it.
    early = snap.keyframes[3].frame
    assert all(k.index < 3 for k in select_views(early, snap, 4).partners)
    assert select_views(snap.keyframes[0].frame, snap, 4).partners == ()
    with pytest.raises(ValueError, match="n must be"):
        select_views(target, snap, 0)


def test_prefers_sharper_and_avoids_near_duplicates(trajectory):
    base = trajectory[30]
    target = trajectory[34]
    # Three keyframes at exactly the same pose (near-duplicates), different sharpness,
    # plus one other useful view.
    kfs = [Keyframe(Frame(base.image, base.stamp_ns + i, base.intrinsics, base.pose, base.depth), s, i, 0)
           for i, s in enumerate([0.3, 0.9, 0.5])]
    other = trajectory[27]
    kfs.append(Keyframe(other, 0.4, 3, 0))
    kfs.sort(key=lambda k: k.stamp_ns)
    sel = select_views(target, kfs, 3, SelectionConfig(min_overlap=0.05))
    chosen = {k.index for k in sel.partners}
    assert 1 in chosen, "the sharpest of the duplicates"
    assert len(chosen & {0, 1, 2}) == 1, "only one of three identical poses"
