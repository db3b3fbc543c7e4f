"""Per-stage wall times of the restorers, collected only when asked for.

The restorers mark their stages (``with stage("align.flow"): ...``); outside
:func:`collect_stages` a mark costs one context-variable lookup, so the marks
stay in the production code and a benchmark sees the same code the node runs::

    with collect_stages() as times:
        restorer.restore(request)
    print(times)  # {"align.flow": 0.031, "blend": 0.012, ...} seconds

Stages may nest; a nested stage's time also counts in its enclosing one.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

__all__ = ["collect_stages", "stage"]

_ACTIVE: ContextVar[dict[str, float] | None] = ContextVar("sirdiff_stage_times", default=None)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Add the wall time of the enclosed block to stage ``name`` of the active collection, if any."""
    times = _ACTIVE.get()
    if times is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        times[name] = times.get(name, 0.0) + time.perf_counter() - t0


@contextmanager
def collect_stages() -> Iterator[dict[str, float]]:
    """Collect stage times (seconds, summed per name) of everything run in the block
    (this thread / task only)."""
    times: dict[str, float] = {}
    token = _ACTIVE.set(times)
    try:
        yield times
    finally:
        _ACTIVE.reset(token)
