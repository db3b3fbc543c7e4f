"""SLAM in the loop: ORB-SLAM3 (optional extra ``sirdiff_ros[slam]``) consuming image streams.

:mod:`.vocabulary` builds DBoW2 vocabularies offline (no extra needed);
:mod:`.orbslam` runs ORB-SLAM3 and measures tracking and trajectory error;
:mod:`.node` is the ROS 2 node that publishes ORB-SLAM3's camera pose.
"""
