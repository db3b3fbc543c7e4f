"""The fusion restorer on data with known ground truth."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from sirdiff_ros.core.frame import Frame
from sirdiff_ros.core.geometry import Pose, _rotation_exp
from sirdiff_ros.core.restorers import RestoreRequest, create_restorer
from sirdiff_ros.core.restorers.fusion import FusionConfig, FusionRestorer
from sirdiff_ros.data.readers.shared import read_robustmvd_sample
from sirdiff_ros.data.synth import sample_view_set

SEEDS = range(6)
SIZE = (192, 144)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def blurred_first(frames: list[Frame]) -> list[Frame]:
    """Most blurred view first (the target), then the others."""
    return [frames[i] for i in np.argsort([-f.extras["blur_strength"] for f in frames], kind="stable")]


@pytest.fixture(scope="module")
def view_sets():
    return {seed: sample_view_set(seed, 4, *SIZE) for seed in SEEDS}


def test_fusion_gains_at_least_2db_on_synthetic_blurred_sets(view_sets):
    restorer = create_restorer("fusion")
    gains = []
    for seed, frames in view_sets.items():
        views = blurred_first(frames)
        res = restorer.restore(RestoreRequest(views, [0]))
        rv = res.for_index(0)
        gt = views[0].extras["sharp"]
        before, after = psnr(views[0].image, gt), psnr(rv.image, gt)
        gains.append(after - before)
        print(f"\nseed {seed}: blurred {before:.2f} dB -> fused {after:.2f} dB ({after - before:+.2f}), "
              f"replaced {rv.info.get('replaced_fraction', 0):.2f}, {res.latency_s * 1e3:.0f} ms, {rv.info['methods']}")
        assert rv.restored and rv.image.dtype == np.uint8 and rv.image.shape == views[0].image.shape
    print(f"mean PSNR gain over {len(gains)} seeds: {np.mean(gains):+.2f} dB")
    assert np.mean(gains) >= 2.0
    assert min(gains) > 0.0


def test_already_sharp_inputs_change_less_than_0_2db(view_sets):
    restorer = create_restorer("fusion")
    for seed, frames in view_sets.items():
        # (a) every view sharp (ground-truth renders): nothing is sharper than the target.
        sharp = [dataclasses.replace(f, image=f.extras["sharp"]) for f in frames]
        rv = restorer.restore(RestoreRequest(sharp, [0])).for_index(0)
        change_a = psnr(rv.image, sharp[0].image)
        # (b) the least blurred camera image as the target among blurrier partners.
        views = blurred_first(frames)[::-1]
        rv_b = restorer.restore(RestoreRequest(views, [0])).for_index(0)
        gt = views[0].extras["sharp"]
        change_b = psnr(rv_b.image, gt) - psnr(views[0].image, gt)
        print(f"\nseed {seed}: sharp set output vs input {change_a:.1f} dB ({rv.reason or 'restored'}); "
              f"sharpest camera view PSNR change {change_b:+.3f} dB ({rv_b.reason or 'restored'})")
        assert change_a == float("inf") or change_a > 40.0
        assert abs(change_b) < 0.2


def test_partner_pose_errors_do_not_make_the_target_worse(view_sets):
    """SLAM poses are not exact: turn every partner by 3 degrees (~9 px here)."""
    restorer = create_restorer("fusion")
    changes = []
    for seed in list(SEEDS)[:4]:
        views = blurred_first(view_sets[seed])
        turn = _rotation_exp(np.array([0.0, np.radians(3.0), 0.0]))
        wrong = [views[0]] + [dataclasses.replace(v, pose=Pose(v.pose.rotation @ turn, v.pose.translation))
                              for v in views[1:]]
        rv = restorer.restore(RestoreRequest(wrong, [0])).for_index(0)
        gt = views[0].extras["sharp"]
        changes.append(psnr(rv.image, gt) - psnr(views[0].image, gt))
        print(f"\nseed {seed}: partner poses off by 3 deg: PSNR change {changes[-1]:+.2f} dB, {rv.info.get('methods')}")
    assert min(changes) > -0.2
    assert np.mean(changes) > 0.5


@pytest.mark.parametrize("with_depth", [True, False])
def test_content_missing_from_partners_is_never_replaced(view_sets, with_depth):
    """An object only the target sees (it moved in) must stay: no ghosts, no erasure."""
    restorer = create_restorer("fusion")
    for seed in list(SEEDS)[:3]:
        views = blurred_first(view_sets[seed])
        if not with_depth:
            views = [dataclasses.replace(v, depth=None) for v in views]
        img = views[0].image.copy()
        rng = np.random.default_rng(seed)
        y0, x0 = 40, 60
        img[y0 : y0 + 48, x0 : x0 + 48] = cv2.GaussianBlur(rng.integers(0, 255, (48, 48, 3), np.uint8), (0, 0), 2.0)
        depth = None
        if with_depth:  # an RGB-D camera sees the object in front of the scene
            depth = views[0].depth.copy()
            depth[y0 : y0 + 48, x0 : x0 + 48] *= 0.6
        target = dataclasses.replace(views[0], image=img, depth=depth)
        rv = restorer.restore(RestoreRequest([target] + views[1:], [0])).for_index(0)
        # Weights are smoothed over a few pixels (no seams): judge the object
        # 8 px inside its outline.
        inner = (slice(y0 + 8, y0 + 40), slice(x0 + 8, x0 + 40))
        diff = np.abs(rv.image[inner].astype(int) - img[inner].astype(int)).mean()
        print(f"\nseed {seed} ({'depth' if with_depth else 'flow'}): mean change inside the target-only object "
              f"{diff:.2f} grey levels")
        assert diff < 2.0


def test_flow_path_on_real_views_with_synthesised_blur(shared_data):
    """robustmvd_sample: real images and poses, no depth (DIS flow path)."""
    root = shared_data / "robustmvd_sample"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    frames = [
        Frame(cv2.resize(f.image, (640, 360), interpolation=cv2.INTER_AREA), f.stamp_ns,
              f.intrinsics.scaled(0.5), f.pose, None, f.frame_id, f.seq)
        for f in read_robustmvd_sample(root)
    ]
    k = np.zeros((21, 21), np.float32)
    cv2.line(k, (2, 6), (18, 14), 1.0, 1)  # ~18 px motion blur at 640 px
    k /= k.sum()
    restorer = create_restorer("fusion")
    gains = []
    for ti in (0, 3):
        sharp = frames[ti].image
        target = dataclasses.replace(frames[ti], image=cv2.filter2D(sharp, -1, k, borderType=cv2.BORDER_REFLECT))
        partners = [f for i, f in enumerate(frames) if i != ti][:3]
        rv = restorer.restore(RestoreRequest([target] + partners, [0])).for_index(0)
        before, after = psnr(target.image, sharp), psnr(rv.image, sharp)
        gains.append(after - before)
        print(f"\nrobustmvd view {ti}: blurred {before:.2f} dB -> fused {after:.2f} dB ({after - before:+.2f}), "
              f"{rv.info['methods']}")
    assert min(gains) >= 1.0


def test_mono_images_and_bad_requests(view_sets):
    views = blurred_first(view_sets[0])
    mono = [dataclasses.replace(f, image=cv2.cvtColor(f.image, cv2.COLOR_RGB2GRAY)) for f in views]
    rv = FusionRestorer().restore(RestoreRequest(mono, [0])).for_index(0)
    gt = cv2.cvtColor(views[0].extras["sharp"], cv2.COLOR_RGB2GRAY)
    assert rv.image.shape == mono[0].image.shape and rv.image.dtype == np.uint8
    assert psnr(rv.image, gt) > psnr(mono[0].image, gt) + 1.0
    # Partners of another size or colour layout are not used (one pixel grid).
    other = [views[0]] + [dataclasses.replace(v, image=cv2.resize(v.image, (96, 72)), depth=None,
                                              intrinsics=v.intrinsics.scaled(0.5)) for v in views[1:]]
    rv = FusionRestorer().restore(RestoreRequest(other, [0])).for_index(0)
    assert not rv.restored and rv.reason == "no_sharper_partner" and rv.image is views[0].image
    with pytest.raises(ValueError, match="out of range"):
        FusionRestorer().restore(RestoreRequest(views, [7]))
    with pytest.raises(ValueError, match="unknown fusion options"):
        create_restorer("fusion", not_an_option=1)
    with pytest.raises(ValueError, match="CPU"):
        create_restorer("fusion", device="cuda:0")
    with pytest.raises(ValueError, match="kernel_size"):
        FusionConfig(kernel_size=4)
