"""`ros2 launch sirdiff_ros restore.launch.py ...` with the real `launch` and `launch_ros`
libraries (../shared/ros_launch): the node comes up in its namespace with its remaps and
overrides, active at once by default and waiting for lifecycle transitions with
``autostart:=false``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from geometry_msgs.msg import PoseStamped
from lifecycle_msgs.msg import Transition
from sensor_msgs.msg import CameraInfo, Image

from sirdiff_ros.ros.convert import frame_messages
from sirdiff_ros.ros.probe import LifecycleClient, Probe, target_rich_frames

REPO_ROOT = Path(__file__).resolve().parents[1]
ROS_LAUNCH = REPO_ROOT.parent / "shared" / "ros_launch" / "python"

pytestmark = pytest.mark.timeout(240)

LAUNCHER = """
import sys
from launch import LaunchDescription, LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from ament_index_python.packages import get_package_share_directory

args = dict(a.split(":=", 1) for a in sys.argv[1:])
path = get_package_share_directory("sirdiff_ros") + "/launch/restore.launch.py"
ls = LaunchService()
ls.include_launch_description(LaunchDescription([IncludeLaunchDescription(
    PythonLaunchDescriptionSource(path), launch_arguments=args.items())]))
sys.exit(ls.run())
"""


def _default_sigint() -> None:
    """In the launch child before exec: SIGINT and SIGQUIT back to their defaults."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _launch(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`ros2 launch sirdiff_ros restore.launch.py ARGS` against the venv as the installed prefix."""
    if not ROS_LAUNCH.is_dir():
        pytest.skip(f"the launch libraries are absent ({ROS_LAUNCH}; see ../shared/ros_launch/README.md)")
    prefix = Path(sys.prefix)
    if not (prefix / "share" / "sirdiff_ros" / "launch" / "restore.launch.py").is_file():
        pytest.skip(f"sirdiff_ros is not installed into {prefix} (make venv installs it)")
    env = dict(os.environ)
    # As after sourcing a ROS install: its Python packages and its interpreter first.
    env["PYTHONPATH"] = os.pathsep.join([str(ROS_LAUNCH), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["AMENT_PREFIX_PATH"] = str(prefix)
    log = tmp_path / "launch.log"
    # Its own process group: _stop can end the nodes it starts along with it.
    # Ctrl-C must reach it: a child inherits an *ignored* SIGINT, and in the full suite
    # something in this process leaves SIGINT and SIGQUIT ignored (SigIgn seen in
    # /proc; the launch then never saw the test's SIGINT and was killed after 20 s).
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, *args], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, preexec_fn=_default_sigint)
    return proc, log


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGINT (what Ctrl-C sends ros2 launch); after 20 s, SIGKILL to the launch's whole
    process group, so that no node it started outlives the test (an orphaned node on the
    same domain and names breaks every later launch test on the machine)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    else:
        rc = proc.returncode
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is still there
    except ProcessLookupError:
        pass
    return rc


def _send(probe: Probe, frames: list[Any]) -> None:
    for f in frames:
        img, info, pose = frame_messages(f)
        for topic, msg in (("/cam/pose", pose), ("/cam/info", info), ("/cam/image_raw", img)):
            probe.publish(topic, msg)
        time.sleep(0.03)


INPUTS = {"/cam/image_raw": Image, "/cam/info": CameraInfo, "/cam/pose": PoseStamped}


def test_launch_brings_the_node_up_active_with_namespace_remaps_and_overrides(tmp_path: Path) -> None:
    frames = target_rich_frames(40, 64, 48)
    proc, log = _launch(tmp_path, "namespace:=robot", "image:=/cam/image_raw", "camera_info:=/cam/info",
                        "pose:=/cam/pose", "backend:=passthrough", "device:=auto")
    try:
        with Probe(INPUTS, {"/robot/restored/image": Image}, reliable=False) as probe:
            lc = LifecycleClient(probe, "/robot/sirdiff_restore")
            assert lc.state() == "active", log.read_text()
            assert probe.wait_matched(20), log.read_text()
            # Sensor-data QoS (best effort, the node's default) may lose a frame on a loaded
            # host: send until a few come out, the wiring is what is tested here.
            sent = []
            for f in frames:
                _send(probe, [f])
                sent.append(f.stamp_ns)
                if len(probe.get("/robot/restored/image")) >= 3:
                    break
                time.sleep(0.1)
            assert probe.wait_for(lambda: len(probe.get("/robot/restored/image")) >= 3, 20), log.read_text()
            out = [r.stamp_ns for r in probe.get("/robot/restored/image")]
            assert set(out) <= set(sent) and out == sorted(out)
        text = log.read_text()
        assert "with backend 'passthrough' on cpu" in text and "restoring /cam/image_raw -> /robot/restored/image" in text
    finally:
        rc = _stop(proc)
    assert rc == 0, log.read_text()


def test_launch_with_autostart_false_waits_for_transitions(tmp_path: Path) -> None:
    ns = f"lc{os.getpid()}"  # no clash with nodes of other tests still leaving the graph
    proc, log = _launch(tmp_path, "autostart:=false", "backend:=passthrough", f"namespace:={ns}")
    image = f"/{ns}/image"
    try:
        with Probe({image: Image}, {}) as probe:
            lc = LifecycleClient(probe, f"/{ns}/sirdiff_restore")
            assert lc.state() == "unconfigured", log.read_text()
            assert probe.pubs[image].get_subscription_count() == 0
            assert lc.set(Transition.TRANSITION_CONFIGURE) and lc.set(Transition.TRANSITION_ACTIVATE)
            assert lc.state() == "active"
            assert probe.wait_for(lambda: probe.pubs[image].get_subscription_count() > 0, 10)
    finally:
        rc = _stop(proc)
    assert rc == 0, log.read_text()
