"""Start the sirdiff_ros restore node on a real ROS 2 install.

    ros2 launch sirdiff_ros restore.launch.py image:=/camera/image_raw \
        camera_info:=/camera/camera_info pose:=/orb_slam3/camera_pose backend:=sirdiff device:=cuda

Arguments: params_file (default: the installed config/restore.yaml),
namespace, the input topics (remapped onto the node's relative names),
pose_type, backend, device, checkpoint, mode and input_transport (empty: keep
the params file's value), use_sim_time (default false) and autostart (default
true: the lifecycle node configures and activates itself; false: it waits for
``ros2 lifecycle set /sirdiff_restore configure`` and ``activate``). The same
configuration runs without launch as
``sirdiff-restore --ros-args --params-file config/restore.yaml``.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

# Launch arguments that override a parameter only when given (non-empty).
OVERRIDES = ("backend", "device", "checkpoint", "pose_type", "mode", "input_transport")
# Launch arguments for boolean parameters, always given.
FLAGS = ("autostart", "use_sim_time")
# Launch arguments remapped onto the node's relative topic names.
REMAPS = ("image", "camera_info", "pose", "restored/image", "restored/camera_info", "keyframe_set")


def _setup(context, *args, **kwargs):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    overrides = {name: get(name) for name in OVERRIDES if get(name)}
    overrides.update({name: get(name).strip().lower() in ("true", "1", "yes") for name in FLAGS})
    if get("depth"):
        overrides["depth_topic"] = get("depth")
    remappings = [(topic, get(_arg(topic))) for topic in REMAPS if get(_arg(topic))]
    return [
        Node(
            package="sirdiff_ros",
            executable="restore_node",
            name="sirdiff_restore",
            namespace=get("namespace"),
            parameters=[get("params_file"), overrides],
            remappings=remappings,
            output="screen",
            emulate_tty=True,
        )
    ]


def _arg(topic):
    return {"restored/image": "output_image", "restored/camera_info": "output_camera_info"}.get(topic, topic)


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("sirdiff_ros"), "config", "restore.yaml")
    return LaunchDescription(
        [
            DeclareLaunchArgument("params_file", default_value=default_params, description="Node parameters (YAML)."),
            DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node and its relative topics."),
            DeclareLaunchArgument("image", default_value="", description="Input image topic (empty: 'image' in the namespace)."),
            DeclareLaunchArgument("camera_info", default_value="", description="Input camera_info topic."),
            DeclareLaunchArgument("pose", default_value="", description="Input camera pose topic (PoseStamped or Odometry, see pose_type)."),
            DeclareLaunchArgument("depth", default_value="", description="Optional depth image topic (empty: no depth)."),
            DeclareLaunchArgument("output_image", default_value="", description="Output image topic (empty: 'restored/image')."),
            DeclareLaunchArgument("output_camera_info", default_value="", description="Output camera_info topic."),
            DeclareLaunchArgument("keyframe_set", default_value="", description="KeyframeSet output topic."),
            DeclareLaunchArgument("pose_type", default_value="", description="pose_stamped or odometry (empty: params file)."),
            DeclareLaunchArgument("backend", default_value="", description="passthrough, fusion, sirdiff, sirdiff-single (empty: params file)."),
            DeclareLaunchArgument("device", default_value="", description="cpu, cuda, cuda:N, mps, auto (empty: params file)."),
            DeclareLaunchArgument("checkpoint", default_value="", description="Model checkpoint (empty: params file / shipped weights)."),
            DeclareLaunchArgument("mode", default_value="", description="stream or keyframes (empty: params file)."),
            DeclareLaunchArgument("input_transport", default_value="", description="raw or compressed (image/compressed; empty: params file)."),
            DeclareLaunchArgument("use_sim_time", default_value="false", description="Use /clock (bag replay with sirdiff-play --clock)."),
            DeclareLaunchArgument("autostart", default_value="true", description="Configure and activate the lifecycle node at start-up."),
            OpaqueFunction(function=_setup),
        ]
    )
