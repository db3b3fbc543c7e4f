"""Run a node in its own process until SIGINT or shutdown, the one way all our executables do.

The safe order (DESIGN.md): ``close()`` the node (stop its threads, log totals),
shut the executor down, destroy the node, shut rclpy down. SIGINT may arrive
at any point after ``rclpy.init``, even while ``start`` loads a model.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

RCLError = _rclpy.RCLError

__all__ = ["run_node"]


def run_node(prog: str, make_node: Callable[[], Any], startup_errors: tuple[type[BaseException], ...],
             start: Callable[[Any], str | None] | None = None, args: list[str] | None = None) -> int:
    """``rclpy.init``, build the node, ``start`` it, spin until SIGINT; returns the exit code.

    ``make_node`` raising one of ``startup_errors``, or ``start`` returning a
    reason, ends the process with exit code 2 and the reason on stderr. The
    node must have a ``close()`` method.
    """
    rclpy.init(args=args)
    try:
        node = make_node()
    except startup_errors as exc:
        print(f"{prog}: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    try:
        failure = start(node) if start is not None else None
        if failure:
            print(f"{prog}: {failure}", file=sys.stderr, flush=True)
            return 2
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RCLError:
        # rclpy's SIGINT handler shut the context down while the executor was between
        # its checks: rclpy raises this instead of ExternalShutdownException (seen in a
        # loaded test run: exit 1 after SIGINT). Anything else is a real error.
        if rclpy.ok():
            raise
    finally:
        node.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
