"""The restore node as a lifecycle node, driven over its real rclpy lifecycle services,
and model memory released on cleanup."""

from __future__ import annotations

import gc
import os
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
from geometry_msgs.msg import PoseStamped
from lifecycle_msgs.msg import Transition
from sensor_msgs.msg import CameraInfo, Image

from sirdiff_ros.msg import RestoreStatus
from sirdiff_ros.ros.convert import frame_messages
from sirdiff_ros.ros.probe import LifecycleClient, NodeProcess, Probe, target_rich_frames

pytestmark = pytest.mark.timeout(240)

INPUTS = {"image": Image, "camera_info": CameraInfo, "pose": PoseStamped}
OUTPUTS = {"restored/image": Image, "status": RestoreStatus}
NAME = f"sirdiff_restore_lc{os.getpid()}"  # no clash with nodes of other tests still leaving the graph
NODE = f"/{NAME}"
COMMAND = [sys.executable, "-m", "sirdiff_ros.ros.restore_node", "--ros-args", "-r", f"__node:={NAME}"]


def _send(probe: Probe, frames: list[Any]) -> None:
    for f in frames:
        img, info, pose = frame_messages(f)
        probe.publish("pose", pose)
        probe.publish("camera_info", info)
        probe.publish("image", img)
        time.sleep(0.03)


def _subscribed(probe: Probe) -> bool:
    return all(p.get_subscription_count() > 0 for p in probe.pubs.values())


def test_lifecycle_transitions_over_services_images_flow_only_while_active(tmp_path: Path) -> None:
    frames = target_rich_frames(30, 64, 48)
    node = NodeProcess(
        command=COMMAND, params={"autostart": False, "backend": "fusion", "qos_reliability": "reliable", "min_translation": 0.0,
         "diagnostics_period_s": 0.2, "latency_budget_s": 5.0},
        log_path=tmp_path / "node.log",
    )
    try:
        with Probe(INPUTS, OUTPUTS) as probe:
            lc = LifecycleClient(probe, NODE)
            assert lc.state() == "unconfigured", node.output()
            assert "configured: backend" not in node.output()  # the backend is not built before configure
            _send(probe, frames[:3])
            assert lc.set(Transition.TRANSITION_CONFIGURE) and lc.state() == "inactive"
            assert "configured: backend 'fusion'" in node.output()
            _send(probe, frames[3:6])
            time.sleep(0.5)
            assert not _subscribed(probe) and probe.get("restored/image") == []

            assert lc.set(Transition.TRANSITION_ACTIVATE) and lc.state() == "active"
            assert probe.wait_for(lambda: _subscribed(probe), 10)
            time.sleep(0.3)  # the subscriber's side matches too
            _send(probe, frames[6:18])
            assert probe.wait_for(lambda: len(probe.get("restored/image")) == 12, 30), node.output()

            assert lc.set(Transition.TRANSITION_DEACTIVATE) and lc.state() == "inactive"
            status = probe.get("status")[-1].msg  # published on the way out, with the final counts
            assert status.images_received == status.images_published == 12 and status.in_flight == 0
            assert probe.wait_for(lambda: not any(p.get_subscription_count() for p in probe.pubs.values()), 10)
            _send(probe, frames[18:21])
            time.sleep(0.5)
            assert len(probe.get("restored/image")) == 12

            assert lc.set(Transition.TRANSITION_ACTIVATE)
            assert probe.wait_for(lambda: _subscribed(probe), 10)
            time.sleep(0.3)
            _send(probe, frames[21:30])
            assert probe.wait_for(lambda: len(probe.get("restored/image")) == 21, 30), node.output()
            stamps = [r.stamp_ns for r in probe.get("restored/image")]
            assert stamps == [f.stamp_ns for f in frames[6:18] + frames[21:30]]

            assert lc.set(Transition.TRANSITION_DEACTIVATE) and lc.set(Transition.TRANSITION_CLEANUP)
            assert lc.state() == "unconfigured" and "unconfigured: backend released" in node.output()
            assert not lc.set(Transition.TRANSITION_ACTIVATE)  # not from unconfigured
            assert lc.set(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN) and lc.state() == "finalized"
            assert node.alive()
        rc, _ = node.interrupt()
        assert rc == 0, node.output()
        assert "received 21, published 21, dropped 0" in node.output()
    finally:
        node.close()


def test_failed_configure_keeps_the_node_unconfigured_and_explains(tmp_path: Path) -> None:
    node = NodeProcess({"autostart": False, "backend": "sirdiff", "checkpoint": str(tmp_path / "missing")},
                       command=COMMAND, log_path=tmp_path / "node.log")
    try:
        with Probe({}, {}) as probe:
            lc = LifecycleClient(probe, NODE)
            assert not lc.set(Transition.TRANSITION_CONFIGURE)
            assert lc.state() == "unconfigured" and node.alive()
            assert "cannot create backend 'sirdiff'" in node.output() and str(tmp_path / "missing") in node.output()
    finally:
        node.close()


def test_cleanup_releases_the_model(rclpy_context: Any, tmp_path: Path) -> None:
    """The weights exist from configure to cleanup only (on a GPU, their memory goes back too)."""
    import torch
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from sirdiff_ros.model.encoders import SpaceToDepthEncoder
    from sirdiff_ros.model.pipeline import Parametrization, SirDiffPipeline, make_scheduler
    from sirdiff_ros.model.presets import build_model
    from sirdiff_ros.ros.restore_node import RestoreNode

    torch.manual_seed(0)
    unet = build_model("tiny", in_channels=48, cond_channels=48, out_channels=48)
    ckpt = SirDiffPipeline(unet, make_scheduler(), SpaceToDepthEncoder(4), Parametrization()).save_checkpoint(tmp_path / "tiny")
    del unet
    params = [Parameter("backend", value="sirdiff"), Parameter("checkpoint", value=str(ckpt)), Parameter("device", value="auto")]
    node = RestoreNode(context=rclpy_context, parameter_overrides=params)
    try:
        for _ in range(2):  # configure again after cleanup: the weights load again
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            weights = weakref.ref(node._restorer.pipe.unet)
            on_gpu = node._restorer.device.startswith("cuda")
            assert weights() is not None
            assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
            assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
            assert weights() is not None  # inactive keeps the model: activating again is instant
            assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
            gc.collect()
            assert weights() is None and node.pipeline is None
            if on_gpu:
                assert torch.cuda.memory_allocated() == 0
    finally:
        node.close()
        node.destroy_node()
