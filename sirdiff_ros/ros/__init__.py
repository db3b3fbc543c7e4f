"""The rclpy layer: the restore node, bag play/record tools, the demo.

Submodules without ROS imports (params, association,
sequencer, worker, stats) hold the logic and are tested without spinning ROS;
restore_node and bag_tools are the thin rclpy parts.
"""
