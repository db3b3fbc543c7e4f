"""The ``passthrough`` backend (every requested view unchanged) and ``deblur`` (each view deblurred alone).

Useful as the baseline in evaluation, for dry runs of the node, and as what
the pipeline degrades to when a real backend fails.
"""

from __future__ import annotations

import time
from typing import Any

from ..reasons import PassReason
from .base import RestoredView, RestoreRequest, RestoreResult, register_restorer

__all__ = ["PassthroughRestorer", "DeblurRestorer", "check_request"]


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


@register_restorer("deblur")
class DeblurRestorer:
    """Each requested view deblurred alone by its own camera motion (backend ``deblur``).

    The data term every other backend starts from
    (:func:`sirdiff_ros.core.deblur.deblurred_view`), with no partners: the
    single-view baseline. A view with no exposure motion attached (unknown
    exposure or velocity) or too little blur is returned unchanged with
    reason ``no_motion``.
    """

    name = "deblur"

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        if options:
            raise ValueError(f"deblur takes no options besides device, got {sorted(options)}")
        self.device = device

    def restore(self, request: RestoreRequest) -> RestoreResult:
        from ..deblur import deblurred_view

        t0 = time.perf_counter()
        check_request(request)
        views = []
        for i in request.targets:
            src = request.views[i]
            out = deblurred_view(src)
            done = out.extras.get("deblur_px", 0.0) > 0
            views.append(RestoredView(i, out.image, done, "" if done else PassReason.NO_MOTION))
        return RestoreResult(views, self.name, self.device, time.perf_counter() - t0)
