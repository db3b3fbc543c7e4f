"""The SIR-Diff multi-view diffusion model: UNet, presets, pretrained initialisation."""

from __future__ import annotations

from sirdiff_ros.model.presets import PRESETS, build_model, preset_config
from sirdiff_ros.model.unet import SirDiffUNet, SirDiffUNetOutput

__all__ = ["PRESETS", "SirDiffUNet", "SirDiffUNetOutput", "build_model", "preset_config"]
