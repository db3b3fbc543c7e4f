"""The online pipeline: decisions, gating, restoration outcomes, message fields."""

from __future__ import annotations

import dataclasses
import math
import threading

import cv2
import numpy as np
import pytest

from sirdiff_ros.core.pipeline import (
    OUTCOME_PASSED_THROUGH,
    OUTCOME_RESTORED,
    PipelineConfig,
    RestorationPipeline,
    linear_quantile,
)
from sirdiff_ros.core.restorers import RestoreRequest, RestoreResult, RestorerError
from sirdiff_ros.data.synth import generate_sequence
from sirdiff_ros.interfaces import make_typestore

BLURRED = {12, 20, 27}


def smear(img: np.ndarray, length: int = 15) -> np.ndarray:
    k = np.zeros((length, length), np.float32)
    k[length // 2, :] = 1.0 / length
    return cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def frames():
    """A camera sequence whose images are the sharp renders, with a few keyframes smeared."""
    out = []
    for f in generate_sequence(4, 32, 160, 120, subframes=1, speed=0.8, burst_rate=0.0):
        img = smear(f.extras["sharp"]) if f.seq in BLURRED else f.extras["sharp"]
        out.append(dataclasses.replace(f, image=img))
    return out


def config() -> PipelineConfig:
    return PipelineConfig(num_views=4, min_overlap=0.2, blur_ratio=0.6)


class FailingRestorer:
    """A backend that fails like a real one can (out of memory, bad checkpoint)."""

    name = "failing"
    device = "cpu"

    def restore(self, request: RestoreRequest) -> RestoreResult:
        raise RestorerError("CUDA out of memory (simulated)")


def test_decisions_gate_blurred_keyframes_only(frames):
    pipe = RestorationPipeline(config(), "passthrough")
    decisions = [pipe.ingest(f) for f in frames]
    targets = {d.frame.seq for d in decisions if d.is_target}
    keyframes = {d.frame.seq for d in decisions if d.is_keyframe}
    assert BLURRED <= keyframes, "the test frames must be keyframes to be gated"
    assert targets == BLURRED
    for d in decisions:
        if not d.is_keyframe:
            assert d.reason == "not_keyframe" and not d.is_target
        elif d.is_target:
            assert d.reason == "" and d.sharpness < 0.6 * d.reference_sharpness
        else:
            assert d.reason in ("sharp", "no_reference")
    counts = pipe.counts()
    assert counts["frames"] == len(frames) and counts["targets"] == len(BLURRED)
    assert counts["keyframes"] == len(keyframes)
    assert counts["passed.sharp"] + counts.get("passed.no_reference", 0) == len(keyframes) - len(BLURRED)


def test_fusion_pipeline_restores_targets_and_passes_the_rest(frames):
    pipe = RestorationPipeline(config(), "fusion")
    for f in frames:
        out = pipe.process(f)
        if f.seq in BLURRED:
            gt = f.extras["sharp"]
            err_before = np.abs(f.image.astype(float) - gt).mean()
            err_after = np.abs(out.image.astype(float) - gt).mean()
            print(f"\nframe {f.seq}: {out.reason or 'restored'}, views {len(out.views)}, "
                  f"overlaps {[round(o, 2) for o in out.overlaps]}, mean abs error {err_before:.2f} -> {err_after:.2f}")
            assert out.restored and out.reason == ""
            assert err_after < 0.8 * err_before
            assert out.views[0] is f and out.target_index == 0 and len(out.views) >= 2
            assert all(v.stamp_ns < f.stamp_ns for v in out.views[1:])  # causal
            assert out.sharpness_after[0] > out.sharpness_before[0]
            assert all(math.isnan(x) for x in out.sharpness_after[1:])
        else:
            assert not out.restored and out.image is f.image and out.reason in ("sharp", "not_keyframe", "no_reference")


def test_backend_error_degrades_to_passthrough(frames):
    pipe = RestorationPipeline(config(), FailingRestorer())
    outs = [pipe.process(f) for f in frames]
    failed = [o for o in outs if o.decision.is_target]
    assert {o.frame.seq for o in failed} == BLURRED
    for o in failed:
        assert not o.restored and o.reason == "backend_error"
        assert isinstance(o.error, RestorerError) and o.image is o.frame.image
        assert o.backend == "failing"
    assert pipe.counts()["backend_errors"] == len(BLURRED)
    # A per-call restorer overrides the pipeline's (the node's fallback path).
    d = RestorationPipeline(config(), FailingRestorer())
    for f in frames[:13]:
        dec = d.ingest(f)
    assert dec.is_target
    assert d.restore(dec, restorer=RestorationPipeline(config(), "passthrough").restorer).reason == "passthrough"


def test_fewer_views_are_the_first_picks_of_the_full_set(frames):
    """A node under load restores with fewer views: the greedy selection stops early,
    so a smaller set holds the full set's best partners, and the target is still restored."""
    pipe = RestorationPipeline(config(), "fusion")
    sizes = []
    for f in frames:
        dec = pipe.ingest(f)
        if not dec.is_target:
            continue
        full = pipe.select(dec)
        sizes.append(len(full.views))
        smaller = {n: pipe.select(dec, num_views=n) for n in (3, 2)}
        assert [len(smaller[n].views) for n in (3, 2)] == [min(3, sizes[-1]), 2]
        picks = {n: {v.stamp_ns for v in sel.views[1:]} for n, sel in [(4, full), *smaller.items()]}
        assert picks[2] <= picks[3] <= picks[4]
        assert smaller[2].score <= smaller[3].score <= full.score
        out = pipe.restore(dec, num_views=2)
        assert out.restored and out.views[0] is f and {v.stamp_ns for v in out.views[1:]} == picks[2]
    assert len(sizes) == len(BLURRED) and 4 in sizes, sizes  # the greedy stops once the view is covered


def test_keyframe_set_fields_fill_the_message(frames):
    pipe = RestorationPipeline(config(), "fusion")
    out = None
    for f in frames[:13]:
        out = pipe.process(f)
    assert out is not None and out.decision.is_target
    fields = out.keyframe_set_fields()
    store = make_typestore()
    ks_cls = store.types["sirdiff_ros/msg/KeyframeSet"]
    msg_fields = {f for f in ks_cls.__dataclass_fields__ if f != "__msgtype__" and not f.startswith("OUTCOME_")}
    assert set(fields) == msg_fields
    assert (ks_cls.OUTCOME_RESTORED, ks_cls.OUTCOME_PASSED_THROUGH) == (OUTCOME_RESTORED, OUTCOME_PASSED_THROUGH)
    assert fields["outcome"] == OUTCOME_RESTORED and fields["reason"] == ""
    assert fields["header"]["stamp"]["sec"] * 10**9 + fields["header"]["stamp"]["nanosec"] == out.frame.stamp_ns
    assert fields["views"][0]["is_target"] and fields["views"][0]["overlap"] == 1.0
    q = fields["views"][1]["pose"]["orientation"]
    assert abs(q["x"] ** 2 + q["y"] ** 2 + q["z"] ** 2 + q["w"] ** 2 - 1.0) < 1e-9
    # Build the rosbags message from the dict and serialise it: the evaluator's path.
    t = store.types
    Time, Header = t["builtin_interfaces/msg/Time"], t["std_msgs/msg/Header"]
    Pose, Point, Quat = t["geometry_msgs/msg/Pose"], t["geometry_msgs/msg/Point"], t["geometry_msgs/msg/Quaternion"]

    def header(h):
        return Header(stamp=Time(**h["stamp"]), frame_id=h["frame_id"])

    views = [
        t["sirdiff_ros/msg/ViewInfo"](header=header(v["header"]),
                                      pose=Pose(position=Point(**v["pose"]["position"]),
                                                orientation=Quat(**v["pose"]["orientation"])),
                                      overlap=v["overlap"], sharpness_before=v["sharpness_before"],
                                      sharpness_after=v["sharpness_after"], is_target=v["is_target"])
        for v in fields["views"]
    ]
    msg = ks_cls(**{**fields, "header": header(fields["header"]), "target_stamp": Time(**fields["target_stamp"]),
                    "views": views})
    raw = store.serialize_cdr(msg, "sirdiff_ros/msg/KeyframeSet")
    back = store.deserialize_cdr(raw, "sirdiff_ros/msg/KeyframeSet")
    assert len(back.views) == len(out.views) and back.backend == "fusion"
    # A passed-through frame fills the same fields with one view.
    p = pipe.process(frames[13]).keyframe_set_fields()
    assert p["outcome"] == OUTCOME_PASSED_THROUGH and len(p["views"]) == 1 and p["reason"]


def test_ingest_and_restore_from_two_threads(frames):
    pipe = RestorationPipeline(config(), "fusion")
    decisions: list = []
    outcomes: list = []
    errors: list = []
    lock = threading.Condition()

    def ingest() -> None:
        for f in frames:
            d = pipe.ingest(f)
            with lock:
                decisions.append(d)
                lock.notify()
        with lock:
            decisions.append(None)
            lock.notify()

    def worker() -> None:
        i = 0
        try:
            while True:
                with lock:
                    while len(decisions) <= i:
                        lock.wait()
                    d = decisions[i]
                i += 1
                if d is None:
                    return
                outcomes.append(pipe.restore(d))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ingest), threading.Thread(target=worker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert [o.frame.seq for o in outcomes] == [f.seq for f in frames]
    assert {o.frame.seq for o in outcomes if o.restored} == BLURRED
    # Causality holds even though the buffer grew while restoring.
    for o in outcomes:
        assert all(v.stamp_ns < o.frame.stamp_ns for v in o.views[1:])


def test_gate_quantile_is_numpys_linear_quantile_bit_for_bit():
    rng = np.random.default_rng(11)
    for i in range(3000):
        n = int(rng.integers(1, 25))
        values = rng.lognormal(0.0, 2.0, n) if i % 2 else rng.integers(0, 4, n).astype(np.float64)  # ties too
        q = (0.0, 0.25, 0.5, 0.75, 1.0)[i % 5] if i % 3 else float(rng.random())
        assert linear_quantile(values.tolist(), q) == float(np.quantile(values, q))
    with pytest.raises(ValueError):
        linear_quantile([], 0.5)


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="blur_ratio"):
        PipelineConfig(blur_ratio=1.5)
    with pytest.raises(ValueError, match="num_views"):
        PipelineConfig(num_views=0)
    with pytest.raises(ValueError, match="min_overlap"):
        PipelineConfig(min_overlap=2.0)
    with pytest.raises(ValueError, match="unknown restorer"):
        RestorationPipeline(PipelineConfig(), "no-such-backend")


