"""Deblurring from the camera's own motion: velocity from poses, the blur operator, the deconvolution."""

from __future__ import annotations

import numpy as np
import pytest

from sirdiff_ros.core.deblur import (
    TV_WEIGHT,
    EXPOSURE_MOTION_KEY,
    ExposureMotion,
    MotionBlurOperator,
    deblur_image,
    deblurred_view,
    exposure_motion,
    relative_noise,
    richardson_lucy,
    tv_weight_for,
)
from sirdiff_ros.core.frame import Frame
from sirdiff_ros.core.geometry import Pose, _rotation_exp
from sirdiff_ros.core.pipeline import PipelineConfig, RestorationPipeline
from sirdiff_ros.data.real_photos import ShakeConfig, photo_plane_sequence
from sirdiff_ros.data.textures import skimage_data_dir


def _psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    return float(10 * np.log10(255.0**2 / max((d[mask] if mask is not None else d).mean(), 1e-12)))


def _rotating(omega: np.ndarray, alpha: np.ndarray, stamps_s: list[float]) -> list[tuple[int, Pose]]:
    """Poses of a camera whose rotation vector is omega t + alpha t^2 / 2 (world = first camera)."""
    return [(int(round(t * 1e9)), Pose(_rotation_exp(omega * t + 0.5 * alpha * t * t), np.array([0.1 * t, 0, 0])))
            for t in stamps_s]


def test_exposure_motion_recovers_the_rate_of_an_accelerating_pan() -> None:
    omega, alpha = np.array([0.1, 1.2, 0.05]), np.array([0.0, 6.0, 0.0])
    hist = _rotating(omega, alpha, [0.0, 1 / 30, 2 / 30])
    m = exposure_motion(hist, 0.02)
    assert m is not None
    true_rate = omega + alpha * (2 / 30)  # body rate of a rotation about a fixed axis direction
    assert np.allclose(m.angular_velocity, true_rate, atol=0.03)
    assert np.allclose(m.linear_velocity, [0.1, 0, 0], atol=0.01)
    # Two poses: the mean rate of the last interval (constant velocity).
    m2 = exposure_motion(hist[1:], 0.02)
    assert m2 is not None and np.allclose(m2.angular_velocity, omega + alpha * 1.5 / 30, atol=0.03)


def test_exposure_motion_needs_exposure_and_close_poses() -> None:
    hist = _rotating(np.array([0, 1.0, 0]), np.zeros(3), [0.0, 1.0])
    assert exposure_motion(hist, 0.02, max_gap_s=0.5) is None  # a 1 s gap says nothing about the exposure
    assert exposure_motion(hist[:1], 0.02) is None
    assert exposure_motion(_rotating(np.array([0, 1.0, 0]), np.zeros(3), [0.0, 0.03]), 0.0) is None


@pytest.fixture(scope="module")
def photo_frames() -> list[Frame]:
    """A real photograph (scikit-image's bundled coffee) filmed by a shaking camera, 30 ms exposure."""
    path = skimage_data_dir() / "coffee.png"
    return list(photo_plane_sequence(path, 5, 3, width=320, height=240, exposure_s=0.03, fps=30.0,
                                     shake=ShakeConfig(blur_px_range=(10.0, 10.0))))


def test_operator_reproduces_the_physical_exposure() -> None:
    from sirdiff_ros.core.color import linear_to_srgb, srgb_to_linear

    frames = list(photo_plane_sequence(skimage_data_dir() / "coffee.png", 5, 3, width=320, height=240,
                                       exposure_s=0.03, fps=30.0, noise_std=0.0, shot_noise=0.0,
                                       shake=ShakeConfig(blur_px_range=(10.0, 10.0))))
    hist = [(f.stamp_ns, f.pose) for f in frames]
    f = frames[-1]
    m = exposure_motion(hist, f.extras["exposure_s"], depth_m=2.0)
    op = MotionBlurOperator(m, f.intrinsics, 2.0)
    assert op.blur_px > 3.0
    reblurred = linear_to_srgb(op.blur(srgb_to_linear(f.extras["sharp"])))
    # Exact up to the velocity estimated from three poses (no sensor noise here).
    assert _psnr(reblurred, f.image, f.extras["valid"]) > 40.0
    assert _psnr(f.extras["sharp"], f.image, f.extras["valid"]) < 32.0


def test_deblurring_a_real_photo_gains_and_a_sharp_one_is_left_alone(photo_frames) -> None:
    hist = [(f.stamp_ns, f.pose) for f in photo_frames]
    f = photo_frames[-1]
    out, blur_px = deblur_image(f.image, exposure_motion(hist, f.extras["exposure_s"]), f.intrinsics, 2.0)
    assert blur_px > 3.0
    valid = f.extras["valid"]
    assert _psnr(out, f.extras["sharp"], valid) > _psnr(f.image, f.extras["sharp"], valid) + 1.0
    # A camera at rest: nothing to invert, the very same image back.
    still = Frame(f.image, f.stamp_ns, f.intrinsics, f.pose)
    still.extras[EXPOSURE_MOTION_KEY] = ExposureMotion(0.03, np.zeros(3), np.zeros(3))
    assert deblurred_view(still) is still


