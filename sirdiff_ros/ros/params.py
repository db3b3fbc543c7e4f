"""The restore node's parameters: one table, used to declare, validate, document.

Each :class:`ParamSpec` carries the default, type, description and allowed
range or values. The node declares them with ROS descriptors (rclpy enforces
ranges), validates choices in its set-parameters callback with
:func:`check_value`, ``config/restore.yaml`` lists the same defaults (a test
checks that) and the README table comes from :func:`markdown_table`.
ROS-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

from ..core.device import DEVICE_PATTERN
from ..core.keyframes import KeyframeConfig
from ..core.pipeline import PipelineConfig

__all__ = ["ParamSpec", "PARAMS", "SPECS", "check_value", "defaults", "markdown_table", "pipeline_config", "params_yaml", "NODE_NAME"]

NODE_NAME = "sirdiff_restore"


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    read_only: bool = True  # False: may be changed while running
    group: str = "node"

    @property
    def type(self) -> type:
        return type(self.default)


# The pipeline's own defaults are the node's defaults (one source of truth).
_KF = KeyframeConfig()
_PC = PipelineConfig()

PARAMS: tuple[ParamSpec, ...] = (
    # -- lifecycle ---------------------------------------------------------------
    ParamSpec("autostart", True, "Configure and activate at start-up; false: wait in 'unconfigured' for lifecycle transitions (ros2 lifecycle set NODE configure).", group="lifecycle"),
    # -- topics (relative names resolve in the node's namespace) ---------------
    ParamSpec("image_topic", "image", "Input camera image (sensor_msgs/Image); compressed input is read from its '/compressed' subtopic.", group="topics"),
    ParamSpec("camera_info_topic", "camera_info", "Input camera calibration (sensor_msgs/CameraInfo).", group="topics"),
    ParamSpec("pose_topic", "pose", "Input camera pose T_world_cam from the SLAM stack.", group="topics"),
    ParamSpec("fallback_pose_topic", "", "Optional second pose source of the same camera (wheel or visual-inertial odometry, any world frame): an image pose_topic has no pose for (SLAM lost) continues SLAM's last pose with this source's motion, scaled to SLAM's units. Empty: none.", group="topics"),
    ParamSpec("depth_topic", "", "Optional metric depth image (32FC1 m or 16UC1 mm); empty: no depth.", group="topics"),
    ParamSpec("output_image_topic", "restored/image", "Output image, input header unchanged.", group="topics"),
    ParamSpec("output_camera_info_topic", "restored/camera_info", "Output camera_info, paired with each output image.", group="topics"),
    ParamSpec("keyframe_set_topic", "keyframe_set", "One sirdiff_ros/KeyframeSet per restoration target.", group="topics"),
    ParamSpec("status_topic", "status", "Periodic sirdiff_ros/RestoreStatus counters.", group="topics"),
    # -- inputs ------------------------------------------------------------------
    ParamSpec("input_transport", "raw", "raw: sensor_msgs/Image on image_topic; compressed: sensor_msgs/CompressedImage (JPEG or PNG) on image_topic + '/compressed', decoded off the executor thread. The output is a raw Image either way.", choices=("raw", "compressed"), group="inputs"),
    ParamSpec("time_jump_threshold_s", 0.5, "An input stamp this much earlier than the previous one on its topic (bag replayed with --loop, restarted driver, /clock reset) resets association, pose history, keyframes and output order; smaller steps back are dropped as stamp_backwards. Seconds.", min=0.001, max=1e6, group="inputs"),
    ParamSpec("pose_type", "pose_stamped", "Message type on pose_topic.", choices=("pose_stamped", "odometry"), group="inputs"),
    ParamSpec("fallback_pose_type", "odometry", "Message type on fallback_pose_topic.", choices=("pose_stamped", "odometry"), group="inputs"),
    ParamSpec("world_frame", "", "Required header.frame_id of pose messages; empty: accept any.", group="inputs"),
    ParamSpec("expected_frame_id", "", "Required header.frame_id of images; empty: accept any.", group="inputs"),
    ParamSpec("max_image_pixels", 16_777_216, "Images with more pixels (width*height) are rejected.", min=1, max=1 << 30, group="inputs"),
    ParamSpec("sync_queue_size", 10, "Messages kept per input while pairing image and camera_info (approximate time).", min=1, max=1000, group="inputs"),
    ParamSpec("sync_slop_s", 0.01, "Largest stamp difference of a paired image and camera_info (or depth), seconds.", min=0.0, max=1.0, group="inputs"),
    ParamSpec("sync_timeout_s", 0.5, "An image without camera_info after this long is dropped (no_camera_info), seconds.", min=0.01, max=60.0, group="inputs"),
    ParamSpec("pose_history_size", 400, "Poses kept for interpolation at image stamps.", min=2, max=100000, group="inputs"),
    ParamSpec("pose_wait_s", 0.1, "How long an image waits for a pose at or after its stamp before extrapolating (and, with depth_topic, for its depth image before going without), seconds.", min=0.0, max=10.0, group="inputs"),
    ParamSpec("pose_extrapolation_s", 0.05, "Largest extrapolation past the pose history, seconds; beyond it the image has no pose.", min=0.0, max=10.0, group="inputs"),
    ParamSpec("qos_depth", 10, "History depth of input subscriptions.", min=1, max=1000, group="inputs"),
    ParamSpec("qos_reliability", "best_effort", "Reliability of the image/depth subscriptions (best_effort = sensor-data QoS; accepts both kinds of publishers).", choices=("best_effort", "reliable"), group="inputs"),
    ParamSpec("output_qos_depth", 10, "History depth of output publishers (reliable: both kinds of subscribers match).", min=1, max=1000, group="inputs"),
    # -- restoration ---------------------------------------------------------------
    ParamSpec("mode", "stream", "stream: every image republished in input order; keyframes: keyframes only.", choices=("stream", "keyframes"), read_only=False, group="restoration"),
    ParamSpec("backend", "fusion", "Restoration backend: passthrough, fusion, sirdiff, sirdiff-single (or a registered name).", group="restoration"),
    ParamSpec("device", "auto", "Device of the backend: cpu, cuda, cuda:N, mps, or auto (CUDA, then MPS, then the CPU, among those the backend runs on; the choice is logged).", group="restoration"),
    ParamSpec("checkpoint", "", "Model checkpoint for backends that take one; empty: the backend's default (shipped weights).", group="restoration"),
    ParamSpec("steps", 0, "Sampling steps for diffusion backends; 0: the backend's default.", min=0, max=1000, group="restoration"),
    ParamSpec("num_views", _PC.num_views, "Views restored jointly (target + partners).", min=1, max=16, group="restoration"),
    # -- keyframes, blur gate, view selection (sirdiff_ros.core.pipeline.PipelineConfig) --
    ParamSpec("min_translation", _KF.min_translation, "A frame becomes a keyframe after this much camera motion, metres.", min=0.0, max=100.0, group="keyframes"),
    ParamSpec("min_rotation_deg", _KF.min_rotation_deg, "... or after this much rotation, degrees.", min=0.0, max=180.0, group="keyframes"),
    ParamSpec("min_time_gap_s", _KF.min_time_gap_s, "No keyframe within this time of the previous one, seconds.", min=0.0, max=60.0, group="keyframes"),
    ParamSpec("max_time_gap_s", _KF.max_time_gap_s, "A keyframe at least this often, moving or not, seconds.", min=0.0, max=3600.0, group="keyframes"),
    ParamSpec("max_keyframes", _KF.max_keyframes, "Keyframes kept as partner candidates.", min=1, max=10000, group="keyframes"),
    ParamSpec("keyframe_max_bytes", _KF.max_bytes, "Memory bound of the keyframe buffer, bytes.", min=1, max=1 << 40, group="keyframes"),
    ParamSpec("blur_ratio", _PC.blur_ratio, "A keyframe is a restoration target when its sharpness is below this fraction of its recent peers'.", min=0.01, max=1.0, group="keyframes"),
    ParamSpec("gate_window", _PC.gate_window, "Recent keyframes whose sharpness forms the blur reference.", min=1, max=1000, group="keyframes"),
    ParamSpec("gate_quantile", _PC.gate_quantile, "Quantile of the peers' sharpness used as the reference.", min=0.0, max=1.0, group="keyframes"),
    ParamSpec("gate_min_peers", _PC.gate_min_peers, "Keyframes needed before any target is chosen.", min=1, max=1000, group="keyframes"),
    ParamSpec("exposure_s", _PC.exposure_s, "Camera exposure time, seconds; > 0 lets the camera's motion predict and invert blur (0: sharpness gate only, no deblurring).", min=0.0, max=1.0, group="keyframes"),
    ParamSpec("motion_blur_px", _PC.motion_blur_px, "With exposure_s: predicted motion blur (pixels) that makes a frame a target.", min=0.1, max=1000.0, group="keyframes"),
    ParamSpec("max_velocity_gap_s", _PC.max_velocity_gap_s, "With exposure_s: no velocity (no prediction) from a previous pose older than this, seconds.", min=0.001, max=60.0, group="keyframes"),
    ParamSpec("partner_ring", _PC.partner_ring, "Recent frames that are not keyframes, also partner candidates (0: keyframes only).", min=0, max=100, group="keyframes"),
    ParamSpec("restore_non_keyframes", _PC.restore_non_keyframes, "Gate and restore every posed frame, not only keyframes (stream mode: a blurred frame between restored ones loses SLAM's track).", group="keyframes"),
    ParamSpec("deconvolve", _PC.deconvolve, "With exposure_s: deblur every view of a set by its own motion before the backend.", group="restoration"),
    ParamSpec("min_overlap", _PC.min_overlap, "Partners must see at least this fraction of the target's view.", min=0.0, max=1.0, group="keyframes"),
    ParamSpec("min_depth", float(_PC.depth_range[0]), "Scene depth range assumed for overlap without depth, near end, metres.", min=0.001, max=1000.0, group="keyframes"),
    ParamSpec("max_depth", float(_PC.depth_range[1]), "... far end, metres.", min=0.001, max=1e6, group="keyframes"),
    ParamSpec("sharpness_weight", _PC.sharpness_weight, "Weight of partner sharpness against overlap when choosing partners.", min=0.0, max=1.0, group="keyframes"),
    ParamSpec("latency_budget_s", 1.0, "stream mode: a target not restored this long after arrival is published as the original (latency_budget).", min=0.0, max=3600.0, read_only=False, group="restoration"),
    ParamSpec("queue_size", 2, "Restoration targets waiting for the worker.", min=1, max=100, group="restoration"),
    ParamSpec("num_views_under_load", 3, "Views (target + partners) of a target restored while other targets wait for a worker: each partner costs an alignment, so fewer of them restore more targets instead of passing them through (queue_full); the best partners of the full set are kept. 0: always num_views.", min=0, max=16, read_only=False, group="restoration"),
    ParamSpec("worker_threads", 2, "Targets restored at once by a backend that takes parallel calls (fusion); model backends use one.", min=1, max=16, group="restoration"),
    ParamSpec("drop_policy", "drop_oldest", "When the worker queue is full: drop_oldest (the waiting target is passed through) or drop_newest.", choices=("drop_oldest", "drop_newest"), read_only=False, group="restoration"),
    ParamSpec("max_pending_output", 64, "stream mode: images held behind a pending target; beyond it the oldest target is passed through.", min=1, max=10000, group="restoration"),
    # -- diagnostics --------------------------------------------------------------------
    ParamSpec("diagnostics_period_s", 1.0, "Period of /diagnostics and status messages, seconds.", min=0.05, max=60.0, group="diagnostics"),
    ParamSpec("log_throttle_s", 5.0, "Each rejection kind is logged at most once per this period, seconds.", min=0.0, max=3600.0, read_only=False, group="diagnostics"),
)

SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMS}


def defaults() -> dict[str, Any]:
    return {p.name: p.default for p in PARAMS}


def pipeline_config(values: dict[str, Any]) -> PipelineConfig:
    """The core pipeline's configuration from parameter values (ValueError if inconsistent)."""
    v = values
    keyframe = KeyframeConfig(
        min_translation=v["min_translation"],
        min_rotation_deg=v["min_rotation_deg"],
        min_time_gap_s=v["min_time_gap_s"],
        max_time_gap_s=v["max_time_gap_s"],
        max_keyframes=v["max_keyframes"],
        max_bytes=v["keyframe_max_bytes"],
    )
    if v["min_depth"] >= v["max_depth"]:
        raise ValueError(f"min_depth ({v['min_depth']}) must be < max_depth ({v['max_depth']})")
    return PipelineConfig(
        keyframe=keyframe,
        num_views=v["num_views"],
        min_overlap=v["min_overlap"],
        blur_ratio=v["blur_ratio"],
        gate_window=v["gate_window"],
        gate_quantile=v["gate_quantile"],
        gate_min_peers=v["gate_min_peers"],
        depth_range=(v["min_depth"], v["max_depth"]),
        sharpness_weight=v["sharpness_weight"],
        exposure_s=v["exposure_s"],
        motion_blur_px=v["motion_blur_px"],
        max_velocity_gap_s=v["max_velocity_gap_s"],
        deconvolve=v["deconvolve"],
        partner_ring=v["partner_ring"],
        restore_non_keyframes=v["restore_non_keyframes"],
    )


