"""Restoration worker threads (one, or a few for a backend that takes parallel
calls) fed by one bounded queue with an explicit drop policy.

The executor thread only enqueues (constant time); the model runs here, so
subscriptions, timers and parameter services stay responsive while it works.
When the queue is full, ``drop_oldest`` gives up the longest-waiting item
(the freshest keyframe is the most useful one to a SLAM stack) and
``drop_newest`` refuses the new one; either way ``on_dropped`` receives the
item so the caller can publish its original and count it. ROS-free.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Generic, TypeVar

__all__ = ["RestoreWorker", "DROP_POLICIES"]

T = TypeVar("T")
DROP_POLICIES = ("drop_oldest", "drop_newest")


class RestoreWorker(Generic[T]):
    def __init__(
        self,
        run: Callable[[T], None],
        capacity: int,
        policy: str,
        on_dropped: Callable[[T], None],
        on_crash: Callable[[T, BaseException], None],
        name: str = "sirdiff-restore-worker",
        threads: int = 1,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be >= 1, got {capacity}")
        if threads < 1:
            raise ValueError(f"need at least one worker thread, got {threads}")
        self._run = run
        self.capacity = capacity
        self.policy = policy
        self._on_dropped = on_dropped
        self._on_crash = on_crash
        self._queue: deque[T] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._running = 0  # items being processed
        # Daemons: a backend stuck in a long call must not keep the process alive
        # after shutdown; it publishes nothing once stopping is set.
        self._threads = [threading.Thread(target=self._loop, name=name if threads == 1 else f"{name}-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    @property
    def policy(self) -> str:
        return self._policy

    @policy.setter
    def policy(self, value: str) -> None:
        if value not in DROP_POLICIES:
            raise ValueError(f"drop policy must be one of {', '.join(DROP_POLICIES)}; got {value!r}")
        self._policy = value

    @property
    def depth(self) -> int:
        """Items waiting (not counting the one being processed)."""
        with self._cond:
            return len(self._queue)

    @property
    def busy(self) -> bool:
        """Whether an item is being processed."""
        with self._cond:
            return self._running > 0

    @property
    def running(self) -> int:
        """Items being processed (at most the number of threads)."""
        with self._cond:
            return self._running

    @property
    def stopping(self) -> bool:
        return self._stopping

    def submit(self, item: T) -> bool:
        """Enqueue ``item``; returns False if it (drop_newest) was dropped instead."""
        dropped: T | None = None
        accepted = True
        with self._cond:
            if self._stopping:
                dropped, accepted = item, False
            elif len(self._queue) >= self.capacity:
                if self._policy == "drop_oldest":
                    dropped = self._queue.popleft()
                    self._queue.append(item)
                else:
                    dropped, accepted = item, False
            else:
                self._queue.append(item)
            self._cond.notify_all()  # the loop and wait_idle wait on the same condition
        if dropped is not None:
            self._on_dropped(dropped)
        return accepted

    def take_pending(self) -> list[T]:
        """Remove and return the items not started yet (the worker keeps running)."""
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
            return left

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until nothing is queued or running; True if idle."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def stop(self, timeout_s: float) -> list[T]:
        """Stop taking work, wait up to ``timeout_s`` for the running items; returns unstarted items."""
        with self._cond:
            self._stopping = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return left

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                item = self._queue.popleft()
                self._running += 1
            try:
                self._run(item)
            except BaseException as exc:  # noqa: BLE001 - the worker must survive anything the backend does
                self._on_crash(item, exc)
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()
