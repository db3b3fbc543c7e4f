"""Python packaging for the plain-venv path (``pip install -e .``).

On a ROS 2 install the package is built by colcon with ament_cmake
(CMakeLists.txt), which installs the same Python package next to the
generated messages; the console scripts below are mirrored there.
"""

from setuptools import find_packages, setup

PACKAGE = "sirdiff_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Multi-view diffusion restoration of motion-blurred SLAM keyframes (SIR-Diff) for ROS 2",
    license="Apache-2.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    python_requires=">=3.10",
    include_package_data=True,
    package_data={PACKAGE: ["weights/*.safetensors", "weights/*.json", "weights/*.md"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", ["launch/restore.launch.py"]),
        (f"share/{PACKAGE}/config", ["config/restore.yaml"]),
    ],
    entry_points={
        "console_scripts": [
            "sirdiff-restore = sirdiff_ros.ros.restore_node:main",
            "restore_node = sirdiff_ros.ros.restore_node:main",
            "sirdiff-play = sirdiff_ros.ros.bag_tools:play_main",
            "sirdiff-record = sirdiff_ros.ros.bag_tools:record_main",
            "sirdiff-synth = sirdiff_ros.data.cli:main",
            "sirdiff-eval = sirdiff_ros.evaluation.cli:main",
            "sirdiff-train = sirdiff_ros.training.cli:main",
        ]
    },
)
