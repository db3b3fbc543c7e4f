"""The ``passthrough`` backend: returns every requested view unchanged.

Useful as the baseline in evaluation, for dry runs of the node, and as what
the pipeline degrades to when a real backend fails.
"""

from __future__ import annotations

import time
from typing import Any

from ..reasons import PassReason
from .base import RestoredView, RestoreRequest, RestoreResult, register_restorer

__all__ = ["PassthroughRestorer", "check_request"]


@register_restorer("passthrough")
class PassthroughRestorer:
    """Restorer that restores nothing (``restored=False``, reason ``passthrough``)."""

    name = "passthrough"
    deblurs_views = False  # the pipeline leaves its views as they are: the unrestored baseline

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        if options:
            raise ValueError(f"passthrough takes no options besides device, got {sorted(options)}")
        self.device = "cpu" if device == "auto" else device  # restores nothing: any device will do

    def restore(self, request: RestoreRequest) -> RestoreResult:
        t0 = time.perf_counter()
        check_request(request)
        views = [RestoredView(i, request.views[i].image, False, PassReason.PASSTHROUGH) for i in request.targets]
        return RestoreResult(views, self.name, self.device, time.perf_counter() - t0)


def check_request(request: RestoreRequest) -> None:
    """Raise ValueError when a request names targets outside its views."""
    n = len(request.views)
    bad = [i for i in request.targets if not 0 <= i < n]
    if bad:
        raise ValueError(f"target indices {bad} out of range for {n} views")

