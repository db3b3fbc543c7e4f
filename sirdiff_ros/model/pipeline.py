"""Sampling pipeline: degraded view sets in, restored view sets out.

Steps (diffusers ``DiffusionPipeline`` style, numbered in ``__call__``):
check inputs -> encode the degraded views -> prepare noise latents -> denoise
with a diffusers scheduler (DDIM by default, DPM-Solver++ optional), the UNet
seeing every view of a set at once -> decode -> refine (optional: a
full-resolution head, :class:`~sirdiff_ros.model.refiner.PixelRefiner`, that
checkpoints trained with ``sirdiff-train refine`` carry in ``refiner/``).

Two choices that the training code shares (:class:`Parametrization`):

* *residual latents*: the diffusion runs on ``(z_sharp - z_degraded) / s``
  rather than on ``z_sharp``; the decoded output is ``decode(z_degraded + s * x)``.
  The residual of a blurred image is small and mostly zero in flat regions, so
  a model trained for a short time starts at "return the input" instead of at
  noise. ``s`` (``residual_scale``) normalises the residual to unit variance,
  measured on the training data, as SD's VAE scaling factor does for latents.
* the scheduler's ``prediction_type`` (epsilon by default, as in the paper).

Memory: a UNet forward over N views of an (h, w) latent grid is estimated by
:func:`estimate_forward_bytes`. When it exceeds ``memory_budget_mb`` the latent
grid is split into overlapping tiles; every denoising step runs the UNet on
each tile *for all views at once* (the same window in every view, so views
still attend to each other inside a tile) and blends the overlapping
predictions with linear ramps before one scheduler step on the full grid.
Sets in a batch are also processed in chunks that fit the budget. Noise is
drawn once for the whole batch, so results do not depend on the chunking.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..core.profiling import stage
from .encoders import LatentEncoder, SpaceToDepthEncoder, encoder_from_spec
from .refiner import PixelRefiner, view_set_context

__all__ = [
    "PIPELINE_CONFIG_NAME",
    "REFINER_FOLDER",
    "DEBLURRED_REFINER_FOLDER",
    "CheckpointError",
    "Parametrization",
    "SirDiffPipeline",
    "SirDiffPipelineOutput",
    "estimate_forward_bytes",
    "make_scheduler",
    "tile_windows",
    "images_to_tensor",
    "tensor_to_images",
]

# Written next to the UNet's config.json / safetensors in a checkpoint folder.
PIPELINE_CONFIG_NAME = "sirdiff_pipeline.json"
# Subfolder of a checkpoint holding the optional PixelRefiner (save_pretrained layout).
REFINER_FOLDER = "refiner"
DEBLURRED_REFINER_FOLDER = "refiner_deblurred"


class CheckpointError(RuntimeError):
    """A checkpoint folder that is missing, incomplete or corrupt (the message names the file)."""


@dataclass
class Parametrization:
    """How latents map to images; shared by training and sampling."""

    residual: bool = True
    residual_scale: float = 1.0
    task: str = "deblur"  # 'deblur' or 'sr4' (what the weights were trained for)

    def target(self, z_sharp: torch.Tensor, z_degraded: torch.Tensor) -> torch.Tensor:
        """Clean diffusion variable x0 for a pair of encoded images."""
        return (z_sharp - z_degraded) / self.residual_scale if self.residual else z_sharp

    def to_latent(self, x0: torch.Tensor, z_degraded: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`target`: encoded restored image from x0."""
        return z_degraded + self.residual_scale * x0 if self.residual else x0


@dataclass
class SirDiffPipelineOutput(BaseOutput):
    """``images``: (B, N, 3, H, W) float in [-1, 1] or (B, N, H, W, 3) uint8 for ``output_type='np'``."""

    images: Any
    tiles: int = 1
    chunks: int = 1


