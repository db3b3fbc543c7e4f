"""package.xml, setup.py and CMakeLists.txt describe the same package, and both
install paths (the plain venv and a colcon/ament_cmake install) give a working
``sirdiff_ros`` with its generated messages beside it."""

from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import sirdiff_ros
from sirdiff_ros.interfaces import MESSAGE_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "sirdiff_ros"


@pytest.fixture(scope="module")
def setup_kwargs() -> dict[str, Any]:
    """The keyword arguments setup.py passes to ``setuptools.setup``."""
    import setuptools

    captured: dict[str, Any] = {}
    real_setup = setuptools.setup
    setuptools.setup = lambda **kw: captured.update(kw)
    cwd = os.getcwd()
    try:
        os.chdir(REPO_ROOT)
        runpy.run_path(str(REPO_ROOT / "setup.py"), run_name="__main__")
    finally:
        os.chdir(cwd)
        setuptools.setup = real_setup
    return captured


@pytest.fixture(scope="module")
def package_xml() -> ET.Element:
    return ET.parse(REPO_ROOT / "package.xml").getroot()


@pytest.fixture(scope="module")
def cmake() -> str:
    # Without comments, so that only real commands are matched.
    return re.sub(r"#[^\n]*", "", (REPO_ROOT / "CMakeLists.txt").read_text())


def _console_scripts(kw: dict[str, Any]) -> dict[str, str]:
    return dict(re.split(r"\s*=\s*", s, maxsplit=1) for s in kw["entry_points"]["console_scripts"])


def _msg_packages() -> set[str]:
    """Packages whose types our .msg files use (``pkg/Type`` references)."""
    pkgs = set()
    for f in (REPO_ROOT / "msg").glob("*.msg"):
        for line in f.read_text().splitlines():
            m = re.match(r"\s*([a-z_][a-z0-9_]*)/[A-Z]\w*", line)
            if m and m.group(1) != PACKAGE:
                pkgs.add(m.group(1))
    return pkgs


def test_package_xml_is_a_valid_format3_ament_cmake_interface_package(package_xml: ET.Element) -> None:
    catkin_pkg = pytest.importorskip("catkin_pkg.package")
    pkg = catkin_pkg.parse_package_string((REPO_ROOT / "package.xml").read_text())  # validates the schema rules
    assert pkg.package_format == 3 and pkg.name == PACKAGE
    assert pkg.get_build_type() == "ament_cmake"
    assert [g.name for g in pkg.member_of_groups] == ["rosidl_interface_packages"]
    names = lambda deps: {d.name for d in deps}  # noqa: E731
    assert {"ament_cmake", "rosidl_default_generators"} <= names(pkg.buildtool_depends)
    run = names(pkg.exec_depends)
    for dep in ("rosidl_default_runtime", "rclpy", "sensor_msgs", "nav_msgs", "diagnostic_msgs", "launch", "launch_ros",
                "python3-numpy", "python3-opencv"):
        assert dep in run, dep
    # Declared only what the code imports: the node associates topics and decodes images itself.
    assert not {"message_filters", "cv_bridge"} & run
    # torch / diffusers / rosbags: rosdep keys, not distribution packages.
    assert {"python3-torch", "python3-diffusers-pip", "python3-rosbags-pip"} <= run
    # Every package our messages reference is a build+run dependency.
    assert _msg_packages() <= names(pkg.build_depends) & names(pkg.exec_depends)


def test_names_and_versions_agree(setup_kwargs: dict[str, Any], package_xml: ET.Element, cmake: str) -> None:
    assert package_xml.findtext("name") == setup_kwargs["name"] == PACKAGE
    assert re.search(r"project\(\s*(\w+)", cmake).group(1) == PACKAGE
    assert package_xml.findtext("version") == setup_kwargs["version"] == sirdiff_ros.__version__


