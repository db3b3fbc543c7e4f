"""Shared pytest fixtures.

ROS hygiene lives here, once: every rclpy process a test starts (in-process
or as a subprocess, which inherits os.environ) uses localhost-only discovery
and a private DDS domain, so tests never talk off loopback or to each other.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _private_domain_id() -> int:
    # 1..100 from the pid; xdist-free runs get one domain per pytest process.
    return 1 + os.getpid() % 100


os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(_private_domain_id()))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("PYTHONPATH", str(REPO_ROOT))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests using it skip where it is absent (fresh clones)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (only present beside the project checkout)")
    return SHARED_DATA