def test_the_prior_follows_the_frames_noise_and_a_dark_noisy_frame_still_gains() -> None:
    from sirdiff_ros.core.color import linear_to_srgb, srgb_to_linear

    frames = list(photo_plane_sequence(skimage_data_dir() / "coffee.png", 5, 3, width=320, height=240,
                                       exposure_s=0.02, fps=30.0, noise_std=0.0, shot_noise=0.0,
                                       shake=ShakeConfig(blur_px_range=(4.0, 4.0))))
    f = frames[-1]
    op = MotionBlurOperator(exposure_motion([(g.stamp_ns, g.pose) for g in frames], 0.02, depth_m=2.0), f.intrinsics, 2.0)
    rng = np.random.default_rng(0)
    results = {}
    for level in (1.0, 0.12):  # a bright scene and a dark one (an eighth of the light: 2.9x the relative shot noise)
        sharp = srgb_to_linear(f.extras["sharp"]) * level
        clean = op.blur(sharp)
        noisy = np.clip(clean + rng.normal(size=clean.shape).astype(np.float32) * np.sqrt(2e-4 * clean + 1e-6), 0, 1)
        # Of the channel mean: independent noise in three channels averages down by sqrt(3).
        true_rel = float(np.sqrt(2e-4 * clean + 1e-6).mean() / np.sqrt(3) / clean.mean())
        assert relative_noise(noisy) == pytest.approx(true_rel, rel=0.3)
        truth, observed = linear_to_srgb(sharp), linear_to_srgb(noisy)
        n = 9
        fixed = _psnr(linear_to_srgb(np.clip(richardson_lucy(noisy, op, n, tv_weight=TV_WEIGHT), 0, 1)), truth)
        adaptive = _psnr(linear_to_srgb(np.clip(richardson_lucy(noisy, op, n), 0, 1)), truth)
        results[level] = (tv_weight_for(noisy), _psnr(observed, truth), fixed, adaptive)
    (w_bright, *_), (w_dark, dark_in, dark_fixed, dark_adaptive) = results[1.0], results[0.12]
    assert w_dark > 2 * w_bright
    # On the dark frame the fixed weight lets noise through; the frame's own weight gains.
    assert dark_adaptive > dark_fixed + 0.3 and dark_adaptive > dark_in + 0.5, results


def test_deblurred_view_is_cached_and_idempotent(photo_frames) -> None:
    hist = [(f.stamp_ns, f.pose) for f in photo_frames]
    f = Frame(photo_frames[-1].image, photo_frames[-1].stamp_ns, photo_frames[-1].intrinsics, photo_frames[-1].pose)
    f.extras[EXPOSURE_MOTION_KEY] = exposure_motion(hist, 0.03)
    once = deblurred_view(f)
    assert once is not f and once.extras["deblur_px"] > 3 and EXPOSURE_MOTION_KEY not in once.extras
    assert deblurred_view(f) is once  # cached: a partner of several targets is deblurred once
    assert deblurred_view(once) is once  # already deblurred: no second inversion
    assert np.array_equal(f.image, photo_frames[-1].image)  # the input is untouched


def test_operator_rejects_bad_depth(photo_frames) -> None:
    f = photo_frames[-1]
    m = ExposureMotion(0.03, np.array([0, 1.0, 0]), np.zeros(3))
    with pytest.raises(ValueError, match="does not match"):
        MotionBlurOperator(m, f.intrinsics, np.ones((3, 3), np.float32))
    with pytest.raises(ValueError, match="positive"):
        MotionBlurOperator(m, f.intrinsics, -1.0)
    with pytest.raises(ValueError, match="no valid"):
        MotionBlurOperator(m, f.intrinsics, np.zeros(f.image.shape[:2], np.float32))


def test_pipeline_deblurs_targets_and_passes_non_targets_bit_exact() -> None:
    path = skimage_data_dir() / "astronaut.png"
    frames = list(photo_plane_sequence(path, 9, 14, width=320, height=240, exposure_s=0.03, fps=30.0,
                                       shake=ShakeConfig(blur_px_range=(12.0, 12.0))))
    pipe = RestorationPipeline(PipelineConfig(exposure_s=0.03, motion_blur_px=4.0), "deblur")
    gains, passed = [], 0
    for f in frames:
        original = f.image.copy()
        out = pipe.process(f)
        if not out.decision.is_target:
            assert out.image is f.image and np.array_equal(out.image, original)
            passed += 1
            continue
        assert out.restored and out.reason == ""
        gains.append(_psnr(out.image, f.extras["sharp"], f.extras["valid"])
                     - _psnr(f.image, f.extras["sharp"], f.extras["valid"]))
    assert gains and passed
    assert float(np.mean(gains)) > 1.0
    assert pipe.counts()["restored"] == len(gains)
    # The unrestored baseline stays unrestored: passthrough views are not deblurred.
    base = RestorationPipeline(PipelineConfig(exposure_s=0.03, motion_blur_px=4.0), "passthrough")
    outs = [base.process(f) for f in frames]
    assert all(o.image is f.image for o, f in zip(outs, frames))


