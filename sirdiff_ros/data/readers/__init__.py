"""Dataset readers: every format yields :class:`~sirdiff_ros.core.frame.Frame` records.

Formats (see each module for the exact subset supported):
``tum`` (TUM RGB-D), ``synth`` (``sirdiff-synth`` folders), ``euroc`` (EuRoC
ASL), ``tartanair``, ``hypersim``, ``bag`` (ROS 1 ``.bag``, ROS 2 ``.db3`` /
``.mcap``), ``robustmvd`` and ``slambook`` (the real folders in
``../shared/data``). :func:`read_frames` detects the format of a path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

from ...core.frame import Frame
from ..bags import read_bag_frames
from .common import DatasetError
from .euroc import read_euroc
from .hypersim import read_hypersim
from .shared import read_robustmvd_sample, read_slambook_rgbd
from .tartanair import read_tartanair
from .tum import SYNTH_META_FILE, read_synth_folder, read_tum_rgbd

__all__ = [
    "DatasetError",
    "READERS",
    "detect_format",
    "read_frames",
    "read_tum_rgbd",
    "read_synth_folder",
    "read_euroc",
    "read_tartanair",
    "read_hypersim",
    "read_robustmvd_sample",
    "read_slambook_rgbd",
    "read_bag_frames",
]

READERS: dict[str, Callable[..., Iterator[Frame]]] = {
    "synth": read_synth_folder,
    "tum": read_tum_rgbd,
    "euroc": read_euroc,
    "tartanair": read_tartanair,
    "hypersim": read_hypersim,
    "bag": read_bag_frames,
    "robustmvd": read_robustmvd_sample,
    "slambook": read_slambook_rgbd,
}


def detect_format(path: str | Path) -> str:
    """Name of the reader for ``path`` (a key of :data:`READERS`), from its files."""
    p = Path(path)
    if p.is_file():
        if p.suffix in (".bag", ".mcap", ".db3"):
            return "bag"
        raise DatasetError(f"{p} is a file but not a bag (.bag, .mcap, .db3)")
    if not p.is_dir():
        raise DatasetError(f"{p} does not exist")
    checks = [
        ("bag", lambda: (p / "metadata.yaml").is_file()),
        ("synth", lambda: (p / SYNTH_META_FILE).is_file() and (p / "rgb.txt").is_file()),
        ("tum", lambda: (p / "rgb.txt").is_file()),
        ("euroc", lambda: (p / "mav0").is_dir() or (p / "cam0" / "data.csv").is_file()),
        ("tartanair", lambda: (p / "image_left").is_dir() and (p / "pose_left.txt").is_file()),
        ("hypersim", lambda: (p / "_detail").is_dir() and (p / "images").is_dir()),
        ("robustmvd", lambda: (p / "key" / "K.npy").is_file()),
        ("slambook", lambda: (p / "color").is_dir() and (p / "pose.txt").is_file()),
    ]
    for name, check in checks:
        if check():
            return name
    raise DatasetError(f"cannot tell the dataset format of {p}; expected one of: {', '.join(READERS)}")


def read_frames(path: str | Path, fmt: str | None = None, **kwargs: Any) -> Iterator[Frame]:
    """Frames of ``path`` with the reader of ``fmt`` (detected when None); ``kwargs`` go to the reader."""
    fmt = fmt or detect_format(path)
    if fmt not in READERS:
        raise DatasetError(f"unknown dataset format {fmt!r}; known: {', '.join(READERS)}")
    return READERS[fmt](path, **kwargs)
