"""Where the test suite's time goes: wall and CPU seconds per test, and in all.

    .venv/bin/python bench/suite.py [--top 25] [pytest arguments, default: test/]

Runs pytest in this process with a small plugin that reads
``getrusage`` around every test: CPU of this process (all its threads) and
of the child processes that ended meanwhile (node processes, command-line
tools, cmake). A test whose wall time is well above its CPU time waits (a
subprocess starting, a fixed-rate stream, a timeout); one whose CPU time is
high costs every job sharing the machine. Prints the most expensive tests
and the totals; writes ``bench/results/suite.json``. Setting the
environment as ``make test`` does is left to the caller (``test/conftest.py``
sets the ROS and thread defaults either way).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "bench" / "results" / "suite.json"


def _cpu_s() -> tuple[float, float]:
    """(CPU seconds of this process, of its ended children), user + system."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


class CpuPerTest:
    """pytest plugin: wall and CPU seconds of each test's setup, call and teardown together."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
        own0, kids0 = _cpu_s()
        t0 = time.monotonic()
        yield
        own1, kids1 = _cpu_s()
        self.rows.append({"test": item.nodeid, "wall_s": round(time.monotonic() - t0, 3),
                          "cpu_s": round(own1 - own0, 3), "children_cpu_s": round(kids1 - kids0, 3)})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--top", type=int, default=25, help="tests listed, most CPU first")
    args, pytest_args = ap.parse_known_args()
    os.chdir(REPO_ROOT)
    plugin = CpuPerTest()
    own0, kids0 = _cpu_s()
    t0 = time.monotonic()
    code = pytest.main([*(pytest_args or ["test/"]), "-q", "-p", "no:cacheprovider"], plugins=[plugin])
    wall = time.monotonic() - t0
    own1, kids1 = _cpu_s()
    rows = sorted(plugin.rows, key=lambda r: -(r["cpu_s"] + r["children_cpu_s"]))
    print(f"\n{'wall s':>7} {'CPU s':>7} {'children':>8}  test")
    for r in rows[: args.top]:
        print(f"{r['wall_s']:7.1f} {r['cpu_s']:7.1f} {r['children_cpu_s']:8.1f}  {r['test']}")
    total = {"tests": len(rows), "wall_s": round(wall, 1), "cpu_s": round(own1 - own0, 1),
             "children_cpu_s": round(kids1 - kids0, 1), "pytest_exit_code": int(code)}
    print(json.dumps(total))
    result = {"host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                       "load_average_at_end": os.getloadavg()},
              "threads": {k: os.environ.get(k, "") for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")},
              "total": total, "tests": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
