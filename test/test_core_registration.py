"""Partners resampled into a target's grid (sirdiff_ros.core.registration) on rendered view sets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sirdiff_ros.core.registration import register_partners, registered_views
from sirdiff_ros.data.synth import sample_view_set
from sirdiff_ros.evaluation.metrics import psnr


@pytest.fixture(scope="module")
def view_set():
    # A training seed with a wide-ish baseline: partners are shifted by tens of pixels.
    return sample_view_set(3, 4, 192, 144, baseline_m=(0.1, 0.3))


def test_registered_partners_show_the_targets_surface(view_set) -> None:
    """Where a registration is trusted, the partner's *sharp* render resampled into the
    target's grid matches the target's sharp render; unregistered it does not."""
    target = int(np.argmax([f.extras["blur_px"] for f in view_set]))
    partners = [f for j, f in enumerate(view_set) if j != target]
    sharp_t = view_set[target].extras["sharp"]
    for label, frames in (("depth", view_set), ("flow", [dataclasses.replace(f, depth=None) for f in view_set])):
        regs = register_partners(frames[target], [f for j, f in enumerate(frames) if j != target])
        assert len(regs) == 3 and all(r.trust.shape == sharp_t.shape[:2] for r in regs)
        assert regs[0].method.startswith(label)
        trusted = []
        for r, p in zip(regs, partners):
            assert 0.0 <= r.trust.min() and r.trust.max() <= 1.0
            mask = r.trust > 0.95
            if mask.mean() < 0.05:
                continue
            moved = r.resample(p.extras["sharp"], sharp_t)
            err_registered = np.abs(moved.astype(float) - sharp_t)[mask].mean()
            err_raw = np.abs(p.extras["sharp"].astype(float) - sharp_t)[mask].mean()
            assert err_registered < 0.5 * err_raw, (label, err_registered, err_raw)
            trusted.append(err_registered)
        assert trusted, f"{label}: no partner registered over 5% of the target"


def test_untrusted_pixels_are_the_targets_own_and_order_is_kept(view_set) -> None:
    target = 1
    views = registered_views(view_set, target)
    assert len(views) == 4 and all(v.shape == view_set[target].image.shape and v.dtype == np.uint8 for v in views)
    assert views[0] is view_set[target].image
    regs = register_partners(view_set[target], [view_set[j] for j in (0, 2, 3)])
    for v, r in zip(views[1:], regs):
        np.testing.assert_array_equal(v[r.trust == 0], view_set[target].image[r.trust == 0])
    # A partner showing something else entirely (another scene) is not trusted anywhere much.
    other = sample_view_set(11, 1, 192, 144)[0]
    reg = register_partners(view_set[target], [dataclasses.replace(other, depth=None, pose=None)])[0]
    assert reg.trust.mean() < 0.15
    moved = reg.resample(other.image, view_set[target].image)
    assert psnr(moved, view_set[target].image) > psnr(other.image, view_set[target].image) + 5


def test_size_mismatch_is_refused(view_set) -> None:
    k = dataclasses.replace(view_set[1].intrinsics, width=96, height=72)
    small = dataclasses.replace(view_set[1], image=view_set[1].image[:72, :96], depth=None, intrinsics=k)
    with pytest.raises(ValueError, match="partner size"):
        register_partners(view_set[0], [small])
    assert register_partners(view_set[0], []) == []
