"""Training data from real photographs, and fine-tuning a saved refinement head."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def test_real_photo_view_sets_are_deblurred_registered_targets(real_images: Path) -> None:
    from sirdiff_ros.training.data import real_photo_view_sets

    sets = list(real_photo_view_sets(3, 12, 3, 320, 240, seed=1, root=real_images))
    assert sets
    for sharp, degraded in sets:
        assert sharp.shape == degraded.shape and sharp.shape[0] == 3 and sharp.shape[1:] == (240, 320, 3)
        assert sharp.dtype == degraded.dtype == np.uint8
        # The target (view 0) is a gate target: blurred, then deblurred; never the truth itself.
        assert not np.array_equal(sharp[0], degraded[0])
