"""Python packaging for the plain-venv path (``pip install -e .``).

On a ROS 2 install colcon builds the package with ament_cmake
(CMakeLists.txt): it generates the messages and installs this Python
package, ``lib/sirdiff_ros/restore_node`` and ``share/sirdiff_ros/{launch,config}``.
Here the same launch/config files go to ``<venv>/share/sirdiff_ros`` and the
node starts from the ``restore_node`` / ``sirdiff-restore`` console scripts.
The messages are built into the venv by ``scripts/build_msgs.sh``.
"""

from __future__ import annotations

import re
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "sirdiff_ros"
HERE = Path(__file__).resolve().parent


def _version() -> str:
    # package.xml is the single source of the version (colcon reads it too).
    m = re.search(r"<version>([^<]+)</version>", (HERE / "package.xml").read_text())
    if m is None:
        raise RuntimeError("package.xml has no <version>")
    return m.group(1).strip()


def _data(folder: str, pattern: str) -> list[str]:
    return sorted(glob(f"{folder}/{pattern}", root_dir=HERE))


setup(
    name=PACKAGE,
    version=_version(),
    description="Multi-view diffusion restoration of motion-blurred SLAM keyframes (SIR-Diff) for ROS 2",
    license="Apache-2.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    python_requires=">=3.10",
    include_package_data=True,
    package_data={PACKAGE: ["weights/*.safetensors", "weights/*.json", "weights/*.md", "weights/*/*.safetensors", "weights/*/*.json", "weights/*/*.md",
                            "weights/*/refiner/*.safetensors", "weights/*/refiner/*.json",
                            "weights/*/refiner_deblurred/*.safetensors", "weights/*/refiner_deblurred/*.json"]},
    data_files=[
        (f"share/{PACKAGE}/launch", _data("launch", "*.launch.py")),
        (f"share/{PACKAGE}/config", _data("config", "*.yaml") + _data("config", "*.xml")),
    ],
    # ORB-SLAM3 (GPL-3.0 bindings) and evo: SLAM-in-the-loop evaluation and the ORB-SLAM3 node.
    # Exact pins of the whole set: requirements/slam.txt.
    extras_require={"slam": ["pyorbslam3==0.1.1", "evo==1.38.1"], "onnx": ["onnxruntime==1.31.1", "onnx==1.23.2"]},
    entry_points={
        "console_scripts": [
            "sirdiff-restore = sirdiff_ros.ros.restore_node:main",
            "restore_node = sirdiff_ros.ros.restore_node:main",
            "sirdiff-play = sirdiff_ros.ros.bag_tools:play_main",
            "sirdiff-record = sirdiff_ros.ros.bag_tools:record_main",
            "sirdiff-synth = sirdiff_ros.data.cli:main",
            "sirdiff-eval = sirdiff_ros.evaluation.cli:main",
            "sirdiff-eval-real = sirdiff_ros.evaluation.real_split:main",
            "sirdiff-train = sirdiff_ros.training.cli:main",
            "sirdiff-vocab = sirdiff_ros.slam.vocabulary:main",
            "sirdiff-orbslam = sirdiff_ros.slam.node:main",
        ]
    },
)