def check_value(name: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for parameter ``name``, or None if it is."""
    spec = SPECS.get(name)
    if spec is None:
        return f"unknown parameter {name!r}"
    want = spec.type
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        return f"{name} must be {want.__name__}, got {type(value).__name__} {value!r}"
    value = cast(Any, value)  # of the declared type from here on
    if want is float and not math.isfinite(value):
        return f"{name} must be finite, got {value!r}"
    if spec.min is not None and value < spec.min:
        return f"{name} must be >= {spec.min}, got {value!r}"
    if spec.max is not None and value > spec.max:
        return f"{name} must be <= {spec.max}, got {value!r}"
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}; got {value!r}"
    if name == "device" and not DEVICE_PATTERN.match(value):
        return f"device must be cpu, auto, cuda, cuda:N or mps; got {value!r}"
    return None


def markdown_table() -> str:
    """The parameters as a markdown table for the README."""
    rows = ["| parameter | default | range / values | runtime | description |", "|---|---|---|---|---|"]
    for p in PARAMS:
        if p.choices:
            rng = ", ".join(p.choices)
        elif p.min is not None or p.max is not None:
            rng = f"{_fmt(p.min)} .. {_fmt(p.max)}"
        else:
            rng = ""
        rows.append(f"| `{p.name}` | `{p.default!r}` | {rng} | {'' if p.read_only else 'yes'} | {p.description} |")
    return "\n".join(rows)


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    return str(int(v)) if float(v).is_integer() else str(v)


def params_yaml() -> str:
    """``config/restore.yaml``: every parameter with its default, grouped, with descriptions."""
    lines = [
        "# Parameters of the sirdiff_ros restore node (sirdiff-restore / restore_node).",
        "# Generated from sirdiff_ros/ros/params.py (python -m sirdiff_ros.ros.params --yaml);",
        "# the defaults here equal the declared ones (test/test_node_units.py checks).",
        "# `/**` applies to the node under any name or namespace.",
        "/**:",
        "  ros__parameters:",
    ]
    group = None
    for p in PARAMS:
        if p.group != group:
            group = p.group
            lines.append(f"    # -- {group} --")
        lines.append(f"    # {p.description}")
        lines.append(f"    {p.name}: {_yaml_value(p.default)}")
    return "\n".join(lines) + "\n"


def _yaml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, float):
        return repr(v)
    return str(v)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--yaml"]:
        sys.stdout.write(params_yaml())
    elif sys.argv[1:] == ["--markdown"]:
        print(markdown_table())
    else:
        sys.exit("usage: python -m sirdiff_ros.ros.params --yaml | --markdown")
