"""Overlap estimates against brute-force reprojection of every pixel."""

from __future__ import annotations

import numpy as np
import pytest

from sirdiff_ros.core.geometry import CameraIntrinsics, GeometryError, Pose, _rotation_exp
from sirdiff_ros.core.overlap import inverse_depth_samples, overlap_fraction
from sirdiff_ros.data.synth import generate_sequence


def brute_force_overlap(target, other) -> float:
    """Fraction of the target's valid-depth pixels that land inside ``other`` and in front of it."""
    K = target.intrinsics
    valid = np.isfinite(target.depth) & (target.depth > 0)
    pts = K.unproject(K.pixel_grid(), np.where(valid, target.depth, 1.0))
    pc = target.pose.relative_to(other.pose).transform_points(pts)
    uv, z = other.intrinsics.project(pc)
    inside = valid & (z > 1e-6) & other.intrinsics.in_image(uv)
    return float(inside.sum() / valid.sum())


@pytest.fixture(scope="module")
def sequence():
    # Fast camera so that pairs span overlaps from ~0 to ~1.
    return list(generate_sequence(11, 24, 96, 72, speed=1.2, angular_speed=0.8, subframes=1))


def test_overlap_with_depth_matches_brute_force(sequence):
    errs, truths = [], []
    for i in range(0, len(sequence), 3):
        for j in range(len(sequence)):
            if i == j:
                continue
            t, o = sequence[i], sequence[j]
            truth = brute_force_overlap(t, o)
            est = overlap_fraction(t.pose, t.intrinsics, o.pose, o.intrinsics, target_depth=t.depth)
            errs.append(abs(est - truth))
            truths.append(truth)
    errs = np.array(errs)
    print(f"\noverlap (depth image) vs brute force over {errs.size} pairs: mean |err| {errs.mean():.4f}, "
          f"max {errs.max():.4f}; true overlaps span {min(truths):.2f}..{max(truths):.2f}")
    assert min(truths) < 0.3 and max(truths) > 0.8  # the pairs exercise the whole range
    assert errs.mean() < 0.02
    assert errs.max() < 0.08


def test_overlap_with_depth_range_prior_tracks_brute_force(sequence):
    # Without a depth image: the target's depth range (5th..95th percentile) as the prior.
    est, truth = [], []
    for i in range(0, len(sequence), 3):
        t = sequence[i]
        lo, hi = np.percentile(t.depth[t.depth > 0], [5, 95])
        for j in range(len(sequence)):
            if i != j:
                o = sequence[j]
                est.append(overlap_fraction(t.pose, t.intrinsics, o.pose, o.intrinsics, depth_range=(lo, hi)))
                truth.append(brute_force_overlap(t, o))
    est, truth = np.array(est), np.array(truth)
    err = np.abs(est - truth)
    corr = float(np.corrcoef(est, truth)[0, 1])
    print(f"\noverlap (depth range prior) vs brute force over {err.size} pairs: mean |err| {err.mean():.4f}, "
          f"max {err.max():.4f}, correlation {corr:.3f}")
    assert err.mean() < 0.06
    assert corr > 0.95


def test_identical_camera_sees_everything_and_facing_away_sees_nothing():
    K = CameraIntrinsics(100.0, 100.0, 63.5, 47.5, 128, 96)
    p = Pose(_rotation_exp(np.array([0.1, -0.2, 0.05])), np.array([0.3, -0.1, 1.0]))
    assert overlap_fraction(p, K, p, K) == pytest.approx(1.0)
    behind = Pose(p.rotation @ _rotation_exp(np.array([0.0, np.pi, 0.0])), p.translation)
    assert overlap_fraction(p, K, behind, K) == 0.0
    # Facing away but displaced backwards: still sees nothing of the target's view.
    back = Pose(behind.rotation, p.translation - 0.5 * p.rotation[:, 2])
    assert overlap_fraction(p, K, back, K) == 0.0
    # Turned 90 degrees with a 65-degree field of view: almost nothing.
    side = Pose(p.rotation @ _rotation_exp(np.array([0.0, np.pi / 2, 0.0])), p.translation)
    assert overlap_fraction(p, K, side, K) < 0.05


def test_bad_inputs_raise_clear_errors():
    K = CameraIntrinsics(100.0, 100.0, 63.5, 47.5, 128, 96)
    p = Pose.identity()
    with pytest.raises(GeometryError, match="depth shape"):
        overlap_fraction(p, K, p, K, target_depth=np.ones((10, 10), np.float32))
    with pytest.raises(GeometryError, match="depth_range"):
        overlap_fraction(p, K, p, K, depth_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="grid"):
        overlap_fraction(p, K, p, K, grid=(0, 4))
    d = inverse_depth_samples((1.0, 4.0), 3)
    assert np.all(np.diff(1.0 / d) < 0) and 1.0 < d.min() and d.max() < 4.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, grid", [((480, 640), (16, 12)), ((120, 160), (8, 6)), ((100, 130), (16, 12))])
def test_cell_depth_is_numpys_nanmedian_of_each_cell(dtype: type, shape: tuple[int, int], grid: tuple[int, int]) -> None:
    """The per-cell depth of a target's grid: the median of the cell's valid depths, as
    numpy's nanmedian gives it in float64 (ties, holes, NaN, inf, negative, empty cells)."""
    from sirdiff_ros.core.overlap import _cell_medians

    rng = np.random.default_rng(7)
    h, w = shape
    gw, gh = grid
    depth = np.round(rng.uniform(0.3, 12.0, shape), 1).astype(dtype)  # rounded: many ties
    holes = rng.random(shape)
    depth[holes < 0.05] = 0.0
    depth[(holes >= 0.05) & (holes < 0.07)] = np.nan
    depth[(holes >= 0.07) & (holes < 0.08)] = np.inf
    depth[(holes >= 0.08) & (holes < 0.09)] = -1.0
    depth[: h // gh, : w // gw] = 0.0  # one cell without depth
    depth[h // gh : 2 * h // gh, : w // gw] = 2.5  # one cell of equal depths
    ys, xs = np.linspace(0, h, gh + 1).astype(int), np.linspace(0, w, gw + 1).astype(int)
    d = np.where(np.isfinite(depth) & (depth > 0), depth, np.nan).astype(np.float64)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):  # the empty cell
        expected = [np.nanmedian(d[ys[r] : ys[r + 1], xs[c] : xs[c + 1]]) for r in range(gh) for c in range(gw)]
    got = _cell_medians(depth, gw, gh)
    assert got.dtype == np.float64 and np.isnan(got[0]) and got[gw] == 2.5
    np.testing.assert_array_equal(got, np.array(expected))