def test_evidence_guard_rejects_sharp_structure_in_the_wrong_place(photo_frames) -> None:
    from sirdiff_ros.core.deblur import evidence_guard

    hist = [(f.stamp_ns, f.pose) for f in photo_frames]
    f = photo_frames[-1]
    motion = exposure_motion(hist, f.extras["exposure_s"])
    sharp = f.extras["sharp"]
    fallback, _ = deblur_image(f.image, motion, f.intrinsics, motion.depth_m)
    # The truth itself passes: it blurs into the observation.
    kept, replaced = evidence_guard(sharp, fallback, f.image, motion, f.intrinsics)
    assert replaced < 0.1 and _psnr(kept, sharp) > 40
    # The truth moved by 20 px (a misaligned partner pasted as sharp): sharper, and wrong.
    shifted = np.roll(sharp, 20, axis=1)
    guarded, replaced = evidence_guard(shifted, fallback, f.image, motion, f.intrinsics)
    assert replaced > 0.5
    assert _psnr(guarded, sharp) > _psnr(shifted, sharp) + 3
    with pytest.raises(ValueError, match="one shape"):
        evidence_guard(sharp[:10], fallback, f.image, motion, f.intrinsics)


def test_baselines_are_registered_and_restore_a_target(photo_frames) -> None:
    from sirdiff_ros.core.restorers import RestoreRequest, available_restorers, create_restorer

    assert {"deblur", "aligned-mean"} <= set(available_restorers())
    hist = [(f.stamp_ns, f.pose) for f in photo_frames]
    views = [Frame(f.image, f.stamp_ns, f.intrinsics, f.pose) for f in photo_frames[::-1]]
    views[0].extras[EXPOSURE_MOTION_KEY] = exposure_motion(hist, 0.03)
    truth, valid = photo_frames[-1].extras["sharp"], photo_frames[-1].extras["valid"]
    deb = create_restorer("deblur").restore(RestoreRequest(views, [0])).for_index(0)
    assert deb.restored and _psnr(deb.image, truth, valid) > _psnr(views[0].image, truth, valid) + 1.0
    # Without motion there is nothing to invert.
    bare = create_restorer("deblur").restore(RestoreRequest(views, [1])).for_index(1)
    assert not bare.restored and bare.reason == "no_motion" and bare.image is views[1].image
    mean = create_restorer("aligned-mean").restore(RestoreRequest(views, [0])).for_index(0)
    assert mean.restored and mean.image.shape == views[0].image.shape and mean.info["views"] == 3
    alone = create_restorer("aligned-mean").restore(RestoreRequest(views[:1], [0])).for_index(0)
    assert not alone.restored and alone.reason == "no_partners"
    with pytest.raises(ValueError, match="no options"):
        create_restorer("aligned-mean", steps=3)


def test_gate_finds_targets_in_a_uniformly_blurred_stream() -> None:
    from sirdiff_ros.core.keyframes import KeyframeConfig
    from sirdiff_ros.core.reasons import GateRule

    # A shaking camera: long stretches in which every frame is blurred, so relative
    # to its peers no frame stands out.
    frames = list(photo_plane_sequence(skimage_data_dir() / "rocket.jpg", 2, 16, width=320, height=240,
                                       exposure_s=0.03, fps=30.0, shake=ShakeConfig(blur_px_range=(25.0, 25.0))))
    kf_cfg = KeyframeConfig(min_rotation_deg=0.2)  # every frame a keyframe
    with_motion = RestorationPipeline(PipelineConfig(kf_cfg, exposure_s=0.03, motion_blur_px=3.0), "passthrough")
    score_only = RestorationPipeline(PipelineConfig(kf_cfg, exposure_s=0.0), "passthrough")
    d_motion = [with_motion.ingest(f) for f in frames]
    d_score = [score_only.ingest(Frame(f.image, f.stamp_ns, f.intrinsics, f.pose)) for f in frames]
    blurred = [i for i, f in enumerate(frames) if f.extras["blur_px"] >= 4.5 and d_motion[i].gate is not GateRule.UNDECIDED]
    assert len(blurred) >= 4
    assert all(d_motion[i].is_target and d_motion[i].gate is GateRule.MOTION for i in blurred)
    # The relative score alone misses some of them: that is what the absolute measure is for.
    assert sum(d_score[i].is_target for i in blurred) < len(blurred)
    assert all(d.gate in (GateRule.SCORE, GateRule.SHARP_SCORE, GateRule.UNDECIDED) for d in d_score)
    assert {d.gate for d in d_motion if not d.is_target} <= {GateRule.LITTLE_MOTION, GateRule.UNDECIDED}
