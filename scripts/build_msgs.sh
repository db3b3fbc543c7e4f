#!/usr/bin/env bash
# Build msg/ into a plain Python venv that holds the ROS 2 Kilted PyPI wheels.
#
# Usage: scripts/build_msgs.sh [VENV] [BUILD_DIR]   (defaults: .venv, build/venv-msgs)
#
# The wheels' exported CMake files hard-code the include directories of the
# interpreter they were built with (/opt/python/cp3xx-.../include/python3.x and
# its numpy); they are rewritten to this venv's, then CMakeLists.txt is
# configured with SIRDIFF_INSTALL_PYTHON_PACKAGE=OFF so that only the messages
# are installed (the venv installs our Python package editable).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(realpath -m "${1:-$repo/.venv}")"
build="$(realpath -m "${2:-$repo/build/venv-msgs}")"
py="$venv/bin/python"
# ament_index lookups during configure (the type supports) search AMENT_PREFIX_PATH.
export AMENT_PREFIX_PATH="$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"

[[ -x "$py" ]] || { echo "build_msgs: no Python at $py (create the venv first: make venv)" >&2; exit 2; }
command -v cmake >/dev/null || { echo "build_msgs: cmake not found (apt-get install cmake g++)" >&2; exit 2; }
command -v c++ >/dev/null || { echo "build_msgs: no C++ compiler found (apt-get install g++)" >&2; exit 2; }

"$py" - "$venv" <<'PY'
import glob, re, sys, sysconfig
from pathlib import Path

import numpy

venv = Path(sys.argv[1])
py_include = sysconfig.get_paths()["include"]
if not (Path(py_include) / "Python.h").is_file():
    sys.exit(f"build_msgs: Python headers missing at {py_include} (install python3-dev for this interpreter)")
np_include = numpy.get_include()
# numpy first: its path also starts with the foreign interpreter's prefix.
patterns = [
    (re.compile(r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/_core/include"), np_include),
    (re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+"), py_include),
]
patched = 0
for f in glob.glob(str(venv / "share" / "*" / "cmake" / "*.cmake")):
    text = Path(f).read_text()
    new = text
    for pat, repl in patterns:
        new = pat.sub(repl, new)
    if new != text:
        Path(f).write_text(new)
        patched += 1
print(f"build_msgs: rewrote foreign include paths in {patched} CMake files")
PY

mkdir -p "$(dirname "$build")"
cmake -S "$repo" -B "$build" \
  -DCMAKE_PREFIX_PATH="$venv" \
  -DCMAKE_INSTALL_PREFIX="$venv" \
  -DPython3_EXECUTABLE="$py" \
  -DSIRDIFF_INSTALL_PYTHON_PACKAGE=OFF \
  -DBUILD_TESTING=OFF \
  -DCMAKE_BUILD_TYPE=Release >"$build.log" 2>&1 \
  || { cat "$build.log" >&2; echo "build_msgs: cmake configure failed" >&2; exit 1; }
cmake --build "$build" -j "$(nproc)" >>"$build.log" 2>&1 \
  || { tail -50 "$build.log" >&2; echo "build_msgs: build failed (log: $build.log)" >&2; exit 1; }
cmake --install "$build" >>"$build.log" 2>&1 \
  || { tail -30 "$build.log" >&2; echo "build_msgs: install failed (log: $build.log)" >&2; exit 1; }
echo "build_msgs: messages installed into $venv (log: $build.log)"