def test_known_exposure_gates_by_camera_motion():
    """With the exposure time the camera's motion predicts the blur: blurred
    keyframes are caught whatever the scene content, still ones are passed."""
    frames = list(generate_sequence(1, 80, 160, 120, burst_rate=1.0))
    blur = {f.seq: f.extras["blur_px"] for f in frames}
    pipe = RestorationPipeline(PipelineConfig(exposure_s=frames[0].extras["exposure_s"], motion_blur_px=2.0), "passthrough")
    decisions = [pipe.ingest(f) for f in frames]
    kf = [d for d in decisions if d.is_keyframe and d.frame.seq > 0]
    pred = np.array([d.predicted_blur_px for d in kf])
    true = np.array([blur[d.frame.seq] for d in kf])
    corr = float(np.corrcoef(pred, true)[0, 1])
    caught = [d.is_target for d in kf if blur[d.frame.seq] > 3.0]
    passed = [not d.is_target for d in kf if blur[d.frame.seq] < 1.0]
    print(f"\npredicted vs generated blur over {len(kf)} keyframes: correlation {corr:.3f}; "
          f"blur > 3 px caught {sum(caught)}/{len(caught)}; blur < 1 px passed {sum(passed)}/{len(passed)}")
    score_only = RestorationPipeline(PipelineConfig(), "passthrough")
    caught_by_score = [score_only.ingest(f) for f in frames]
    n_score = sum(d.is_target for d in caught_by_score if d.is_keyframe and blur[d.frame.seq] > 3.0)
    print(f"score gate alone: blur > 3 px caught {n_score}/{len(caught)}")
    assert corr > 0.8
    assert len(caught) >= 8 and np.mean(caught) >= 0.9 and sum(caught) > n_score
    assert len(passed) >= 8 and np.mean(passed) >= 0.85
    # Unknown exposure: no prediction, the score gate alone.
    d = RestorationPipeline(PipelineConfig(), "passthrough").ingest(frames[5])
    assert math.isnan(d.predicted_blur_px)


