"""Which compute device a backend runs on: ``auto`` resolved once, with the reason.

``auto`` picks CUDA, then Apple's MPS, then the CPU, among the devices the
backend supports. Backends that run on the CPU only never import torch here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

__all__ = ["DEVICE_PATTERN", "DeviceChoice", "DeviceError", "resolve_device"]

# cpu, auto, cuda, cuda:N, mps: what the ``device`` parameter accepts.
DEVICE_PATTERN = re.compile(r"^(cpu|auto|cuda|cuda:\d+|mps)$")


class DeviceError(ValueError):
    """The requested device is unknown, unsupported by the backend, or not present."""


@dataclass(frozen=True)
class DeviceChoice:
    """The device to use and, for ``auto``, why it was chosen."""

    device: str
    requested: str
    why: str = ""

    def describe(self) -> str:
        if self.requested == "auto":
            return f"device auto -> {self.device} ({self.why})"
        return f"device {self.device}"


def _present(kind: str) -> bool:
    import torch

    if kind == "cuda":
        return bool(torch.cuda.is_available())
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(requested: str, supported: Sequence[str] = ("cuda", "mps", "cpu")) -> DeviceChoice:
    """The device for ``requested`` (``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``).

    ``supported`` lists the device kinds the backend runs on, in order of
    preference for ``auto``. Raises :class:`DeviceError` for an unknown or
    unsupported device, or an accelerator that is not present.
    """
    requested = str(requested)
    if not DEVICE_PATTERN.match(requested):
        raise DeviceError(f"device must be cpu, cuda, cuda:N, mps or auto; got {requested!r}")
    if requested == "auto":
        missing: list[str] = []
        for kind in supported:
            if kind == "cpu" or _present(kind):
                why = "; ".join([*missing, f"{kind} first available"]) if missing else f"{kind} first available"
                if kind == "cpu" and len(supported) == 1:
                    why = "the backend runs on the CPU only"
                return DeviceChoice(kind, requested, why)
            missing.append(f"no {kind.upper()}")
        raise DeviceError(f"none of the backend's devices ({', '.join(supported)}) is available")
    kind = requested.split(":")[0]
    if kind not in supported:
        runs_on = "the CPU only" if tuple(supported) == ("cpu",) else ", ".join(supported)
        raise DeviceError(f"this backend runs on {runs_on}; got device {requested!r}")
    if kind != "cpu" and not _present(kind):
        raise DeviceError(f"device {requested!r} requested but {kind.upper()} is not available")
    return DeviceChoice(requested, requested)
