"""Keyframe admission, eviction, byte bound and thread safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sirdiff_ros.core.frame import Frame
from sirdiff_ros.core.geometry import CameraIntrinsics, Pose, _rotation_exp
from sirdiff_ros.core.keyframes import KEYFRAME_OVERHEAD_BYTES, KeyframeBuffer, KeyframeConfig, keyframe_nbytes
from sirdiff_ros.core.selection import select_views
from sirdiff_ros.data.synth import generate_sequence

K = CameraIntrinsics(50.0, 50.0, 31.5, 23.5, 64, 48)
MS = 1_000_000


def frame(stamp_ms: int, x: float = 0.0, yaw_deg: float = 0.0, depth: bool = False, **extras) -> Frame:
    rng = np.random.default_rng(stamp_ms)
    pose = Pose(_rotation_exp(np.array([0.0, np.radians(yaw_deg), 0.0])), np.array([x, 0.0, 0.0]))
    d = np.full((48, 64), 2.0, np.float32) if depth else None
    img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    return Frame(img, stamp_ms * MS, K, pose, d, seq=stamp_ms, extras=dict(extras))


def test_admission_rules_in_documented_order():
    buf = KeyframeBuffer(KeyframeConfig(min_translation=0.1, min_rotation_deg=5.0, min_time_gap_s=0.05,
                                        max_time_gap_s=1.0))
    no_pose = frame(0)
    no_pose.pose = None
    reasons = [
        buf.consider(no_pose).reason,
        buf.consider(frame(0)).reason,  # first
        buf.consider(frame(0, x=1.0)).reason,  # same stamp
        buf.consider(frame(20, x=1.0)).reason,  # too soon even though it moved
        buf.consider(frame(100, x=0.05)).reason,  # moved too little
        buf.consider(frame(200, x=0.15)).reason,
        buf.consider(frame(300, x=0.15, yaw_deg=6)).reason,
        buf.consider(frame(1400, x=0.15, yaw_deg=6)).reason,  # nothing moved, but 1.1 s passed
    ]
    assert reasons == ["no_pose", "first", "stamp_backwards", "min_time_gap", "small_motion", "translation",
                       "rotation", "max_time_gap"]
    assert len(buf) == 4
    snap = buf.snapshot()
    assert list(snap.stamps_ns) == [0, 200 * MS, 300 * MS, 1400 * MS]
    assert [k.index for k in snap.keyframes] == [0, 1, 2, 3]
    assert all(np.isfinite(snap.sharpness)) and snap.sharpness.min() > 0


def test_recent_sharpness_is_the_newest_keyframes_before_an_index():
    buf = KeyframeBuffer(KeyframeConfig(max_keyframes=6, min_translation=0.01))
    for i in range(9):
        assert buf.consider(frame(100 * i, x=0.1 * i), sharpness=float(i)).admitted
    # Keyframes 3..8 are held (6 at most), oldest first.
    assert buf.recent_sharpness(4).tolist() == [5.0, 6.0, 7.0, 8.0]
    assert buf.recent_sharpness(4, before_index=7).tolist() == [3.0, 4.0, 5.0, 6.0]
    assert buf.recent_sharpness(10, before_index=5).tolist() == [3.0, 4.0]
    assert buf.recent_sharpness(3, before_index=3).size == 0
    assert buf.recent_sharpness(0).size == 0


def test_a_snapshot_merged_with_other_frames_is_the_snapshot_of_all_in_stamp_order():
    """Selection merges the buffer with recent frames it did not admit (the partner ring)."""
    from sirdiff_ros.core.keyframes import Keyframe, KeyframeSnapshot

    buf = KeyframeBuffer(KeyframeConfig(max_keyframes=5, min_translation=0.1))
    ring = []
    for i in range(12):
        f = frame(100 * i, x=0.07 * i, yaw_deg=2.0 * i)
        adm = buf.consider(f, sharpness=float(i))
        if not adm.admitted:
            ring.append(Keyframe(f, float(i), -1, f.image.nbytes))
    snap = buf.snapshot()
    assert len(snap) == 5 and len(ring) >= 3  # evictions happened: the buffer's ring arrays wrapped
    merged = snap.merged(ring)
    expected = KeyframeSnapshot.build(sorted([*snap.keyframes, *ring], key=lambda k: k.stamp_ns))
    assert merged.keyframes == expected.keyframes and merged.nbytes == expected.nbytes
    for name in ("sharpness", "stamps_ns", "positions"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(expected, name))
    for name in ("R_cw", "t_cw", "k"):
        np.testing.assert_array_equal(getattr(merged.cameras, name), getattr(expected.cameras, name))
    assert snap.merged([]) is snap


def test_eviction_is_oldest_first_and_bounded_by_count():
    buf = KeyframeBuffer(KeyframeConfig(max_keyframes=3, min_translation=0.01))
    evicted = []
    for i in range(6):
        adm = buf.consider(frame(100 * i, x=0.1 * i))
        assert adm.admitted
        evicted += [k.stamp_ns // MS for k in adm.evicted]
    assert evicted == [0, 100, 200]
    assert [k.stamp_ns // MS for k in buf.snapshot().keyframes] == [300, 400, 500]


def test_byte_bound_counts_image_depth_and_drops_extras():
    f = frame(0, depth=True, sharp=np.zeros((48, 64, 3), np.uint8), note="kept")
    per = 64 * 48 * 3 + 64 * 48 * 4 + KEYFRAME_OVERHEAD_BYTES
    assert keyframe_nbytes(f) == per
    buf = KeyframeBuffer(KeyframeConfig(max_keyframes=100, max_bytes=3 * per + 10, min_translation=0.01))
    for i in range(5):
        buf.consider(frame(100 * i, x=0.1 * i, depth=True, sharp=np.zeros((48, 64, 3), np.uint8), note="kept"))
        assert buf.nbytes <= 3 * per + 10
    assert len(buf) == 3 and buf.nbytes == 3 * per
    kept = buf.snapshot().keyframes[-1].frame
    assert "sharp" not in kept.extras and kept.extras["note"] == "kept"
    # One frame over the whole budget is refused, not admitted-then-evicted.
    tiny = KeyframeBuffer(KeyframeConfig(max_bytes=1000))
    adm = tiny.consider(frame(0))
    assert not adm.admitted and adm.reason == "too_large" and len(tiny) == 0


def test_stated_cost_of_a_640x480_keyframe():
    f = Frame(np.zeros((480, 640, 3), np.uint8), 0, CameraIntrinsics(500, 500, 319.5, 239.5, 640, 480),
              Pose.identity(), np.zeros((480, 640), np.float32))
    assert keyframe_nbytes(f) == 921_600 + 1_228_800 + KEYFRAME_OVERHEAD_BYTES


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="max_keyframes"):
        KeyframeConfig(max_keyframes=0)
    with pytest.raises(ValueError, match="max_time_gap_s"):
        KeyframeConfig(min_time_gap_s=2.0, max_time_gap_s=1.0)
    with pytest.raises(ValueError, match="min_translation"):
        KeyframeConfig(min_translation=float("nan"))


def test_concurrent_ingest_and_selection_never_corrupt_state():
    frames = list(generate_sequence(7, 60, 48, 36, subframes=1))
    cfg = KeyframeConfig(max_keyframes=12, min_translation=0.0, min_rotation_deg=0.0,
                         max_bytes=12 * keyframe_nbytes(frames[0], keep_extras=False))
    buf = KeyframeBuffer(cfg)
    errors: list[BaseException] = []
    done = threading.Event()
    selections = 0

    def ingest() -> None:
        try:
            for rep in range(4):  # replay with shifted stamps to keep admitting
                for f in frames:
                    g = Frame(f.image, f.stamp_ns + rep * 10**10, f.intrinsics, f.pose, f.depth, seq=f.seq)
                    buf.consider(g, sharpness=1.0 + (f.seq % 5))
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
        finally:
            done.set()

    def select() -> None:
        nonlocal selections
        try:
            while not done.is_set() or selections < 5:
                snap = buf.snapshot()
                assert len(snap) <= cfg.max_keyframes and snap.nbytes <= cfg.max_bytes
                assert np.all(np.diff(snap.stamps_ns) > 0)
                assert len(snap.sharpness) == len(snap.keyframes) == len(snap.cameras)
                target = snap.keyframes[-1].frame if len(snap) else frames[0]
                sel = select_views(target, snap, 4)
                assert all(k.stamp_ns < target.stamp_ns for k in sel.partners)
                selections += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ingest), threading.Thread(target=select)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert selections >= 5
    assert len(buf) == cfg.max_keyframes
    assert buf.nbytes == sum(k.nbytes for k in buf.snapshot().keyframes)
    idx = [k.index for k in buf.snapshot().keyframes]
    assert idx == list(range(idx[0], idx[0] + len(idx)))  # the newest, contiguous, in order