def test_recent_non_keyframes_are_partner_candidates_and_carry_their_motion():
    from sirdiff_ros.core.deblur import EXPOSURE_MOTION_KEY
    from sirdiff_ros.core.keyframes import KeyframeConfig

    seq = list(generate_sequence(1_000_100, 14, 160, 120, burst_rate=1.0))
    # Few keyframes: one every 0.35 s at most, whatever the motion.
    kf = KeyframeConfig(min_translation=50.0, min_rotation_deg=170.0, max_time_gap_s=0.35)
    exposure = seq[0].extras["exposure_s"]
    ring = RestorationPipeline(PipelineConfig(keyframe=kf, exposure_s=exposure, partner_ring=8), "passthrough")
    plain = RestorationPipeline(PipelineConfig(keyframe=kf, exposure_s=exposure, partner_ring=0), "passthrough")
    keyframe_stamps, extra_partners = set(), 0
    for f in seq:
        d, d0 = ring.ingest(f), plain.ingest(dataclasses.replace(f, extras=dict(f.extras)))
        if d.is_keyframe:
            keyframe_stamps.add(f.stamp_ns)
            sel, sel0 = ring.select(d), plain.select(d0)
            assert {v.stamp_ns for v in sel0.views[1:]} <= keyframe_stamps
            extra_partners += sum(v.stamp_ns not in keyframe_stamps for v in sel.views[1:])
            # Every partner (keyframe or ring frame) carries the motion it was exposed with.
            assert all(EXPOSURE_MOTION_KEY in v.extras for v in sel.views[1:])
    assert extra_partners > 0
    with pytest.raises(ValueError, match="partner_ring"):
        PipelineConfig(partner_ring=-1)


