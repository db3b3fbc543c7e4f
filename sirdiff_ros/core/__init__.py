"""ROS-free core: geometry, frames, keyframes, view selection, restorers."""
