"""Poses: the unchecked constructors give what the checked one gives, and bad input is still refused."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sirdiff_ros.core.geometry import GeometryError, Pose


def _random_pose(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    q = rng.normal(size=4)
    return rng.normal(scale=5.0, size=3), q / np.linalg.norm(q)


def test_poses_built_without_checks_equal_checked_poses_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        a, b = Pose.from_quaternion(*_random_pose(rng)), Pose.from_quaternion(*_random_pose(rng))
        for pose in (a, b, a.inverse(), a @ b, b.relative_to(a), (a @ b).inverse() @ a):
            checked = Pose(pose.rotation, pose.translation)  # runs __post_init__'s checks
            assert checked.rotation.dtype == pose.rotation.dtype == np.float64 and pose.rotation.shape == (3, 3)
            assert pose.translation.dtype == np.float64 and pose.translation.shape == (3,)
            assert checked.rotation.tobytes() == np.ascontiguousarray(pose.rotation).tobytes()
            assert checked.translation.tobytes() == pose.translation.tobytes()
    t, q = _random_pose(rng)
    assert Pose.from_quaternion(t.tolist(), q.tolist()).matrix().tobytes() == Pose.from_quaternion(t, q).matrix().tobytes()


def test_bad_translations_and_quaternions_are_refused() -> None:
    for t in ([math.nan, 0, 0], [0, math.inf, 0]):
        with pytest.raises(GeometryError, match="non-finite"):
            Pose.from_quaternion(t, [0, 0, 0, 1])
    for q, why in (([0, 0, 0, 0], "zero norm"), ([0.5, 0.5, 0.5, 0.9], "not unit"), ([math.nan, 0, 0, 1], "non-finite")):
        with pytest.raises(GeometryError, match=why):
            Pose.from_quaternion([0, 0, 0], q)
    with pytest.raises(GeometryError, match="proper rotation"):
        Pose(np.diag([1.0, 1.0, -1.0]), np.zeros(3))
