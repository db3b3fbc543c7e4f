"""Backends ``sirdiff`` (all views of a set denoised jointly) and ``sirdiff-single``
(the same weights, each requested view run alone: the single-view baseline).

Frames in, frames' images out: mono images are replicated to RGB and converted
back; sizes that are not a multiple of the model's factor are padded
(reflect) and cropped back; partners whose size differs from the target's are
resized to it (they come from the same camera in the online core, so this is
a guard, not the normal path).
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..device import DeviceError, resolve_device
from ..frame import Frame
from ..profiling import stage
from ..registration import REGISTRATION, registered_views
from .base import RestoredView, RestorerError, RestoreRequest, RestoreResult, register_restorer

__all__ = ["DEFAULT_CHECKPOINT", "SirDiffRestorer", "SingleViewSirDiffRestorer"]

# OpenMP worker threads that spin-wait for work hold a shared CPU's cores
# against the SLAM stack (and made a test run 8x slower next to one other job):
# idle threads sleep unless the user chose otherwise. Read once, when torch
# loads (imported lazily, after this).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The model shipped with the package (trained by `sirdiff-train`, see its MODEL_CARD.md).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "weights" / "sirdiff-cpu"

# The shipped model was trained on 16x16-latent crops; one 3D attention over a
# whole 640x480 view set (4 x 80 x 60 tokens at its first attention level)
# costs most of a denoising step there. Tiles of 40 latent px (160 image px,
# overlapping by 8) measured the same held-out PSNR at 640x480 (+0.00 dB mean
# over 3 view sets against whole images) and keep each network call
# convolution-bound, where ONNX Runtime is the faster engine (bench/README.md).
AUTO_TILE = 40
AUTO_TILE_ABOVE = 96 * 96
# work_scale 'auto' on the CPU: the model runs on views of at most this many pixels
# (320x240, the resolution it was validated at) and its output is upsampled
# (``_run``): 4x fewer pixels through the networks of a 640x480 set.
AUTO_WORK_PIXELS = 320 * 240

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX tiles or AVX512-BF16), where
    PyTorch's bf16 convolutions and matmuls run faster than float32."""
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private: absent means unknown, no
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def default_cpu_threads() -> int:
    """Compute threads of the model on the CPU by default: half the cores, at least one.

    A robot's CPU also runs its SLAM stack. PyTorch's OpenMP regions stall
    whenever one of their threads waits for a core: next to one busy process on
    2 cores, a 320x240 UNet call took 8.0 s on two threads and 0.9 s on one.
    """
    return max(1, (os.cpu_count() or 2) // 2)


def _resolve_dtype(dtype: str | None, device: str):
    import torch

    if dtype in (None, "auto"):
        # Half precision on GPUs (bf16 where supported); on the CPU bf16 where it is
        # native (1.6-1.7x float32 on a 320x240 set, within 0.05 dB), float32 otherwise.
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device == "cpu" and cpu_has_native_bf16() else torch.float32
    if dtype not in _DTYPES:
        raise RestorerError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(sorted(_DTYPES))}")
    return getattr(torch, _DTYPES[dtype])


def _load_pipeline(checkpoint: str | Path | None, sd21: str | Path | None, svd: str | Path | None, device: str, dtype):
    """Pipeline from a trained checkpoint folder, or from SD 2.1 (+ SVD) folders (the paper's initialisation)."""
    from ...model.pipeline import CheckpointError, SirDiffPipeline

    if sd21 is not None:
        from ...model.encoders import EncoderError, VaeEncoder
        from ...model.pipeline import Parametrization, make_scheduler
        from ...model.pretrained import PretrainedWeightsError, build_from_pretrained

        try:
            encoder = VaeEncoder.from_folder(Path(sd21) / "vae")
            # Condition = VAE-encoded degraded views, as many channels as the latents.
            unet, _report = build_from_pretrained(sd21, svd, cond_channels=encoder.latent_channels)
        except (EncoderError, PretrainedWeightsError, OSError) as exc:
            raise RestorerError(f"cannot build the sirdiff model from {sd21} / {svd}: {exc}") from exc
        # SD's latents are not residuals of degraded latents; sample them directly.
        pipe = SirDiffPipeline(unet=unet, scheduler=make_scheduler("ddim"), encoder=encoder,
                               parametrization=Parametrization(residual=False))
        return pipe.to(device, dtype)
    folder = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    try:
        return SirDiffPipeline.from_checkpoint(folder, device=device, dtype=dtype)
    except CheckpointError as exc:
        raise RestorerError(str(exc)) from exc


