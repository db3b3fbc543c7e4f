"""sirdiff_ros: multi-view restoration of motion-blurred SLAM keyframes.

The ROS-free core lives in :mod:`sirdiff_ros.core`, :mod:`sirdiff_ros.data`,
:mod:`sirdiff_ros.model` and :mod:`sirdiff_ros.evaluation`; the rclpy layer in
:mod:`sirdiff_ros.ros`.

The message module generated from ``msg/`` (``sirdiff_ros.msg``) shares this
package's name. In a colcon install both live in one directory; in the plain
venv the generated package is installed beside ours, so extend ``__path__``
over every ``sirdiff_ros`` directory on ``sys.path`` to find ``.msg`` there.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
