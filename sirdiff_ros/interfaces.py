"""Where this package's message definitions live, for rosbags' typestore.

The ``.msg`` files are the single source of truth: rclpy uses the classes
generated from them, rosbags registers the same text.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MESSAGE_NAMES", "message_dir", "message_definitions", "make_typestore"]

MESSAGE_NAMES = ("ViewInfo", "KeyframeSet", "RestoreStatus")


def message_dir() -> Path:
    """The ``msg/`` folder: the source tree's, else the installed share dir."""
    here = Path(__file__).resolve().parent
    candidates = [here.parent / "msg"]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "share" / "sirdiff_ros" / "msg")
    for c in candidates:
        if (c / "KeyframeSet.msg").is_file():
            return c
    raise FileNotFoundError(f"sirdiff_ros message definitions not found in: {', '.join(map(str, candidates))}")


def message_definitions() -> dict[str, str]:
    """``{'sirdiff_ros/msg/KeyframeSet': text, ...}`` for every message."""
    d = message_dir()
    return {f"sirdiff_ros/msg/{n}": (d / f"{n}.msg").read_text() for n in MESSAGE_NAMES}


def make_typestore():  # -> rosbags.typesys.store.Typestore
    """A ROS 2 Kilted typestore with this package's messages registered."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for name, text in message_definitions().items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store
