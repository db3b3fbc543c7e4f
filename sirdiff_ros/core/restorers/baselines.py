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


class _PerTargetBaseline:
    """Shared frame of the baselines: no options but ``device``, each target restored on its own."""

    name = ""

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        if options:
            raise ValueError(f"{self.name} takes no options besides device, got {sorted(options)}")
        self.device = device

    def restore(self, request: RestoreRequest) -> RestoreResult:
        t0 = time.perf_counter()
        check_request(request)
        views = [self._restore_one(request, i) for i in request.targets]
        return RestoreResult(views, self.name, self.device, time.perf_counter() - t0)

    def _restore_one(self, request: RestoreRequest, index: int) -> RestoredView:
        raise NotImplementedError


@register_restorer("deblur")
class DeblurRestorer(_PerTargetBaseline):
    """Each requested view deblurred alone by its own camera motion (backend ``deblur``).

    A view with no exposure motion attached (unknown exposure or velocity) or
    too little blur comes back unchanged with reason ``no_motion``.
    """

    name = "deblur"

    def _restore_one(self, request: RestoreRequest, index: int) -> RestoredView:
        out = deblurred_view(request.views[index])
        done = out.extras.get("deblur_px", 0.0) > 0
        return RestoredView(index, out.image, done, "" if done else PassReason.NO_MOTION)


@register_restorer("aligned-mean")
class AlignedMeanRestorer(_PerTargetBaseline):
    """The linear-light mean of the target and its partners registered into its grid (backend ``aligned-mean``)."""

    name = "aligned-mean"

    def _restore_one(self, request: RestoreRequest, index: int) -> RestoredView:
        if len(request.views) < 2:
            return RestoredView(index, request.views[index].image, False, PassReason.NO_PARTNERS)
        stack = registered_views(request.views, index)  # target first, all in its grid
        mean = np.mean([srgb_to_linear(v) for v in stack], axis=0)
        return RestoredView(index, linear_to_srgb(mean), True, info={"views": len(stack)})
