"""The restorer interface every backend implements.

A restorer receives one *view set*: the target keyframe plus the partner views
chosen by :func:`sirdiff_ros.core.selection.select_views`, in the documented
view order, and returns restored images for the requested members.
Backends are registered by name (``passthrough``, ``fusion``, ``sirdiff``,
``sirdiff-single``) and created with :func:`create_restorer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from ..frame import Frame

__all__ = [
    "RestoreRequest",
    "RestoredView",
    "RestoreResult",
    "Restorer",
    "RestorerError",
    "register_restorer",
    "create_restorer",
    "available_restorers",
]


class RestorerError(RuntimeError):
    """A backend failed to build or to restore (bad checkpoint, OOM, ...)."""


@dataclass
class RestoreRequest:
    """One view set to restore jointly.

    ``views`` are ordered as :func:`select_views` documents; ``targets`` are
    indices into ``views`` whose restored images are wanted (usually ``[0]``
    or ``[index of the target]``). ``overlaps[i]`` is the estimated overlap of
    view i with the target (1.0 for the target itself).
    """

    views: Sequence[Frame]
    targets: Sequence[int]
    overlaps: Sequence[float] | None = None


@dataclass
class RestoredView:
    """Restored image for one requested member, with per-view metadata."""

    index: int  # index into RestoreRequest.views
    image: np.ndarray  # same dtype/shape as the input image
    restored: bool  # False: the original was returned (and why in ``reason``)
    reason: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class RestoreResult:
    views: list[RestoredView]
    backend: str
    device: str
    latency_s: float

    def for_index(self, index: int) -> RestoredView:
        for v in self.views:
            if v.index == index:
                return v
        raise KeyError(index)


@runtime_checkable
class Restorer(Protocol):
    """What the pipeline, the node and the evaluator call."""

    name: str
    device: str
    # Optional class attribute ``deblurs_views`` (default True): whether the
    # pipeline deblurs each view by its own motion before calling the backend.
    # Optional class attribute ``parallel_calls`` (default False): whether
    # ``restore`` may run in several threads at once (the node's worker_threads).

    def restore(self, request: RestoreRequest) -> RestoreResult:
        """Restore ``request.targets``; raise :class:`RestorerError` on failure."""
        ...


_REGISTRY: dict[str, Callable[..., Restorer]] = {}


def register_restorer(name: str) -> Callable[[Callable[..., Restorer]], Callable[..., Restorer]]:
    """Class/factory decorator: make a backend creatable by ``name``."""

    def deco(factory: Callable[..., Restorer]) -> Callable[..., Restorer]:
        _REGISTRY[name] = factory
        return factory

    return deco


def available_restorers() -> list[str]:
    _import_builtin_backends()
    return sorted(_REGISTRY)


def create_restorer(name: str, **options: Any) -> Restorer:
    """Create a backend by name; ``options`` are backend-specific keyword args
    (e.g. ``device``, ``checkpoint``, ``steps``). Unknown names raise ValueError."""
    _import_builtin_backends()
    if name not in _REGISTRY:
        raise ValueError(f"unknown restorer backend {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**options)


def _import_builtin_backends() -> None:
    # Imported lazily so that `passthrough` users never import torch.
    import importlib

    for mod in ("passthrough", "baselines", "fusion", "sirdiff"):
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as exc:  # backend not built yet / optional deps missing
            if exc.name and exc.name.startswith(__package__):
                continue
            raise