def test_message_list_matches_msg_folder(cmake: str, package_xml: ET.Element) -> None:
    files = re.search(r"set\(\s*SIRDIFF_MSG_FILES(.*?)\)", cmake, re.S).group(1)
    listed = re.findall(r'"msg/(\w+)\.msg"', files)
    on_disk = sorted(p.stem for p in (REPO_ROOT / "msg").glob("*.msg"))
    assert sorted(listed) == on_disk == sorted(MESSAGE_NAMES)
    # Dependencies given to the generator are exactly the packages the messages use.
    deps = re.search(r"rosidl_generate_interfaces\(.*?DEPENDENCIES([^)]*)\)", cmake, re.S).group(1).split()
    assert set(deps) == _msg_packages()
    for dep in deps:
        assert re.search(rf"find_package\(\s*{dep}\s+REQUIRED", cmake), dep


def test_node_executable_is_the_same_on_both_paths(setup_kwargs: dict[str, Any], cmake: str) -> None:
    scripts = _console_scripts(setup_kwargs)
    target = scripts["restore_node"]
    assert target == scripts["sirdiff-restore"] == "sirdiff_ros.ros.restore_node:main"
    # colcon: `ros2 run sirdiff_ros restore_node` runs scripts/restore_node from lib/sirdiff_ros.
    assert re.search(r"install\(\s*PROGRAMS\s+scripts/restore_node\s+DESTINATION\s+lib/\$\{PROJECT_NAME\}", cmake)
    launcher = REPO_ROOT / "scripts" / "restore_node"
    assert os.access(launcher, os.X_OK) and launcher.read_text().startswith("#!/usr/bin/env python3")
    module, func = target.split(":")
    assert re.search(rf"from {re.escape(module)} import {func}\b", launcher.read_text())
    # The launch file starts that executable.
    for launch in (REPO_ROOT / "launch").glob("*.launch.py"):
        assert re.search(r'executable="restore_node"', launch.read_text()), launch


def test_installed_data_files_agree(setup_kwargs: dict[str, Any], cmake: str) -> None:
    assert re.search(r"install\(\s*DIRECTORY\s+launch\s+config\s+DESTINATION\s+share/\$\{PROJECT_NAME\}", cmake)
    data = {dest: sorted(files) for dest, files in setup_kwargs["data_files"]}
    for folder in ("launch", "config"):
        on_disk = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / folder).iterdir() if p.is_file())
        assert on_disk, f"{folder}/ is empty"
        assert data[f"share/{PACKAGE}/{folder}"] == on_disk, folder
    assert any(f.endswith(".launch.py") for f in data[f"share/{PACKAGE}/launch"])
    assert "config/restore.yaml" in data[f"share/{PACKAGE}/config"]


def test_package_data_ships_every_file_of_the_shipped_weights(setup_kwargs: dict[str, Any]) -> None:
    """A wheel or sdist install must carry the whole checkpoint (the refinement head sits in a subfolder)."""
    from fnmatch import fnmatch

    patterns = setup_kwargs["package_data"][PACKAGE]
    weights = REPO_ROOT / PACKAGE / "weights"
    files = [p.relative_to(REPO_ROOT / PACKAGE).as_posix() for p in weights.rglob("*") if p.is_file()]
    assert any(f.endswith(".safetensors") for f in files)
    # fnmatch's "*" also crosses "/": require the same number of path parts as the pattern.
    missed = [f for f in files if not any(fnmatch(f, pat) and f.count("/") == pat.count("/") for pat in patterns)]
    assert not missed, f"files under weights/ that setup.py would not install: {missed}"


def test_console_scripts_are_installed_and_resolve(setup_kwargs: dict[str, Any]) -> None:
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        pytest.skip("sirdiff_ros is not pip-installed in this interpreter (colcon install or bare checkout)")
    declared = _console_scripts(setup_kwargs)
    installed = {ep.name: ep for ep in dist.entry_points if ep.group == "console_scripts"}
    assert {n: ep.value for n, ep in installed.items()} == declared
    bindir = Path(sys.executable).parent
    for name, ep in installed.items():
        exe = bindir / name
        assert exe.is_file() and os.access(exe, os.X_OK), f"{exe} missing (run `make venv`)"
        assert callable(ep.load()), name


