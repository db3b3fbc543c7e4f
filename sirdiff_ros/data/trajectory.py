"""Smooth 6-DoF camera trajectories with configurable linear and angular speed.

Position: a sum of sinusoids per axis (random frequencies and phases) kept
inside the scene's camera region, re-timed so the *mean* linear speed equals
``speed`` m/s. Orientation: a heading that wanders (yaw, pitch, roll as sums
of sinusoids whose RMS angular rate is ``angular_speed`` rad/s) plus sparse
*rotation bursts*: quick smooth turns with peak rate ``burst_speed`` rad/s,
the motion that blurs SLAM keyframes while frames between bursts stay sharp.

Poses are exact analytic functions of time (seconds); world z is up and the
camera uses optical axes (x right, y down, z forward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.geometry import Pose, _rotation_exp

__all__ = ["TrajectoryConfig", "SmoothTrajectory", "look_rotation", "BASE_ROTATION"]

# Optical camera looking along world +x with world z up: columns are the
# camera's x (right = -y_w), y (down = -z_w), z (forward = +x_w) in world.
BASE_ROTATION = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def look_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R_world_cam for a camera turned ``yaw`` about world z, then ``pitch`` (up +) and ``roll`` about its own axes."""
    # Rotating the optical frame by +pitch about its x (right) axis tilts z (forward) towards -y (up).
    tilt = _rotation_exp(np.array([pitch, 0.0, 0.0]))
    return _rz(yaw) @ BASE_ROTATION @ tilt @ _rotation_exp(np.array([0.0, 0.0, roll]))


@dataclass(frozen=True)
class TrajectoryConfig:
    speed: float = 0.6  # mean linear speed, m/s
    angular_speed: float = 0.4  # RMS angular rate of the wandering heading, rad/s
    burst_rate: float = 0.4  # rotation bursts per second (Poisson)
    burst_speed: float = 3.0  # peak angular rate of a burst, rad/s
    burst_angle: float = 0.6  # mean |angle| of a burst, rad
    burst_start_s: float = 0.0  # no burst starts before this time, s (a SLAM system initialises first)

    def __post_init__(self) -> None:
        for name in ("speed", "angular_speed", "burst_rate", "burst_speed", "burst_angle", "burst_start_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite non-negative number, got {v}")


class SmoothTrajectory:
    """Deterministic trajectory for ``seed`` inside ``region = (min xyz, max xyz)``."""

    def __init__(self, seed: int, region: tuple[np.ndarray, np.ndarray], config: TrajectoryConfig,
                 duration_s: float = 600.0) -> None:
        rng = np.random.default_rng([seed, 0x7EA1])
        self.config = config
        lo, hi = (np.asarray(r, float) for r in region)
        self._centre = (lo + hi) / 2
        half = (hi - lo) / 2
        # Position curve p(tau): 3 sinusoids per axis, amplitudes summing below the half extent.
        self._pf = rng.uniform(0.05, 0.25, size=(3, 3))  # (axis, k) Hz in curve time
        self._pp = rng.uniform(0, 2 * np.pi, size=(3, 3))
        w = rng.uniform(0.3, 1.0, size=(3, 3))
        self._pa = half[:, None] * 0.95 * w / w.sum(axis=1, keepdims=True)
        # Re-time: mean |dp/dtau| over a long window -> tau = t * speed / mean.
        taus = np.linspace(0, 200, 4001)
        vel = self._dpos(taus)
        mean_rate = float(np.linalg.norm(vel, axis=0).mean())
        self._time_scale = config.speed / mean_rate if mean_rate > 0 else 0.0
        # Heading: yaw / pitch / roll sinusoids sharing the RMS rate (70 / 20 / 10 % of its square).
        self._yaw0 = float(rng.uniform(-np.pi, np.pi))
        self._rf = rng.uniform(0.08, 0.35, size=(3, 2))
        self._rp = rng.uniform(0, 2 * np.pi, size=(3, 2))
        shares = np.array([0.7, 0.2, 0.1])
        caps = np.array([np.inf, 0.45, 0.25])  # pitch / roll amplitude limits, rad
        amp = np.zeros((3, 2))
        for ax in range(3):
            rate = config.angular_speed * math.sqrt(shares[ax] / 2)  # per sinusoid
            for k in range(2):
                omega = 2 * np.pi * self._rf[ax, k]
                a = rate * math.sqrt(2) / omega
                if a > caps[ax]:  # keep the angle bounded: faster, smaller swings
                    self._rf[ax, k] = rate * math.sqrt(2) / caps[ax] / (2 * np.pi)
                    a = caps[ax]
                amp[ax, k] = a
        self._ra = amp
        # Bursts: start times and signed yaw angles (quick pans, the common SLAM blur).
        n = int(rng.poisson(config.burst_rate * duration_s)) if config.burst_rate > 0 else 0
        self._bt = np.sort(rng.uniform(min(config.burst_start_s, duration_s), duration_s, size=n))
        self._bang = rng.choice([-1.0, 1.0], size=n) * rng.uniform(0.5, 1.5, size=n) * config.burst_angle
        # Raised-cosine rate profile: peak rate = 2 * angle / duration.
        self._bdur = np.where(config.burst_speed > 0, 2 * np.abs(self._bang) / max(config.burst_speed, 1e-9), 0.0)
        # One pan at a time: a burst starts no earlier than the previous one ends.
        for j in range(1, n):
            self._bt[j] = max(self._bt[j], self._bt[j - 1] + self._bdur[j - 1])

    def _dpos(self, tau: np.ndarray) -> np.ndarray:
        om = 2 * np.pi * self._pf
        return np.einsum("ak,akt->at", self._pa * om, np.cos(om[..., None] * tau + self._pp[..., None]))

    def position(self, t: float) -> np.ndarray:
        tau = t * self._time_scale
        om = 2 * np.pi * self._pf
        return self._centre + (self._pa * np.sin(om * tau + self._pp)).sum(axis=1)

    def _angles(self, t: float) -> np.ndarray:
        ang = (self._ra * np.sin(2 * np.pi * self._rf * t + self._rp)).sum(axis=1)
        ang[0] += self._yaw0
        # Completed and in-progress bursts add their (partial) angle.
        i = int(np.searchsorted(self._bt, t))
        if i:
            dur = np.maximum(self._bdur[:i], 1e-12)
            x = np.clip((t - self._bt[:i]) / dur, 0.0, 1.0)
            ang[0] += float(np.sum(self._bang[:i] * (x - np.sin(2 * np.pi * x) / (2 * np.pi))))
        return ang

    def pose(self, t: float) -> Pose:
        """T_world_cam at time ``t`` seconds."""
        yaw, pitch, roll = self._angles(t)
        pitch = float(np.clip(pitch, -1.2, 1.2))
        return Pose(look_rotation(yaw, pitch, roll), self.position(t))