class SirDiffRestorer:
    """Multi-view diffusion restoration of a view set (backend ``sirdiff``).

    Options: ``checkpoint`` (folder; default: the shipped weights), or ``sd21``
    (and optionally ``svd``) folders for an SD-2.1-initialised model;
    ``device`` ('cpu', 'cuda', 'cuda:0', 'mps' or 'auto': CUDA, then MPS, then the CPU); ``steps`` (default from the
    checkpoint); ``seed`` (noise seed, fixed per call: same input, same output);
    ``dtype`` ('auto': bf16 on GPUs that have it, else fp16; on the CPU
    bf16 where the CPU has native bf16 (:func:`cpu_has_native_bf16`), else
    float32; 'float32', 'float16', 'bfloat16');
    ``memory_budget_mb`` (tile/chunk to stay under it); ``tile_size`` (latent px;
    'auto': :data:`AUTO_TILE` where a view set's latent grid exceeds
    :data:`AUTO_TILE_ABOVE` pixels, whole otherwise; None: whole);
    ``work_scale`` (the model runs on the views resized by this factor, in
    (0, 1], and its output is upsampled to the views' size; 'auto': on the
    CPU the largest scale, at most 1, that keeps a view within
    :data:`AUTO_WORK_PIXELS`, on accelerators 1);
    ``engine`` ('auto': ONNX Runtime where it is installed and the model runs
    float32 on the CPU, PyTorch otherwise; 'torch'; 'onnx'), ``threads``
    (intra-op threads of either engine; default on the CPU:
    :func:`default_cpu_threads`) and
    ``onnx_cache`` (folder of the exported networks, see
    :mod:`sirdiff_ros.model.onnx_engine`).
    """

    name = "sirdiff"
    joint = True

    def __init__(self, checkpoint: str | Path | None = None, device: str = "cpu", steps: int | None = None,
                 seed: int = 0, dtype: str | None = "auto", memory_budget_mb: float | None = None,
                 tile_size: int | str | None = "auto", sd21: str | Path | None = None, svd: str | Path | None = None,
                 engine: str = "auto", threads: int | None = None, onnx_cache: str | Path | None = None,
                 work_scale: float | str = "auto", **unknown: Any) -> None:
        if unknown:
            raise RestorerError(f"unknown option(s) for {self.name}: {', '.join(sorted(unknown))}")
        try:
            self.device_choice = resolve_device(device)
        except DeviceError as exc:
            raise RestorerError(str(exc)) from exc
        device = self.device_choice.device
        if steps is not None and int(steps) < 1:
            raise RestorerError(f"steps must be >= 1, got {steps}")
        self.device = device
        if engine == "onnx" and dtype in (None, "auto"):
            dtype = "float32"  # what ONNX Runtime runs
        self.dtype = _resolve_dtype(dtype, device)
        self.pipe = _load_pipeline(checkpoint, sd21, svd, device, self.dtype)
        self.steps = int(steps) if steps is not None else int(self.pipe.default_steps)
        self.seed = int(seed)
        self.memory_budget_mb = memory_budget_mb
        if not (tile_size is None or tile_size == "auto" or (isinstance(tile_size, int) and tile_size > 0)):
            raise RestorerError(f"tile_size must be a positive number of latent pixels, 'auto' or None, got {tile_size!r}")
        self.tile_size = tile_size
        if work_scale != "auto" and not (isinstance(work_scale, (int, float)) and 0.0 < float(work_scale) <= 1.0):
            raise RestorerError(f"work_scale must be in (0, 1] or 'auto', got {work_scale!r}")
        self.work_scale = work_scale
        self.checkpoint = str(checkpoint if checkpoint is not None else (sd21 or DEFAULT_CHECKPOINT))
        if self.pipe.view_registration not in ("none", REGISTRATION):
            raise RestorerError(f"{self.checkpoint} was trained on views registered by "
                                f"{self.pipe.view_registration!r}; this version knows 'none' and {REGISTRATION!r}")
        self._lock = threading.Lock()  # the scheduler keeps per-call state
        self.engine = self._start_engine(engine, threads, onnx_cache)

    def _start_engine(self, engine: str, threads: int | None, onnx_cache: str | Path | None) -> str:
        import torch

        from ...model.onnx_engine import onnxruntime_available

        if engine not in ("auto", "torch", "onnx"):
            raise RestorerError(f"engine must be 'auto', 'torch' or 'onnx', got {engine!r}")
        if threads is not None and int(threads) < 1:
            raise RestorerError(f"threads must be >= 1, got {threads}")
        if threads is None and self.device == "cpu":
            threads = default_cpu_threads()
        if threads is not None:
            torch.set_num_threads(int(threads))
        cpu_float32 = self.device == "cpu" and self.dtype == torch.float32
        if engine == "auto":
            # float32 on the CPU: ONNX Runtime (faster on the convolutions, and it keeps
            # its speed next to other busy processes; bench/README.md).
            engine = "onnx" if cpu_float32 and onnxruntime_available() else "torch"
        if engine == "onnx":
            if not onnxruntime_available():
                raise RestorerError("engine 'onnx' needs onnxruntime (pip install sirdiff_ros[onnx])")
            if not cpu_float32:
                raise RestorerError(f"engine 'onnx' runs float32 on the CPU, not {self.dtype} on {self.device}")
            # On the CPU the count was set above (given, or the default).
            self.pipe.use_engine("onnx", threads=torch.get_num_threads(), cache_dir=onnx_cache)
        elif self.device == "cpu":
            self.pipe.use_channels_last()
        return engine

    # ----------------------------------------------------------- conversion
    @staticmethod
    def _rgb(frame: Frame, size: tuple[int, int]) -> np.ndarray:
        img = frame.image
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if (img.shape[1], img.shape[0]) != size:
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        return img

    def _run(self, sets: list[list[np.ndarray]], output_views: list[int] | None = None,
             deblurred: bool = False) -> tuple[np.ndarray, int]:
        """Restore B sets of N same-size RGB uint8 views -> ((B, K, H, W, 3) uint8, tiles per step),
        K the ``output_views`` positions (default: all N); ``deblurred``: the views were
        deblurred by their own motion (the checkpoint's head for those, where it has one)."""
        h, w = sets[0][0].shape[:2]
        scale = self.scale_for(w, h)
        if scale < 1.0:
            # The model restores a reduced set and its output is upsampled: on
            # real 640x480 frames this kept all but 0.1 dB of the full-resolution
            # gain at a fraction of the cost, while adding the upsampled change to
            # the full-resolution view instead (keeping its detail) kept only half
            # of the gain: the model's gain is mostly noise and blur the full-
            # resolution view still carries.
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            with stage("resize"):
                small = [[cv2.resize(v, size, interpolation=cv2.INTER_AREA) for v in views] for views in sets]
            restored, tiles = self._run_model(small, output_views, deblurred)  # (B, K, h', w', 3)
            with stage("resize"):
                up = [[cv2.resize(v, (w, h), interpolation=cv2.INTER_CUBIC) for v in views] for views in restored]
            return np.stack([np.stack(v) for v in up]), tiles  # (B, K, H, W, 3)
        return self._run_model(sets, output_views, deblurred)

    def scale_for(self, width: int, height: int) -> float:
        """The factor the model's input views are resized by (``work_scale``)."""
        if self.work_scale == "auto":
            if self.device != "cpu":
                return 1.0  # an accelerator affords full resolution (+0.16 dB on real 640x480 frames)
            return min(1.0, math.sqrt(AUTO_WORK_PIXELS / float(width * height)))
        return float(self.work_scale)

    def _run_model(self, sets: list[list[np.ndarray]], output_views: list[int] | None,
                   deblurred: bool) -> tuple[np.ndarray, int]:
        """The model on B sets of N same-size views, at their size (:meth:`_run`)."""
        import torch

        from ...model.pipeline import images_to_tensor

        h, w = sets[0][0].shape[:2]
        m = self.pipe.size_multiple
        ph, pw = (-h) % m, (-w) % m
        reflect = ph < h and pw < w  # reflection needs the pad to be smaller than the image
        batch = []
        for views in sets:
            padded = [np.pad(v, ((0, ph), (0, pw), (0, 0)), mode="reflect" if reflect else "edge") for v in views]
            batch.append(images_to_tensor(padded))  # (N, 3, H', W')
        x = torch.stack(batch)  # (B, N, 3, H', W')
        tile = self.tile_size
        if tile == "auto":
            f = self.pipe.encoder.downsample_factor
            tile = AUTO_TILE if ((h + ph) // f) * ((w + pw) // f) > AUTO_TILE_ABOVE else None
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        with self._lock:
            out = self.pipe(x, num_inference_steps=self.steps, generator=gen, memory_budget_mb=self.memory_budget_mb,
                            tile_size=tile, output_type="np", output_views=output_views, deblurred=deblurred)
        return out.images[:, :, :h, :w], out.tiles

    def _calls(self, request: RestoreRequest, views: list[np.ndarray]) -> list[tuple[list[np.ndarray], dict[int, int]]]:
        """Model calls as (views of the set, {request index: position in the set}).

        Joint restoration: one set of all views; for weights trained on
        registered sets, one set per target: the target, then every other view
        resampled into its pixel grid (:func:`sirdiff_ros.core.registration.registered_views`).
        """
        if self.pipe.view_registration == "none":
            return [(views, {i: i for i in request.targets})]
        from dataclasses import replace

        ref = request.views[request.targets[0]]

        def as_used(f: Frame, v: np.ndarray) -> Frame:
            """The frame with the image the model sees (RGB, the reference's size)."""
            if f.image is v:
                return f
            if f.image.shape[:2] == v.shape[:2]:
                return replace(f, image=v)  # mono made RGB: depth and intrinsics still hold
            # Resized (another camera, a guard): no geometry to trust; optical flow only.
            return replace(f, image=v, depth=None, pose=None, intrinsics=ref.intrinsics)

        frames = [as_used(f, v) for f, v in zip(request.views, views)]
        with stage("registration"):
            return [(registered_views(frames, i), {i: 0}) for i in request.targets]

    def restore(self, request: RestoreRequest) -> RestoreResult:
        if not request.views:
            raise RestorerError("empty view set")
        n = len(request.views)
        for t in request.targets:
            if not 0 <= t < n:
                raise RestorerError(f"target index {t} outside the view set of {n}")
        t0 = time.perf_counter()
        ref = request.views[request.targets[0] if request.targets else 0]
        size = (ref.width, ref.height)
        views = [self._rgb(f, size) for f in request.views]
        # Calls with the same number of views run as one batch of sets.
        groups: dict[int, list[tuple[list[np.ndarray], dict[int, int]]]] = {}
        for call in self._calls(request, views):
            groups.setdefault(len(call[0]), []).append(call)
        out_by_index: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}
        # Views the pipeline deblurred by their own motion carry how far (sirdiff_ros.core.deblur).
        deblurred = any("deblur_px" in f.extras for f in request.views)
        try:
            for n_views, group in groups.items():
                # Only the positions some call returns are decoded (and refined).
                wanted = sorted({pos for _, where in group for pos in where.values()})
                restored, tiles = self._run([g[0] for g in group], wanted, deblurred)  # (B, K, H, W, 3)
                info = {"steps": self.steps, "views": n_views, "tiles": tiles, "work_scale": self.scale_for(*size),
                        "registration": self.pipe.view_registration,
                        "head": "deblurred" if deblurred and self.pipe.deblurred_refiner is not None else "general"}
                for (_, where), res in zip(group, restored):
                    for index, pos in where.items():
                        out_by_index[index] = (res[wanted.index(pos)], info)
        except RuntimeError as exc:  # OOM and kernel failures surface as RuntimeError
            raise RestorerError(f"{self.name} failed on {self.device}: {exc}") from exc
        result = []
        for i in request.targets:
            src = request.views[i].image
            img, info = out_by_index[i]
            if (img.shape[1], img.shape[0]) != (src.shape[1], src.shape[0]):
                img = cv2.resize(img, (src.shape[1], src.shape[0]), interpolation=cv2.INTER_AREA)
            if src.ndim == 2:
                img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
            result.append(RestoredView(index=i, image=np.ascontiguousarray(img), restored=True, info=dict(info)))
        return RestoreResult(views=result, backend=self.name, device=self.device, latency_s=time.perf_counter() - t0)


class SingleViewSirDiffRestorer(SirDiffRestorer):
    """The same weights with each requested view restored alone (N = 1): backend ``sirdiff-single``."""

    name = "sirdiff-single"
    joint = False

    def _calls(self, request: RestoreRequest, views: list[np.ndarray]) -> list[tuple[list[np.ndarray], dict[int, int]]]:
        return [([views[i]], {i: 0}) for i in request.targets]


register_restorer("sirdiff")(SirDiffRestorer)
register_restorer("sirdiff-single")(SingleViewSirDiffRestorer)
