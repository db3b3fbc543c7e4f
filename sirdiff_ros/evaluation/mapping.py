"""Downstream mapping: does incremental SfM (COLMAP) work better on restored images?

The keyframes of one stream (input, or one backend's output) are handed to
pycolmap: SIFT extraction with the bag's pinhole intrinsics held fixed,
exhaustive matching, incremental mapping. We report how many images were
registered, the mean reprojection error of the map, and the camera pose error
against the bag's poses after Sim3 alignment (see :mod:`.alignment`).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..core.geometry import CameraIntrinsics, Pose
from .alignment import AlignmentError, aligned_pose_errors

__all__ = ["MappingError", "MappingView", "MappingOptions", "MappingResult", "run_mapping"]

log = logging.getLogger(__name__)


class MappingError(RuntimeError):
    """Mapping could not be attempted (no images, mixed cameras)."""


@dataclass(frozen=True)
class MappingView:
    """One image for the map; ``pose`` (T_world_cam) is the reference, if known.

    ``image`` is a uint8 (H, W) / (H, W, 3) RGB array, or the path of an
    image file already written (long replays keep keyframes on disk).
    """

    name: str
    image: np.ndarray | Path
    intrinsics: CameraIntrinsics
    pose: Pose | None = None


@dataclass(frozen=True)
class MappingOptions:
    """SfM settings, relaxed from COLMAP's defaults for short keyframe sets.

    COLMAP's defaults (100 initial inliers, 16 degree initial triangulation
    angle, models of >= 10 images) target photo collections; a few keyframes
    from a robot have small baselines and few images.
    """

    # One thread: COLMAP's multi-threaded mapping is not deterministic, and
    # the report must be reproducible (input vs backends differ by little).
    num_threads: int = 1
    max_features: int = 4000
    # Exhaustive matching is quadratic in the images; beyond this many,
    # each image is matched with its ``sequential_overlap`` successors
    # (keyframes come in stream order).
    exhaustive_max_images: int = 20
    sequential_overlap: int = 8
    seed: int = 0
    init_min_num_inliers: int = 50
    init_min_tri_angle_deg: float = 4.0
    abs_pose_min_num_inliers: int = 15
    min_model_size: int = 3
    max_runtime_s: float = 300.0


@dataclass(frozen=True)
class MappingResult:
    """Outcome of SfM on one stream of keyframes.

    ``registered``: images in the largest model; ``reprojection_px``: its
    mean reprojection error (NaN without a model); ``ate_rmse_m``,
    ``rotation_deg``: pose errors after Sim3 alignment (NaN with fewer than 3
    registered images that have reference poses, or degenerate geometry).
    """

    images: int
    registered: int
    points3d: int
    reprojection_px: float
    ate_rmse_m: float
    rotation_deg: float
    runtime_s: float

    @property
    def registered_fraction(self) -> float:
        return self.registered / self.images if self.images else math.nan

    def as_dict(self) -> dict[str, float | int]:
        return {
            "images": self.images,
            "registered": self.registered,
            "registered_fraction": self.registered_fraction,
            "points3d": self.points3d,
            "reprojection_px": self.reprojection_px,
            "ate_rmse_m": self.ate_rmse_m,
            "rotation_deg": self.rotation_deg,
            "runtime_s": self.runtime_s,
        }


def _pose_from_rigid(cam_from_world) -> Pose:  # pycolmap.Rigid3d -> T_world_cam
    T = np.eye(4)
    T[:3, :] = np.asarray(cam_from_world.matrix())
    return Pose.from_matrix(T).inverse()


def run_mapping(views: Sequence[MappingView], options: MappingOptions | None = None) -> MappingResult:
    """Run pycolmap SfM on ``views`` in a temporary folder and measure it.

    All views must share one pinhole camera (the bag's camera_info); it is
    held fixed during bundle adjustment so that the map's quality reflects the
    images, not a drifting calibration.
    """
    import pycolmap  # imported here: a 38 MB native module only mapping needs

    opts = options or MappingOptions()
    if not views:
        raise MappingError("no images to map")
    K = views[0].intrinsics
    if any(v.intrinsics != K for v in views):
        raise MappingError("all images must share one camera (same intrinsics) for mapping")
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise MappingError("image names must be unique")
    start = time.perf_counter()
    pycolmap.set_random_seed(opts.seed)
    # COLMAP logs every image at INFO level through glog; keep warnings only.
    pycolmap.logging.minloglevel = max(int(pycolmap.logging.minloglevel), int(pycolmap.logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="sirdiff_map_") as tmp:
        root = Path(tmp)
        image_dir = root / "images"
        image_dir.mkdir()
        for v in views:
            if isinstance(v.image, Path):
                shutil.copyfile(v.image, image_dir / v.name)
                continue
            bgr = v.image if v.image.ndim == 2 else cv2.cvtColor(v.image, cv2.COLOR_RGB2BGR)
            if not cv2.imwrite(str(image_dir / v.name), bgr):
                raise MappingError(f"could not write {v.name} for mapping")
        db = root / "database.db"

        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = "PINHOLE"
        reader.camera_params = f"{K.fx},{K.fy},{K.cx},{K.cy}"
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.num_threads = opts.num_threads
        extraction.sift.max_num_features = opts.max_features
        pycolmap.extract_features(
            db,
            image_dir,
            image_names=names,
            camera_mode=pycolmap.CameraMode.SINGLE,
            reader_options=reader,
            extraction_options=extraction,
            device=pycolmap.Device.cpu,
        )
        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = opts.num_threads
        if len(views) <= opts.exhaustive_max_images:
            pycolmap.match_exhaustive(db, matching_options=matching, device=pycolmap.Device.cpu)
        else:
            pairing = pycolmap.SequentialPairingOptions()
            pairing.overlap = opts.sequential_overlap
            pycolmap.match_sequential(db, matching_options=matching, pairing_options=pairing, device=pycolmap.Device.cpu)

        pipe = pycolmap.IncrementalPipelineOptions()
        pipe.num_threads = opts.num_threads
        pipe.random_seed = opts.seed
        pipe.min_model_size = opts.min_model_size
        pipe.max_runtime_seconds = int(opts.max_runtime_s)
        pipe.ba_refine_focal_length = False
        pipe.ba_refine_principal_point = False
        pipe.ba_refine_extra_params = False
        pipe.extract_colors = False
        pipe.mapper.init_min_num_inliers = opts.init_min_num_inliers
        pipe.mapper.init_min_tri_angle = opts.init_min_tri_angle_deg
        pipe.mapper.abs_pose_min_num_inliers = opts.abs_pose_min_num_inliers
        pipe.mapper.abs_pose_refine_focal_length = False
        pipe.mapper.abs_pose_refine_extra_params = False
        pipe.mapper.num_threads = opts.num_threads
        pipe.mapper.random_seed = opts.seed
        pipe.triangulation.random_seed = opts.seed
        out = root / "sparse"
        out.mkdir()
        models = pycolmap.incremental_mapping(db, image_dir, out, options=pipe)

    runtime = time.perf_counter() - start
    if not models:
        return MappingResult(len(views), 0, 0, math.nan, math.nan, math.nan, runtime)
    rec = max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))
    by_name = {v.name: v for v in views}
    est, ref = [], []
    for image in rec.images.values():
        if not image.has_pose:
            continue
        view = by_name.get(image.name)
        if view is not None and view.pose is not None:
            est.append(_pose_from_rigid(image.cam_from_world()))
            ref.append(view.pose)
    ate = rot = math.nan
    if len(est) >= 3:
        try:
            err = aligned_pose_errors(est, ref)
            ate, rot = err.ate_rmse, err.rotation_deg_mean
        except AlignmentError as exc:  # e.g. registered cameras on a line
            log.info("pose alignment skipped: %s", exc)
    reproj = float(rec.compute_mean_reprojection_error()) if rec.num_points3D() else math.nan
    return MappingResult(len(views), int(rec.num_reg_images()), int(rec.num_points3D()), reproj, ate, rot, runtime)
