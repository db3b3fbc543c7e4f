"""One restoration worker thread fed by a bounded queue with an explicit drop policy.

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
    ) -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be >= 1, got {capacity}")
        self._run = run
        self.capacity = capacity
        self.policy = policy
        self._on_dropped = on_dropped
        self._on_crash = on_crash
        self._queue: deque[T] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        # Daemon: a backend stuck in a long call must not keep the process alive
        # after shutdown; it publishes nothing once stopping is set.
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

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
        with self._cond:
            return self._busy

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
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def stop(self, timeout_s: float) -> list[T]:
        """Stop taking work, wait up to ``timeout_s`` for the running item; returns unstarted items."""
        with self._cond:
            self._stopping = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join(timeout_s)
        return left

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                item = self._queue.popleft()
                self._busy = True
            try:
                self._run(item)
            except BaseException as exc:  # noqa: BLE001 - the worker must survive anything the backend does
                self._on_crash(item, exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