def test_blurred_frames_between_keyframes_are_targets_too():
    """In stream mode a blurred frame between two restored keyframes would reach SLAM blurred:
    every posed frame goes through the gate, unless ``restore_non_keyframes`` is off."""
    seq = list(generate_sequence(1_000_007, 75, 160, 120, preset="slam"))
    exposure = seq[0].extras["exposure_s"]
    every = RestorationPipeline(PipelineConfig(exposure_s=exposure), "fusion")
    keyframes_only = RestorationPipeline(PipelineConfig(exposure_s=exposure, restore_non_keyframes=False), "passthrough")
    restored_non_keyframes, blurred_non_keyframes = 0, 0
    for f in seq:
        d = every.ingest(f)
        d0 = keyframes_only.ingest(dataclasses.replace(f, extras=dict(f.extras)))
        assert d.is_keyframe == d0.is_keyframe
        if not d0.is_keyframe:
            assert not d0.is_target and d0.reason == "not_keyframe"
        if d.is_keyframe:
            continue
        if f.extras["blur_px"] > every.config.motion_blur_px:
            blurred_non_keyframes += 1
            assert d.is_target, f"frame {f.seq}: {f.extras['blur_px']:.1f} px of blur passed ({d.gate})"
            out = every.restore(d)
            # Partners come from before the frame; the restored image replaces it in the stream.
            assert all(v.stamp_ns < f.stamp_ns for v in out.views[1:])
            restored_non_keyframes += out.restored
        elif f.extras["blur_px"] < 1.0:
            assert not d.is_target and d.reason == "not_keyframe"
    assert blurred_non_keyframes >= 2 and restored_non_keyframes == blurred_non_keyframes
    assert every.counts()["targets"] > keyframes_only.counts()["targets"]

