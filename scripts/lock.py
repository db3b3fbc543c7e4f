"""Write requirements/lock.txt: the exact versions installed in this venv.

Usage: .venv/bin/python scripts/lock.py [OUT]   (run by `make lock`)

Left out: torch (the Makefile installs it first, pinned, from the CPU
wheel), this project (installed editable), the venv's build tools, and every
distribution recorded only by an ``.egg-info`` directory: the ROS 2 wheels
bundle the egg-info of the Python packages inside them (rclpy, std_msgs,
rosidl_parser, ...), which ``pip freeze`` lists but no index serves.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SKIP = {"torch", "sirdiff-ros", "pip", "setuptools", "wheel"}
HEADER = [
    "# Exact versions for the plain-venv path (make venv); regenerate with 'make lock'.",
    "# torch==2.13.0 (local CPU wheel) is installed first, by the Makefile.",
]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> list[str]:
    """``name==version`` for every installable distribution of this interpreter."""
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        path = str(getattr(dist, "_path", ""))
        if not name or _norm(name) in SKIP or path.endswith(".egg-info"):
            continue
        out[_norm(name)] = f"{name}=={dist.version}"
    return [out[k] for k in sorted(out)]


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT / "requirements" / "lock.txt"
    target.write_text("\n".join(HEADER + pins()) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
