"""The shared alignment (sirdiff_ros.core.alignment): its frame cache and stage timings, on rendered view sets."""

from __future__ import annotations

import numpy as np
import pytest

from sirdiff_ros.core.alignment import AlignmentConfig, FrameCache, align_partners
from sirdiff_ros.core.profiling import collect_stages, stage
from sirdiff_ros.core.restorers import RestoreRequest
from sirdiff_ros.core.restorers.fusion import FusionRestorer
from sirdiff_ros.data.synth import sample_view_set


@pytest.fixture(scope="module")
def views():
    frames = sample_view_set(2, 5, 192, 144)
    return [frames[i] for i in np.argsort([-f.extras["blur_strength"] for f in frames], kind="stable")]


def test_a_warm_frame_cache_changes_no_output(views):
    """Two targets sharing partners, restored in a row by one restorer (its cache
    warm for the second) and each by a fresh one: identical images and info."""
    stream = FusionRestorer()
    requests = [RestoreRequest(views[:4], [0]), RestoreRequest([views[1], views[0], *views[2:4]], [0])]
    warm = [stream.restore(r).for_index(0) for r in requests]
    assert len(stream.cache._items) >= 4  # the partners' work-scale images were kept
    for req, got in zip(requests, warm):
        cold = FusionRestorer().restore(req).for_index(0)
        assert np.array_equal(got.image, cold.image)
        assert got.restored == cold.restored and got.info == cold.info


def test_frame_cache_is_keyed_by_array_identity_bounded_and_read_only():
    cache = FrameCache(capacity=2)
    a = np.full((8, 8, 3), 10, np.uint8)
    calls = []

    def make(x):
        calls.append(1)
        return x.astype(np.float32) * 2

    first = cache.get(a, "k", lambda: make(a))
    assert cache.get(a, "k", lambda: make(a)) is first and len(calls) == 1
    assert not first.flags.writeable  # shared with later targets: nobody may write into it
    same_values = a.copy()  # equal content, another array: another entry
    cache.get(same_values, "k", lambda: make(same_values))
    assert len(calls) == 2
    b = np.zeros((8, 8, 3), np.uint8)
    cache.get(b, "k", lambda: make(b))  # a third array: the least recently used (a) goes
    assert len(cache._items) == 2
    cache.get(a, "k", lambda: make(a))
    assert len(calls) == 4
    with pytest.raises(ValueError):
        FrameCache(capacity=0)


def test_align_partners_results_do_not_depend_on_the_cache(views):
    cfg = AlignmentConfig()
    cache = FrameCache()
    align_partners(views[1], views[2:4], cfg, cache)  # fills the cache with views[2:4]
    with_cache, s1, e1, _ = align_partners(views[0], views[1:4], cfg, cache)
    without, s2, e2, _ = align_partners(views[0], views[1:4], cfg)
    assert (s1, e1) == (s2, e2)
    for a, b in zip(with_cache, without):
        assert np.array_equal(a.flow, b.flow) and np.array_equal(a.trust, b.trust) and a.method == b.method


def test_stage_times_are_collected_only_when_asked(views):
    restorer = FusionRestorer()
    with collect_stages() as times:
        restorer.restore(RestoreRequest(views[:4], [0]))
    for name in ("select", "align.prepare", "align.kernel", "align.checks", "weigh", "blend"):
        assert times.get(name, 0.0) > 0.0, (name, times)
    assert "align.reprojection" in times  # the rendered views carry depth and poses
    # Nested collections are separate; outside one, marks record nothing.
    with collect_stages() as outer:
        with stage("a"):
            with collect_stages() as inner:
                with stage("b"):
                    pass
    assert set(outer) == {"a"} and set(inner) == {"b"}
    with stage("nowhere"):
        pass
    assert "nowhere" not in times


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("channels", [0, 1, 3])
def test_remap_linear_is_opencvs_bilinear_remap_for_every_layout(dtype, channels):
    # Colour uint8 images are remapped padded to 4 channels: the values must not change.
    import cv2

    from sirdiff_ros.core.remap import remap_linear

    rng = np.random.default_rng(channels)
    h, w = 61, 83
    shape = (h, w) if channels == 0 else (h, w, channels)
    image = (rng.random(shape) * 255).astype(dtype)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    maps = {
        "smooth": np.stack([gx + 3.3 + 0.01 * gy, gy - 2.7 + 0.02 * gx], -1),
        "scattered": np.stack([rng.random((h, w)) * w, rng.random((h, w)) * h], -1),
        "past the borders": np.stack([gx * 1.7 - 20.0, gy * 1.5 - 30.0], -1),
    }
    for name, m in maps.items():
        m = m.astype(np.float32)
        mx, my = np.ascontiguousarray(m[..., 0]), np.ascontiguousarray(m[..., 1])
        for args in ((m, None), (mx, my)):
            expected = cv2.remap(image, args[0], args[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            got = remap_linear(image, *args)
            assert got.dtype == image.dtype and got.shape == expected.shape, name
            assert np.array_equal(got, expected), name
