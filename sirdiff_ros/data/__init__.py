"""Data: the synthetic scene generator, dataset readers, bags and the real-frame degrader.

ROS-free (rosbags only). The public generators live in
:mod:`sirdiff_ros.data.synth`; the split convention in
:mod:`sirdiff_ros.data.textures`.
"""

from __future__ import annotations

from .synth import SynthConfig, generate_sequence, sample_view_set
from .textures import HELDOUT_SEED_START, heldout_seeds, is_heldout_seed, training_seeds

__all__ = [
    "SynthConfig",
    "generate_sequence",
    "sample_view_set",
    "HELDOUT_SEED_START",
    "is_heldout_seed",
    "training_seeds",
    "heldout_seeds",
]