def test_venv_generated_messages_do_not_shadow_our_package() -> None:
    # A fresh interpreter, outside the checkout and without PYTHONPATH, as a
    # console script runs: our package (regular) plus the generated msg/.
    code = (
        "import sirdiff_ros, sirdiff_ros.msg as m, sirdiff_ros.core.geometry;"
        "from sirdiff_ros.msg import KeyframeSet, ViewInfo, RestoreStatus;"
        "print(sirdiff_ros.__file__); print(m.__file__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=120)
    if "No module named 'sirdiff_ros'" in out.stderr:
        pytest.skip("sirdiff_ros is not installed in this interpreter (bare checkout)")
    assert out.returncode == 0, out.stderr[-3000:]
    pkg_file, msg_file = out.stdout.split()
    assert Path(pkg_file).resolve() == (Path(sirdiff_ros.__file__)).resolve()
    assert Path(msg_file).parent.name == "msg" and Path(msg_file).parent.parent.name == PACKAGE


def _copy_package_sources(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("CMakeLists.txt", "package.xml"):
        shutil.copy2(REPO_ROOT / name, dest / name)
    for name in ("msg", PACKAGE, "scripts", "launch", "config"):
        shutil.copytree(REPO_ROOT / name, dest / name, ignore=ignore)


def test_ament_cmake_install_layout(tmp_path: Path) -> None:
    """What colcon does: configure/build/install CMakeLists.txt with the Python
    package on (the default), against the ROS prefix this interpreter uses."""
    if not shutil.which("cmake") or not shutil.which("c++"):
        pytest.skip("cmake and a C++ compiler are needed to build the messages")
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", sys.prefix).split(os.pathsep) if p]
    if not any((Path(p) / "share" / "rosidl_default_generators").is_dir() for p in prefixes):
        pytest.skip("rosidl_default_generators not found on AMENT_PREFIX_PATH")
    src, build, install = tmp_path / "src", tmp_path / "build", tmp_path / "install"
    src.mkdir()
    _copy_package_sources(src)
    env = dict(os.environ, AMENT_PREFIX_PATH=os.pathsep.join(prefixes))
    steps = [
        ["cmake", "-S", str(src), "-B", str(build), f"-DCMAKE_PREFIX_PATH={';'.join(prefixes)}",
         f"-DCMAKE_INSTALL_PREFIX={install}", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"],
        ["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)],
        ["cmake", "--install", str(build)],
    ]
    for cmd in steps:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{cmd[:2]} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"

    site = install / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    pkg = site / PACKAGE
    # Our __init__.py replaced the generated (empty) one; msg/ sits beside our modules.
    assert (pkg / "__init__.py").read_text() == (REPO_ROOT / PACKAGE / "__init__.py").read_text()
    assert (pkg / "core" / "geometry.py").is_file()
    assert {p.name for p in (pkg / "msg").glob("_*.py")} >= {"_keyframe_set.py", "_view_info.py", "_restore_status.py"}
    share = install / "share" / PACKAGE
    assert os.access(install / "lib" / PACKAGE / "restore_node", os.X_OK)
    assert (share / "package.xml").is_file()
    assert sorted(p.name for p in (share / "launch").iterdir()) == sorted(p.name for p in (REPO_ROOT / "launch").iterdir())
    assert sorted(p.name for p in (share / "config").iterdir()) == sorted(p.name for p in (REPO_ROOT / "config").iterdir())
    assert sorted(p.stem for p in (share / "msg").glob("*.msg")) == sorted(MESSAGE_NAMES)
    assert (install / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()

    # As after `source install/setup.bash`: the installed package and its messages import and serialise.
    code = (
        "import sirdiff_ros, sirdiff_ros.msg as m;"
        "from rclpy.serialization import serialize_message;"
        "ks = m.KeyframeSet(views=[m.ViewInfo(overlap=0.5)]);"
        "assert len(serialize_message(ks)) > 0;"
        "from sirdiff_ros.interfaces import message_dir;"
        "print(sirdiff_ros.__file__); print(m.__file__); print(message_dir())"
    )
    run_env = dict(
        os.environ,
        PYTHONPATH=str(site),
        LD_LIBRARY_PATH=os.pathsep.join([str(install / "lib"), os.environ.get("LD_LIBRARY_PATH", "")]),
        AMENT_PREFIX_PATH=os.pathsep.join([str(install), *prefixes]),
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    init_file, msg_file, msg_dir = r.stdout.split()
    assert Path(init_file) == pkg / "__init__.py"
    assert Path(msg_file) == pkg / "msg" / "__init__.py"
    assert Path(msg_dir) == share / "msg"
