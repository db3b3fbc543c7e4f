"""Shared pytest fixtures.

ROS hygiene lives here, once: every rclpy process a test starts (in-process
or as a subprocess, which inherits os.environ) uses localhost-only discovery
and a private DDS domain, so tests never talk off loopback or to each other.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _private_domain_id() -> int:
    """The DDS domain of this pytest process: ``ROS_DOMAIN_ID`` (1..100 from the pid
    when unset), moved on by the worker's number under pytest-xdist, so that
    the nodes of two tests running at once never see each other's topics."""
    base = int(os.environ.get("ROS_DOMAIN_ID") or 1 + os.getpid() % 100)
    n = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    return base if n == 0 else (base + n - 1) % 101 + 1  # Linux: domain ids above 101 collide with ephemeral ports


os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(_private_domain_id())
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("PYTHONPATH", str(REPO_ROOT))
# The same defaults as the Makefile's, for `.venv/bin/python -m pytest` run
# directly: the venv is the ament prefix (rmw and message lookup; a sourced
# ROS install sets its own), Fast DDS, and its 16 MB shared-memory profile.
os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO_ROOT / "config" / "fastdds.xml"))
# Compute threads that sleep when idle, one per process: next to one other job on
# 2 cores, spin-waiting OpenMP threads made the model tests several times slower,
# and a second thread that waits for a core made the shipped-weights sequence test
# 8 % slower in wall time (and 7 % more CPU) than one thread. `make test` runs two
# such processes (pytest-xdist) to fill two cores. Set before any test module imports
# torch (read when it loads); ONNX Runtime sessions take torch's thread count.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Networks exported for ONNX Runtime go to a folder of this test session (each
# is exported once per run; nothing is left in the user's cache).
_ONNX_CACHE = None
if "SIRDIFF_ONNX_CACHE" not in os.environ:
    _ONNX_CACHE = tempfile.TemporaryDirectory(prefix="sirdiff-onnx-")
    os.environ["SIRDIFF_ONNX_CACHE"] = _ONNX_CACHE.name


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests using it skip where it is absent (fresh clones)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (only present beside the project checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_images(shared_data: Path) -> Path:
    """``../shared/data/real_images``, the real-photo corpus; skips where it is absent."""
    folder = shared_data / "real_images"
    if not folder.is_dir():
        pytest.skip(f"real-image corpus {folder} is absent (only present beside the project checkout)")
    return folder


@pytest.fixture
def rclpy_context() -> Iterator[Any]:
    """A fresh rclpy ``Context``, initialised for one test and shut down after it."""
    rclpy = pytest.importorskip("rclpy")
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    try:
        yield ctx
    finally:
        if ctx.ok():
            rclpy.shutdown(context=ctx)


@pytest.fixture
def ros_executor(rclpy_context: Any) -> Iterator[Any]:
    """A ``SingleThreadedExecutor`` spinning in a background thread on ``rclpy_context``.

    Add nodes with ``ros_executor.add_node(node)``. Teardown follows the only
    order that neither hangs nor aborts the interpreter at exit: executor
    shutdown, join the (non-daemon) thread, destroy the nodes, then the
    context shutdown (``rclpy_context``).
    """
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=rclpy_context)

    def spin() -> None:
        try:
            executor.spin()
        except ExternalShutdownException:
            pass

    thread = threading.Thread(target=spin, name="ros_executor", daemon=False)
    thread.start()
    try:
        yield executor
    finally:
        nodes = list(executor.get_nodes())
        executor.shutdown()
        thread.join(timeout=10)
        for node in nodes:
            node.destroy_node()
