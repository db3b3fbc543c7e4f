"""The SIR-Diff multi-view diffusion model: UNet, presets, pretrained initialisation."""

from __future__ import annotations

from sirdiff_ros.model.presets import PRESETS, build_model, preset_config
from sirdiff_ros.model.pretrained import InitReport, PretrainedWeightsError, build_from_pretrained, load_pretrained
from sirdiff_ros.model.unet import SirDiffUNet, SirDiffUNetOutput

__all__ = [
    "PRESETS",
    "InitReport",
    "PretrainedWeightsError",
    "SirDiffUNet",
    "SirDiffUNetOutput",
    "build_from_pretrained",
    "build_model",
    "load_pretrained",
    "preset_config",
]