def make_scheduler(kind: str = "ddim", prediction_type: str = "epsilon", zero_terminal_snr: bool = False,
                   **overrides: Any):
    """A diffusers scheduler with the training noise schedule of this project.

    ``kind``: 'ddim' or 'dpm' (DPM-Solver++ 2nd order). The schedule is SD's
    (scaled linear betas 0.00085..0.012, 1000 steps) with 'trailing' timestep
    spacing so that few-step sampling starts from the noisiest timestep.
    Clipping is off: residual latents are not bounded to [-1, 1].

    ``zero_terminal_snr`` rescales the betas so that t=999 is pure noise
    (needs v- or x0-prediction). Without it, training inputs at t=999 still
    hold ``0.068 * x0``, which a model learns to read although sampling never
    provides it; measured on the shipped model: +1.1 dB from that leak at
    t=999, +0.04 dB from actual 1-step sampling (docs/model.md).
    """
    if zero_terminal_snr and prediction_type == "epsilon":
        raise ValueError("zero_terminal_snr needs prediction_type 'v_prediction' or 'sample' (eps is undefined at SNR 0)")
    base = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        timestep_spacing="trailing",
        rescale_betas_zero_snr=zero_terminal_snr,
    )
    base.update(overrides)
    if kind == "ddim":
        return DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **base)
    if kind == "dpm":
        return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **base)
    raise ValueError(f"unknown scheduler kind {kind!r} (expected 'ddim' or 'dpm')")


