"""Baselines the learned backend must beat: ``deblur`` (each view alone) and ``aligned-mean``.

* ``deblur``: the requested view deblurred by its own camera motion
  (:func:`sirdiff_ros.core.deblur.deblurred_view`), no partners: the data
  term every other backend starts from.
* ``aligned-mean``: the mean, in linear light, of exactly the views the
  registered ``sirdiff`` network is given (the target and every partner
  resampled into its grid, :func:`sirdiff_ros.core.registration.registered_views`):
  what averaging alone does with the same inputs.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..color import linear_to_srgb, srgb_to_linear
from ..deblur import deblurred_view
from ..reasons import PassReason
from ..registration import registered_views
from .base import RestoredView, RestoreRequest, RestoreResult, register_restorer
from .passthrough import check_request

__all__ = ["DeblurRestorer", "AlignedMeanRestorer"]


def _no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise ValueError(f"{name} takes no options besides device, got {sorted(options)}")


@register_restorer("deblur")
class DeblurRestorer:
    """Each requested view deblurred alone by its own camera motion (backend ``deblur``).

    A view with no exposure motion attached (unknown exposure or velocity) or
    too little blur comes back unchanged with reason ``no_motion``.
    """

    name = "deblur"

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        _no_options(self.name, options)
        self.device = device

    def restore(self, request: RestoreRequest) -> RestoreResult:
        t0 = time.perf_counter()
        check_request(request)
        views = []
        for i in request.targets:
            out = deblurred_view(request.views[i])
            done = out.extras.get("deblur_px", 0.0) > 0
            views.append(RestoredView(i, out.image, done, "" if done else PassReason.NO_MOTION))
        return RestoreResult(views, self.name, self.device, time.perf_counter() - t0)


@register_restorer("aligned-mean")
class AlignedMeanRestorer:
    """The linear-light mean of the target and its partners registered into its grid (backend ``aligned-mean``)."""

    name = "aligned-mean"

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        _no_options(self.name, options)
        self.device = device

    def restore(self, request: RestoreRequest) -> RestoreResult:
        t0 = time.perf_counter()
        check_request(request)
        views = []
        for i in request.targets:
            if len(request.views) < 2:
                views.append(RestoredView(i, request.views[i].image, False, PassReason.NO_PARTNERS))
                continue
            stack = registered_views(request.views, i)  # target first, all in its grid
            mean = np.mean([srgb_to_linear(v) for v in stack], axis=0)
            views.append(RestoredView(i, linear_to_srgb(mean), True, info={"views": len(stack)}))
        return RestoreResult(views, self.name, self.device, time.perf_counter() - t0)
