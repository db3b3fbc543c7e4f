"""The linter (ruff, ruff.toml) and the type checker (mypy, mypy.ini) pass on the code base.

Both are pinned in requirements/lock.txt, so `make test` runs them with the
same versions everywhere; where they are not installed (a colcon build
without the venv) the tests skip and say so.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(600)


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed in this interpreter (make venv installs the pinned version)")
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=540)


def test_ruff_finds_nothing() -> None:
    res = _run("ruff", "check", "--no-fix", "--output-format", "concise", ".")
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]


def test_mypy_finds_nothing() -> None:
    res = _run("mypy", "--config-file", "mypy.ini")
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    assert "Success: no issues found" in res.stdout
