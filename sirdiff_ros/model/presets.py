"""Named model sizes for :class:`~sirdiff_ros.model.unet.SirDiffUNet`.

``sd21`` has Stable Diffusion 2.1's UNet sizes (for SD 2.1 / SVD
initialisation on a GPU). The others are for CPUs: ``tiny`` for tests,
``small`` trains at roughly 6,000 steps/hour on 2 cores at 16x16 latents
(DESIGN.md), ``base`` is four times wider in parameters. The latent and
condition channel counts are arguments because they follow from the encoder
chosen for a preset (SD's VAE: 4 + 4; a space-to-depth encoding: e.g. 12 + 12).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from sirdiff_ros.model.unet import SirDiffUNet

__all__ = ["PRESETS", "build_model", "preset_config"]

_PRESETS: dict[str, dict[str, Any]] = {
    # Stable Diffusion 2.1's UNet: 4 levels, 64-channel heads (5/10/20/20 heads),
    # linear projections, upcast attention; SD's per-view attention at the
    # highest resolution, 3D attention at the two lower attention levels and the bottleneck.
    "sd21": dict(
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        attention_levels=(True, True, True, False),
        view_attention_levels=(False, True, True, False),
        mid_block_attention=True,
        mid_block_view_attention=True,
        attention_head_dim=64,
        norm_num_groups=32,
        use_linear_projection=True,
        upcast_attention=True,
        in_channels=4,
        cond_channels=4,
        out_channels=4,
    ),
    # ~28M parameters.
    "base": dict(
        block_out_channels=(64, 128, 256),
        layers_per_block=2,
        attention_levels=(False, True, True),
        view_attention_levels=(False, True, True),
        attention_head_dim=32,
        norm_num_groups=32,
    ),
    # ~7M parameters (channels 32/64/128, DESIGN.md's CPU training measurements).
    "small": dict(
        block_out_channels=(32, 64, 128),
        layers_per_block=2,
        attention_levels=(False, True, True),
        view_attention_levels=(False, True, True),
        attention_head_dim=32,
        norm_num_groups=16,
    ),
    # ~2M parameters: every feature (3D conv, 3D attention at two levels) at test cost.
    "tiny": dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_levels=(True, True),
        view_attention_levels=(False, True),
        attention_head_dim=16,
        norm_num_groups=8,
    ),
}
_CPU_DEFAULT_CHANNELS = dict(in_channels=4, cond_channels=4, out_channels=4)

PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {name: MappingProxyType({**_CPU_DEFAULT_CHANNELS, **cfg}) for name, cfg in _PRESETS.items()}
)
"""Read-only preset table: name -> SirDiffUNet keyword arguments."""


def preset_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The constructor arguments of preset ``name``, with ``overrides`` applied.

    Raises ValueError for an unknown preset or an override that is not a
    constructor argument of :class:`SirDiffUNet`.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    unknown = set(overrides) - set(SirDiffUNet._get_init_keys(SirDiffUNet))
    if unknown:
        raise ValueError(f"not SirDiffUNet arguments: {sorted(unknown)}")
    return {**PRESETS[name], **overrides}


def build_model(name: str, **overrides: Any) -> SirDiffUNet:
    """A randomly initialised :class:`SirDiffUNet` of preset ``name`` (e.g. ``cond_channels=12``)."""
    return SirDiffUNet(**preset_config(name, **overrides))
