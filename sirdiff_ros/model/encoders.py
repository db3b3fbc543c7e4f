"""Encoders between images and the latent space the diffusion UNet works in.

One interface for both kinds the project uses:

* :class:`SpaceToDepthEncoder` (small CPU presets): a lossless pixel-unshuffle
  of the image scaled to [-1, 1]; factor 4 turns (3, H, W) into (48, H/4, W/4).
  Decoding is the exact inverse, so the encoder never caps restoration quality
  (reconstruction PSNR is infinite; ``test_pipeline_encoders`` checks it) and
  costs nothing, whereas a small VAE trained on 2 CPU cores would.
* :class:`VaeEncoder` (the ``sd21`` preset): Stable Diffusion 2.1's
  ``AutoencoderKL`` loaded from a local ``vae/`` folder, latents multiplied by
  the scaling factor from its config, encoded and decoded in chunks so that
  N views of a large image do not need one giant batch.

Images are float tensors ``(M, 3, H, W)`` in [-1, 1]; latents are
``(M, C, H / f, W / f)`` with ``C = latent_channels`` and ``f = downsample_factor``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EncoderError",
    "LatentEncoder",
    "SpaceToDepthEncoder",
    "VaeEncoder",
    "encoder_from_spec",
]


class EncoderError(ValueError):
    """An encoder spec or input that cannot be used."""


class LatentEncoder(nn.Module):
    """Common interface: ``encode``/``decode`` plus the numbers the pipeline needs."""

    latent_channels: int
    downsample_factor: int
    scaling_factor: float

    def __init__(self) -> None:
        super().__init__()
        # Follows .to(device, dtype) so that parameter-free encoders report both,
        # as DiffusionPipeline.to() expects of its modules.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def encode(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:  # pragma: no cover - interface
        """JSON-able description from which :func:`encoder_from_spec` rebuilds it."""
        raise NotImplementedError

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise EncoderError(f"images must be (M, 3, H, W), got {tuple(images.shape)}")
        f = self.downsample_factor
        if images.shape[-2] % f or images.shape[-1] % f:
            raise EncoderError(
                f"image size {images.shape[-1]}x{images.shape[-2]} is not a multiple of the encoder factor {f}"
            )


class SpaceToDepthEncoder(LatentEncoder):
    """Lossless pixel-unshuffle encoding (no parameters)."""

    def __init__(self, factor: int = 4, scaling_factor: float = 1.0) -> None:
        super().__init__()
        if factor < 1:
            raise EncoderError(f"space-to-depth factor must be >= 1, got {factor}")
        if not scaling_factor > 0:
            raise EncoderError(f"scaling_factor must be > 0, got {scaling_factor}")
        self.downsample_factor = int(factor)
        self.latent_channels = 3 * factor * factor
        self.scaling_factor = float(scaling_factor)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._check_images(images)
        # (M, 3, H, W) -> (M, 3*f*f, H/f, W/f)
        return F.pixel_unshuffle(images, self.downsample_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise EncoderError(f"latents must be (M, {self.latent_channels}, h, w), got {tuple(latents.shape)}")
        # (M, 3*f*f, h, w) -> (M, 3, h*f, w*f)
        return F.pixel_shuffle(latents / self.scaling_factor, self.downsample_factor)

    def spec(self) -> dict[str, Any]:
        return {"type": "space_to_depth", "factor": self.downsample_factor, "scaling_factor": self.scaling_factor}


class VaeEncoder(LatentEncoder):
    """Stable Diffusion's ``AutoencoderKL``, frozen, with chunked encode/decode.

    The degraded views are encoded with the posterior *mode* (not a sample):
    the condition must be a deterministic function of the input.
    """

    def __init__(self, vae: nn.Module, chunk_size: int = 4, source: str | None = None) -> None:
        super().__init__()
        cfg = vae.config
        self.vae = vae.eval().requires_grad_(False)
        self.latent_channels = int(cfg.latent_channels)
        # One downsampling per encoder block except the last (diffusers' layout).
        self.downsample_factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling_factor = float(getattr(cfg, "scaling_factor", 0.18215))
        if chunk_size < 1:
            raise EncoderError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = int(chunk_size)
        self.source = source

    @classmethod
    def from_folder(cls, folder: str | Path, chunk_size: int = 4) -> "VaeEncoder":
        """Load ``AutoencoderKL`` from a local diffusers folder (``.../vae`` or its parent)."""
        from diffusers import AutoencoderKL

        folder = Path(folder)
        if (folder / "vae" / "config.json").is_file():
            folder = folder / "vae"
        if not (folder / "config.json").is_file():
            raise EncoderError(f"no AutoencoderKL config.json in {folder}")
        try:
            vae = AutoencoderKL.from_pretrained(str(folder))
        except Exception as exc:  # diffusers raises several types for bad folders
            raise EncoderError(f"cannot load the VAE from {folder}: {exc}") from exc
        return cls(vae, chunk_size=chunk_size, source=str(folder))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._check_images(images)
        dtype = next(self.vae.parameters()).dtype
        out = [
            self.vae.encode(chunk.to(dtype)).latent_dist.mode() * self.scaling_factor
            for chunk in images.split(self.chunk_size)
        ]
        return torch.cat(out)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        out = [self.vae.decode(chunk.to(dtype) / self.scaling_factor).sample for chunk in latents.split(self.chunk_size)]
        return torch.cat(out)

    def spec(self) -> dict[str, Any]:
        return {"type": "vae", "path": self.source, "chunk_size": self.chunk_size}


def encoder_from_spec(spec: dict[str, Any], base_dir: str | Path | None = None) -> LatentEncoder:
    """Build an encoder from :meth:`LatentEncoder.spec` output.

    A relative VAE ``path`` is resolved against ``base_dir`` (the checkpoint folder).
    """
    kind = spec.get("type")
    if kind == "space_to_depth":
        return SpaceToDepthEncoder(int(spec.get("factor", 4)), float(spec.get("scaling_factor", 1.0)))
    if kind == "vae":
        path = spec.get("path")
        if not path:
            raise EncoderError("a 'vae' encoder spec needs a 'path' to a local AutoencoderKL folder")
        p = Path(path)
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        return VaeEncoder.from_folder(p, chunk_size=int(spec.get("chunk_size", 4)))
    raise EncoderError(f"unknown encoder type {kind!r} (expected 'space_to_depth' or 'vae')")