def _scheduler_from_config(cfg: dict[str, Any]):
    name = cfg.get("_class_name", "DDIMScheduler")
    cls = {"DDIMScheduler": DDIMScheduler, "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler}.get(name)
    if cls is None:
        raise CheckpointError(f"unsupported scheduler class {name!r} in {PIPELINE_CONFIG_NAME}")
    return cls.from_config(cfg)


def estimate_forward_bytes(unet: torch.nn.Module, batch: int, views: int, height: int, width: int, dtype_bytes: int) -> int:
    """Rough peak activation bytes of one no-grad UNet forward.

    Activations scale with the number of latent pixels times the first level's
    width; the constant (~24 feature maps alive at the first level, the deeper
    levels adding a geometric tail) was fitted on the CPU presets with
    ``bench/model.py`` and is deliberately on the safe side.
    """
    cfg = getattr(unet, "config", None)
    channels = list(getattr(cfg, "block_out_channels", None) or [320])
    c0 = int(channels[0])
    pixels = batch * views * height * width
    act = 24 * pixels * c0 * dtype_bytes
    # Full 3D attention scores if the kernel materialises them (worst case):
    # tokens = N * h * w / 4**level at the attention levels; take the coarsest
    # two levels as the usual configuration.
    levels = len(channels)
    tok = views * height * width / (4 ** max(levels - 2, 0))
    heads = 8
    attn = batch * heads * tok * tok * dtype_bytes
    return int(act + attn)


def tile_windows(size: int, tile: int, overlap: int, multiple: int) -> list[tuple[int, int]]:
    """Start/stop pairs covering ``[0, size)`` with tiles of ``tile`` overlapping by >= ``overlap``.

    Every start is a multiple of ``multiple``; the last tile ends at ``size``.
    """
    if tile >= size:
        return [(0, size)]
    if tile % multiple or size % multiple:
        raise ValueError(f"tile {tile} and size {size} must be multiples of {multiple}")
    stride = max(multiple, ((tile - overlap) // multiple) * multiple)
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return [(s, s + tile) for s in sorted(set(starts))]


def _ramp(length: int, lo_edge: bool, hi_edge: bool, overlap: int) -> torch.Tensor:
    """1-D blend weight: linear ramp over ``overlap`` at interior edges, flat elsewhere."""
    w = torch.ones(length)
    r = min(overlap, length // 2)
    if r > 0:
        ramp = torch.arange(1, r + 1, dtype=torch.float32) / (r + 1)
        if not lo_edge:
            w[:r] = ramp
        if not hi_edge:
            w[-r:] = ramp.flip(0)
    return w


def images_to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 RGB ``(H, W, 3)`` arrays -> float tensor (N, 3, H, W) in [-1, 1]."""
    arr = np.stack([np.asarray(im) for im in images])
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) images of one size, got {arr.dtype} {arr.shape}")
    t = torch.from_numpy(arr).permute(0, 3, 1, 2).float()  # (N, H, W, 3) -> (N, 3, H, W)
    return t / 127.5 - 1.0


def tensor_to_images(t: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3), rounded."""
    x = ((t.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu()
    return x.movedim(-3, -1).numpy()


class SirDiffPipeline(DiffusionPipeline):
    """Restore B sets of N degraded views jointly.

    ``unet``: :class:`sirdiff_ros.model.unet.SirDiffUNet` (forward(sample
    (B,N,C,h,w), timestep, condition (B,N,C,h,w)) -> ``.sample``);
    ``scheduler``: DDIM or DPM-Solver++ (:func:`make_scheduler`);
    ``encoder``: a :class:`LatentEncoder`; ``refiner``: an optional
    :class:`~sirdiff_ros.model.refiner.PixelRefiner` applied to each decoded view;
    ``deblurred_refiner``: an optional second head for view sets the caller
    deblurred by their own camera motion (``__call__(deblurred=True)``): those
    views are sharper and carry the deconvolution's own artefacts, a
    different input than blurred views.
    """

    def __init__(self, unet: torch.nn.Module, scheduler: Any, encoder: LatentEncoder,
                 parametrization: Parametrization | None = None, view_registration: str = "none",
                 refiner: torch.nn.Module | None = None, deblurred_refiner: torch.nn.Module | None = None) -> None:
        super().__init__()
        if deblurred_refiner is not None and refiner is None:
            raise ValueError("a head for deblurred view sets needs the general head beside it")
        self.register_modules(unet=unet, scheduler=scheduler, encoder=encoder, refiner=refiner,
                              deblurred_refiner=deblurred_refiner)
        self.parametrization = parametrization or Parametrization()
        # "none": views as captured; otherwise the name of the registration the
        # weights were trained with (sirdiff_ros.core.registration): callers must
        # resample partners into each target's grid before calling the pipeline.
        self.view_registration = view_registration
        ucfg = unet.config
        in_ch = int(getattr(ucfg, "in_channels", encoder.latent_channels))
        if in_ch != encoder.latent_channels:
            raise ValueError(
                f"UNet expects {in_ch} latent channels but the encoder gives {encoder.latent_channels}"
            )
        # ONNX Runtime runners of the UNet and the head (use_engine("onnx")); None: PyTorch.
        self._onnx_unet: Any = None
        self._onnx_refiner: Any = None
        self._onnx_deblurred_refiner: Any = None

    # ----------------------------------------------------------------- engine
    @property
    def engine(self) -> str:
        """``"onnx"`` when the networks run in ONNX Runtime, ``"torch"`` otherwise."""
        return "onnx" if self._onnx_unet is not None else "torch"

    def use_engine(self, engine: str, threads: int = 1, cache_dir: str | Path | None = None) -> None:
        """Run the UNet and the refinement head with ``engine``: ``"torch"`` (the
        reference) or ``"onnx"`` (ONNX Runtime on the CPU, float32; each network
        exported once per input shape into ``cache_dir``, see
        :mod:`sirdiff_ros.model.onnx_engine`) with ``threads`` intra-op threads."""
        if engine == "torch":
            self._onnx_unet = self._onnx_refiner = self._onnx_deblurred_refiner = None
            return
        if engine != "onnx":
            raise ValueError(f"engine must be 'torch' or 'onnx', got {engine!r}")
        if self.unet.device.type != "cpu" or self.unet.dtype != torch.float32:
            raise ValueError(f"the onnx engine runs float32 on the CPU; the model is {self.unet.dtype} on {self.unet.device}")
        from .onnx_engine import OnnxRunner

        self._onnx_unet = OnnxRunner(_UNetSample(self.unet), "unet", threads, cache_dir)
        self._onnx_refiner = (None if self.refiner is None
                              else OnnxRunner(_RefinerCall(self.refiner), "refiner", threads, cache_dir))
        self._onnx_deblurred_refiner = (None if self.deblurred_refiner is None
                                        else OnnxRunner(_RefinerCall(self.deblurred_refiner), "refiner", threads, cache_dir))

    def use_channels_last(self) -> None:
        """Store the networks' convolution weights channels-last (4D and 5D alike), the
        layout oneDNN's CPU convolutions run fastest in: the head at 320x240 in bf16
        took 0.16 s against 0.28 s, the UNet 0.71 against 0.78 s (bench/README.md).
        Outputs are the same up to summation order."""
        formats = {4: torch.channels_last, 5: torch.channels_last_3d}
        for net in (self.unet, self.refiner, self.deblurred_refiner):
            for param in net.parameters() if net is not None else ():
                if param.dim() in formats:
                    param.data = param.data.contiguous(memory_format=formats[param.dim()])

    def _unet_sample(self, latents: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self._onnx_unet is not None:
            return self._onnx_unet(latents, timestep, cond).to(latents.dtype)
        return self.unet(latents, timestep, cond).sample

    def head(self, deblurred: bool = False) -> torch.nn.Module | None:
        """The refinement head for a call: the deblurred views' head where asked for and present."""
        return self.deblurred_refiner if deblurred and self.deblurred_refiner is not None else self.refiner

    def _refiner_out(self, head: torch.nn.Module, restored: torch.Tensor, degraded: torch.Tensor,
                     context: torch.Tensor | None) -> torch.Tensor:
        runner = self._onnx_deblurred_refiner if head is self.deblurred_refiner else self._onnx_refiner
        if runner is not None:
            args = (restored, degraded) if context is None else (restored, degraded, context)
            return runner(*args).to(restored.dtype)
        return head(restored, degraded, context)

    # ------------------------------------------------------------------ sizes
    @property
    def unet_multiple(self) -> int:
        """Latent sizes must be multiples of this (the UNet's total downsampling)."""
        levels = len(getattr(self.unet.config, "block_out_channels", [0, 0, 0, 0]))
        return 2 ** (levels - 1)

    @property
    def size_multiple(self) -> int:
        """Image sizes must be multiples of this (encoder factor x UNet downsampling)."""
        return self.encoder.downsample_factor * self.unet_multiple

    # ------------------------------------------------------------ checkpoints
    @classmethod
    def from_checkpoint(cls, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "SirDiffPipeline":
        """Load a checkpoint folder: the UNet's ``config.json`` and safetensors
        (``save_pretrained``), plus ``sirdiff_pipeline.json`` (encoder, scheduler,
        parametrization). Without that JSON a space-to-depth encoder matching the
        UNet's channels, DDIM and residual_scale 1 are assumed.
        Raises :class:`CheckpointError` naming the missing or corrupt file.
        """
        from .unet import SirDiffUNet

        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"checkpoint folder {folder} does not exist")
        for name in ("config.json", "diffusion_pytorch_model.safetensors"):
            if not (folder / name).is_file():
                raise CheckpointError(f"checkpoint file {folder / name} is missing")
        cfg_path = folder / PIPELINE_CONFIG_NAME
        pcfg: dict[str, Any] = {}
        if cfg_path.is_file():
            try:
                pcfg = json.loads(cfg_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CheckpointError(f"checkpoint file {cfg_path} is not valid JSON: {exc}") from exc
        try:
            unet = SirDiffUNet.from_pretrained(str(folder), torch_dtype=dtype)
        except Exception as exc:  # safetensors / config errors come in many types
            raise CheckpointError(
                f"cannot load the UNet from {folder / 'diffusion_pytorch_model.safetensors'} "
                f"(config {folder / 'config.json'}): {exc}"
            ) from exc
        if "encoder" in pcfg:
            encoder = encoder_from_spec(pcfg["encoder"], base_dir=folder)
        else:
            factor = int(round(math.sqrt(int(unet.config.in_channels) / 3)))
            encoder = SpaceToDepthEncoder(factor)
        scheduler = _scheduler_from_config(pcfg["scheduler"]) if "scheduler" in pcfg else make_scheduler()
        par = Parametrization(**pcfg.get("parametrization", {}))
        heads: dict[str, PixelRefiner | None] = {}
        for key in ("refiner", "deblurred_refiner"):
            heads[key] = None
            if pcfg.get(key):
                sub = folder / str(pcfg[key])
                try:
                    heads[key] = PixelRefiner.from_pretrained(str(sub), torch_dtype=dtype)
                except Exception as exc:  # a missing or corrupt refiner must not pass silently
                    raise CheckpointError(f"cannot load the {key} named in {cfg_path} from {sub}: {exc}") from exc
        try:
            pipe = cls(unet=unet, scheduler=scheduler, encoder=encoder, parametrization=par,
                       view_registration=str(pcfg.get("view_registration", "none")), **heads)
        except ValueError as exc:
            raise CheckpointError(f"{cfg_path}: {exc}") from exc
        pipe.default_steps = int(pcfg.get("default_steps", 4))
        pipe.encoder.to(device, dtype)  # the UNet already has its dtype (from_pretrained's torch_dtype)
        return pipe.to(device)

    def save_checkpoint(self, folder: str | Path, default_steps: int = 4, extra: dict[str, Any] | None = None) -> Path:
        """Write what :meth:`from_checkpoint` reads (UNet safetensors + pipeline JSON)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(str(folder), safe_serialization=True)
        cfg = {
            "encoder": self.encoder.spec(),
            "scheduler": dict(self.scheduler.config),
            "parametrization": asdict(self.parametrization),
            "default_steps": default_steps,
            "view_registration": self.view_registration,
        }
        if self.refiner is not None:
            self.refiner.save_pretrained(str(folder / REFINER_FOLDER), safe_serialization=True)
            cfg["refiner"] = REFINER_FOLDER
        if self.deblurred_refiner is not None:
            self.deblurred_refiner.save_pretrained(str(folder / DEBLURRED_REFINER_FOLDER), safe_serialization=True)
            cfg["deblurred_refiner"] = DEBLURRED_REFINER_FOLDER
        if extra:
            cfg["training"] = extra
        (folder / PIPELINE_CONFIG_NAME).write_text(json.dumps(cfg, indent=2, default=str))
        return folder

    default_steps: int = 4

    # ----------------------------------------------------------------- checks
    def check_inputs(self, views: torch.Tensor, num_inference_steps: int) -> None:
        if not isinstance(views, torch.Tensor) or views.ndim != 5 or views.shape[2] != 3:
            shape = tuple(views.shape) if isinstance(views, torch.Tensor) else type(views).__name__
            raise ValueError(f"views must be a (B, N, 3, H, W) tensor in [-1, 1], got {shape}")
        b, n, _, h, w = views.shape
        if b < 1 or n < 1:
            raise ValueError(f"need at least one set of one view, got B={b}, N={n}")
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(f"image size {w}x{h} must be a multiple of {m} (pad first; the backend does)")
        if not torch.isfinite(views).all():
            raise ValueError("views contain NaN or Inf")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")

    # --------------------------------------------------------------- planning
    def plan(self, batch: int, views: int, h: int, w: int, memory_budget_mb: float | None,
             tile_size: int | None, tile_overlap: int | None) -> tuple[int, int, int, int]:
        """Choose (tile_h, tile_w, overlap, sets_per_chunk) in latent pixels."""
        m = self.unet_multiple
        nbytes = torch.finfo(self.unet.dtype).bits // 8
        th, tw = h, w
        if tile_size is not None:
            if tile_size < m or tile_size % m:
                raise ValueError(f"tile_size must be a positive multiple of {m} latent pixels, got {tile_size}")
            th, tw = min(h, tile_size), min(w, tile_size)
        elif memory_budget_mb is not None:
            budget = memory_budget_mb * 2**20
            # Shrink the larger side first until one set fits.
            while estimate_forward_bytes(self.unet, 1, views, th, tw, nbytes) > budget and max(th, tw) > m:
                if th >= tw:
                    th = max(m, (th // 2 // m) * m or m)
                else:
                    tw = max(m, (tw // 2 // m) * m or m)
        overlap = tile_overlap if tile_overlap is not None else max(m, (min(th, tw) // 4 // m) * m)
        sets = batch
        if memory_budget_mb is not None:
            budget = memory_budget_mb * 2**20
            while sets > 1 and estimate_forward_bytes(self.unet, sets, views, th, tw, nbytes) > budget:
                sets = (sets + 1) // 2
        return th, tw, overlap, sets

    # --------------------------------------------------------------- the loop
    def _predict(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                 windows: list[tuple[tuple[int, int], tuple[int, int]]], overlap: int) -> torch.Tensor:
        """UNet output on the full grid, run per tile and blended."""
        b = latents.shape[0]
        timestep = t.expand(b).to(latents.device)
        if len(windows) == 1:
            return self._unet_sample(latents, timestep, cond)
        h, w = latents.shape[-2:]
        acc = torch.zeros_like(latents, dtype=torch.float32)
        wsum = torch.zeros((h, w), dtype=torch.float32, device=latents.device)
        for (y0, y1), (x0, x1) in windows:
            out = self._unet_sample(latents[..., y0:y1, x0:x1], timestep, cond[..., y0:y1, x0:x1])
            wy = _ramp(y1 - y0, y0 == 0, y1 == h, overlap)
            wx = _ramp(x1 - x0, x0 == 0, x1 == w, overlap)
            wt = (wy[:, None] * wx[None, :]).to(latents.device)  # (th, tw)
            acc[..., y0:y1, x0:x1] += out.float() * wt
            wsum[y0:y1, x0:x1] += wt
        return (acc / wsum).to(latents.dtype)

    def refine(self, images: torch.Tensor, views: torch.Tensor, keep: Sequence[int],
               restored_sets: torch.Tensor | None = None, deblurred: bool = False) -> torch.Tensor:
        """Apply the refiner (:meth:`head` of ``deblurred``) to decoded views (B*K, 3, H, W)
        of ``views`` (B, N, 3, H, W) at positions ``keep``, one view at a time (bounded
        memory at any image size).

        ``restored_sets`` (B, N, 3, H, W): every view decoded, for a head with
        ``restored_context``."""
        head = self.head(deblurred)
        b, n, _, hh, ww = views.shape
        k, device, rdt = len(keep), images.device, head.dtype
        degraded = views[:, keep].reshape(b * k, 3, hh, ww)
        wants_restored = head.summarises_restored
        if wants_restored and (restored_sets is None or restored_sets.shape != views.shape):
            got = None if restored_sets is None else tuple(restored_sets.shape)
            raise ValueError(f"this head also summarises the restored views; need them as {tuple(views.shape)}, "
                             f"got {got}")
        out = []
        for s in range(b):
            # The set's summary (mean and spread of its degraded, and restored, views), shared by its K outputs.
            context = None
            if head.config.set_context:
                rs = restored_sets[s : s + 1].to(device, rdt) if wants_restored else None
                context = view_set_context(views[s : s + 1].to(device, rdt), rs)
            for i in range(s * k, (s + 1) * k):
                out.append(self._refiner_out(head, images[i : i + 1].to(rdt), degraded[i : i + 1].to(device, rdt),
                                             context).float().clamp(-1, 1))
        return torch.cat(out)

    @torch.no_grad()
    def __call__(
        self,
        views: torch.Tensor,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        memory_budget_mb: float | None = None,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        output_type: str = "pt",
        show_progress: bool = False,
        output_views: Sequence[int] | None = None,
        deblurred: bool = False,
    ) -> SirDiffPipelineOutput:
        """Restore ``views`` (B, N, 3, H, W) in [-1, 1].

        ``tile_size``/``tile_overlap`` (latent pixels) force tiling;
        ``memory_budget_mb`` chooses tiles and set chunks automatically.
        ``output_views``: positions within each set to decode and return
        (B, K, ...) (default: all N); every view still informs the others.
        ``deblurred``: the views were deblurred by their own camera motion
        (the refinement uses :meth:`head` of it).
        """
        steps = int(num_inference_steps or self.default_steps)
        # 1. Check inputs.
        self.check_inputs(views, steps)
        b, n, _, hh, ww = views.shape
        keep = list(range(n)) if output_views is None else [int(i) for i in output_views]
        if not keep or any(not 0 <= i < n for i in keep):
            raise ValueError(f"output_views {output_views} must be positions within the {n} views of a set")
        device, dtype = self.unet.device, self.unet.dtype
        f = self.encoder.downsample_factor
        h, w = hh // f, ww // f

        # 2. Encode the degraded views: (B, N, 3, H, W) -> (B*N, 3, H, W) -> (B, N, C, h, w).
        with stage("encode"):
            flat = views.reshape(b * n, 3, hh, ww).to(device=device, dtype=dtype)
            cond = self.encoder.encode(flat).to(dtype).reshape(b, n, -1, h, w)

        # 3. Prepare noise latents, once for the whole batch (chunking-independent).
        shape = (b, n, self.encoder.latent_channels, h, w)
        noise = randn_tensor(shape, generator=generator, device=torch.device(device), dtype=torch.float32).to(dtype)

        th, tw, overlap, sets = self.plan(b, n, h, w, memory_budget_mb, tile_size, tile_overlap)
        m = self.unet_multiple
        windows = [(ys, xs) for ys in tile_windows(h, th, overlap, m) for xs in tile_windows(w, tw, overlap, m)]

        out_latents = []
        for s0 in range(0, b, sets):
            c = cond[s0 : s0 + sets]
            # 4. Denoise; the scheduler is reset per chunk (multistep solvers keep state).
            self.scheduler.set_timesteps(steps, device=device)
            latents = noise[s0 : s0 + sets] * self.scheduler.init_noise_sigma
            timesteps = self.scheduler.timesteps
            iterator = self.progress_bar(timesteps) if show_progress else timesteps
            for t in iterator:
                model_in = self.scheduler.scale_model_input(latents, t)
                with stage("unet"):
                    pred = self._predict(model_in, t, c, windows, overlap)
                latents = self.scheduler.step(pred, t, latents).prev_sample
            out_latents.append(self.parametrization.to_latent(latents, c))
        z = torch.cat(out_latents)  # (B, N, C, h, w)
        k = len(keep)

        # 5. Decode the views asked for: (B, K, C, h, w) -> (B*K, C, h, w) -> (B*K, 3, H, W);
        # every view when the head summarises the restored set: (B, N, 3, H, W).
        restored_sets = None
        head = self.head(deblurred)
        with stage("decode"):
            if head is not None and head.summarises_restored:
                restored_sets = self.encoder.decode(z.reshape(b * n, -1, h, w)).float().clamp(-1, 1)
                restored_sets = restored_sets.reshape(b, n, 3, hh, ww)
                images = restored_sets[:, keep].reshape(b * k, 3, hh, ww)
            else:
                images = self.encoder.decode(z[:, keep].reshape(b * k, -1, h, w)).float().clamp(-1, 1)

        # 6. Refine at full resolution, one view at a time (bounded memory at any image size).
        if head is not None:
            with stage("refine"):
                images = self.refine(images, views, keep, restored_sets, deblurred)
        images = images.reshape(b, k, 3, hh, ww)
        result = tensor_to_images(images) if output_type == "np" else images
        return SirDiffPipelineOutput(images=result, tiles=len(windows), chunks=math.ceil(b / sets))


class _UNetSample(torch.nn.Module):
    """The UNet's forward as tensors in, one tensor out (what an ONNX export traces)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, condition).sample


class _RefinerCall(torch.nn.Module):
    """The refinement head with its optional set context as a trailing input."""

    def __init__(self, refiner: torch.nn.Module) -> None:
        super().__init__()
        self.refiner = refiner

    def forward(self, restored: torch.Tensor, degraded: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        return self.refiner(restored, degraded, context[0] if context else None)
