"""SirDiffUNet: Stable Diffusion's UNet turned into a joint denoiser of N views.

Inputs are view sets ``(B, N, C, H, W)``: the noisy latents of N views and,
channel-concatenated, the encodings of the N degraded views (the condition).
Each ResNet block mixes neighbouring views through a parallel 3D convolution
(:class:`~sirdiff_ros.model.blocks.SpatialViewResBlock`); the self-attention
of the configured low-resolution levels spans all views
(:class:`~sirdiff_ros.model.blocks.MultiViewTransformer2D`). There is no text
conditioning: the time embedding is SD's, nothing else is added. Any N works
at inference; N = 1 is the single-view model with the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from sirdiff_ros.model.blocks import ViewDownBlock, ViewMidBlock, ViewUpBlock

__all__ = ["SirDiffUNet", "SirDiffUNetOutput"]


@dataclass
class SirDiffUNetOutput(BaseOutput):
    """Model output: ``sample`` (B, N, out_channels, H, W), e.g. the predicted noise."""

    sample: torch.Tensor


def _per_level(value: object, levels: int, name: str) -> tuple:
    """Broadcast a scalar config entry to one value per level; check a sequence's length."""
    if isinstance(value, (list, tuple)):
        if len(value) != levels:
            raise ValueError(f"{name} has {len(value)} entries, block_out_channels has {levels}")
        return tuple(value)
    return (value,) * levels


class SirDiffUNet(ModelMixin, ConfigMixin):
    """Multi-view latent diffusion UNet of SIR-Diff.

    Args:
        in_channels: channels of the noisy latents (4 for SD's VAE).
        cond_channels: channels of the encoded degraded views, concatenated to
            the latents before ``conv_in`` (0: unconditional).
        out_channels: channels of the prediction.
        block_out_channels: channels per resolution level (SD 2.1: 320, 640, 1280, 1280).
        layers_per_block: ResNet layers per encoder level (decoder: one more).
        attention_levels: per level, whether a self-attention transformer
            follows each ResNet (SD 2.1: all levels but the last).
        view_attention_levels: per level, whether that attention spans all
            views (3D self-attention); other attention levels attend within a view.
        mid_block_attention / mid_block_view_attention: the same for the bottleneck.
        attention_head_dim: channels per attention head (SD 2.1: 64), one or per level.
        transformer_layers_per_block: transformer blocks per attention module.
        norm_num_groups, norm_eps: GroupNorm of the 2D ResNets and the output head.
        view_norm_eps: GroupNorm eps of the 3D branches (SVD's: 1e-5).
        blend_alpha_init: initial alpha of the 2D/3D blend (see ``SpatialViewResBlock``).
        flip_sin_to_cos, freq_shift: SD's sinusoidal timestep projection.
        use_linear_projection: transformer in/out projections as Linear (SD 2.x) or 1x1 conv (SD 1.x).
        upcast_attention: compute attention scores in float32 (SD 2.1 sets it; matters in fp16).
        dropout: ResNet dropout.
        sample_size: nominal latent size, informational (any size divisible by
            2**(levels-1) runs; other sizes run with forced upsampling sizes).
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["norm"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        cond_channels: int = 4,
        out_channels: int = 4,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        attention_levels: tuple[bool, ...] = (True, True, True, False),
        view_attention_levels: tuple[bool, ...] = (False, True, True, False),
        mid_block_attention: bool = True,
        mid_block_view_attention: bool = True,
        attention_head_dim: int | tuple[int, ...] = 64,
        transformer_layers_per_block: int = 1,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        view_norm_eps: float = 1e-5,
        blend_alpha_init: float = 0.5,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        use_linear_projection: bool = True,
        upcast_attention: bool = False,
        dropout: float = 0.0,
        sample_size: int | None = None,
    ) -> None:
        super().__init__()
        levels = len(block_out_channels)
        if levels < 1:
            raise ValueError("block_out_channels must name at least one level")
        if in_channels < 1 or out_channels < 1 or cond_channels < 0:
            raise ValueError(
                f"need in_channels >= 1, out_channels >= 1, cond_channels >= 0; got "
                f"{in_channels}, {out_channels}, {cond_channels}"
            )
        if layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {layers_per_block}")
        for ch in block_out_channels:
            if ch % norm_num_groups:
                raise ValueError(f"norm_num_groups={norm_num_groups} does not divide block channels {ch}")
        attention = _per_level(attention_levels, levels, "attention_levels")
        across = _per_level(view_attention_levels, levels, "view_attention_levels")
        head_dims = _per_level(attention_head_dim, levels, "attention_head_dim")
        for lvl, (has_attn, joint) in enumerate(zip(attention, across)):
            if joint and not has_attn:
                raise ValueError(f"view_attention_levels[{lvl}] is set but level {lvl} has no attention")
        if mid_block_view_attention and not mid_block_attention:
            raise ValueError("mid_block_view_attention needs mid_block_attention")

        time_embed_dim = block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn="silu")

        # Latents and condition enter through one conv, as the seed's channel concatenation.
        self.conv_in = nn.Conv2d(in_channels + cond_channels, block_out_channels[0], kernel_size=3, padding=1)

        resnet_kw = dict(
            groups=norm_num_groups, eps=norm_eps, view_eps=view_norm_eps, alpha_init=blend_alpha_init, dropout=dropout
        )
        attn_kw = dict(
            groups=norm_num_groups,
            layers=transformer_layers_per_block,
            linear_proj=use_linear_projection,
            upcast=upcast_attention,
        )

        self.down_blocks = nn.ModuleList()
        channels = block_out_channels[0]
        for lvl, out_ch in enumerate(block_out_channels):
            self.down_blocks.append(
                ViewDownBlock(
                    channels,
                    out_ch,
                    time_embed_dim,
                    layers=layers_per_block,
                    attention=attention[lvl],
                    across_views=across[lvl],
                    head_dim=head_dims[lvl],
                    add_downsample=lvl < levels - 1,
                    resnet_kw=resnet_kw,
                    attn_kw=attn_kw,
                )
            )
            channels = out_ch

        self.mid_block = ViewMidBlock(
            block_out_channels[-1],
            time_embed_dim,
            attention=mid_block_attention,
            across_views=mid_block_view_attention,
            head_dim=head_dims[-1],
            resnet_kw=resnet_kw,
            attn_kw=attn_kw,
        )

        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        prev_out = reversed_channels[0]
        for i, out_ch in enumerate(reversed_channels):
            lvl = levels - 1 - i  # the encoder level this decoder level mirrors
            skip_in = reversed_channels[min(i + 1, levels - 1)]
            self.up_blocks.append(
                ViewUpBlock(
                    skip_in,
                    prev_out,
                    out_ch,
                    time_embed_dim,
                    layers=layers_per_block + 1,
                    attention=attention[lvl],
                    across_views=across[lvl],
                    head_dim=head_dims[lvl],
                    add_upsample=i < levels - 1,
                    resnet_kw=resnet_kw,
                    attn_kw=attn_kw,
                )
            )
            prev_out = out_ch

        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

    def _time_embedding(self, timestep: torch.Tensor | float | int, batch: int, views: int, ref: torch.Tensor):
        """Timestep (scalar, (B,) or (B, N)) -> embedding (B*N, T)."""
        t = timestep
        if not torch.is_tensor(t):
            t = torch.tensor([t], dtype=torch.float64 if isinstance(t, float) else torch.int64, device=ref.device)
        t = t.to(ref.device)
        if t.ndim == 0 or t.numel() == 1:
            t = t.reshape(1).expand(batch * views)
        elif t.shape == (batch,):
            t = t.repeat_interleave(views)  # (B,) -> (B*N,)
        elif t.shape == (batch, views):
            t = t.reshape(batch * views)  # (B, N) -> (B*N,)
        else:
            raise ValueError(f"timestep must be a scalar, ({batch},) or ({batch}, {views}); got {tuple(t.shape)}")
        # Timesteps returns float32 whatever the model dtype; cast as diffusers' UNets do.
        return self.time_embedding(self.time_proj(t).to(dtype=ref.dtype))

    def _check_inputs(self, sample: torch.Tensor, condition: torch.Tensor | None) -> None:
        cfg = self.config
        if sample.ndim != 5:
            raise ValueError(f"sample must be (B, N, C, H, W); got shape {tuple(sample.shape)}")
        if sample.shape[2] != cfg.in_channels:
            raise ValueError(f"sample has {sample.shape[2]} channels, the model takes {cfg.in_channels}")
        if cfg.cond_channels == 0:
            if condition is not None:
                raise ValueError("this model has cond_channels=0 and takes no condition")
            return
        if condition is None:
            raise ValueError(f"condition (B, N, {cfg.cond_channels}, H, W) is required")
        expected = (*sample.shape[:2], cfg.cond_channels, *sample.shape[3:])
        if tuple(condition.shape) != expected:
            raise ValueError(f"condition must have shape {expected}; got {tuple(condition.shape)}")

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        condition: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SirDiffUNetOutput | tuple[torch.Tensor]:
        """Denoise N views jointly.

        Args:
            sample: noisy latents (B, N, in_channels, H, W).
            timestep: diffusion timestep: a scalar, one per set (B,) or one per view (B, N).
            condition: encoded degraded views (B, N, cond_channels, H, W).
            return_dict: return :class:`SirDiffUNetOutput` rather than a tuple.

        Returns:
            prediction (B, N, out_channels, H, W).
        """
        self._check_inputs(sample, condition)
        batch, views, _, height, width = sample.shape
        x = sample if condition is None else torch.cat([sample, condition.to(sample.dtype)], dim=2)
        x = x.reshape(batch * views, *x.shape[2:])  # (B, N, C+Cc, H, W) -> (B*N, C+Cc, H, W)
        temb = self._time_embedding(timestep, batch, views, x)  # (B*N, T)

        # Sizes not divisible by the total downsampling get explicit upsampling sizes.
        up_factor = 2 ** (len(self.up_blocks) - 1)
        forward_sizes = height % up_factor != 0 or width % up_factor != 0

        x = self.conv_in(x)
        skips: tuple[torch.Tensor, ...] = (x,)
        for block in self.down_blocks:
            x, block_skips = block(x, temb, views)
            skips += block_skips

        x = self.mid_block(x, temb, views)

        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            size = tuple(skips[-1].shape[2:]) if forward_sizes and i < len(self.up_blocks) - 1 else None
            x = block(x, block_skips, temb, views, upsample_size=size)

        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        x = x.reshape(batch, views, *x.shape[1:])  # (B*N, C_out, H, W) -> (B, N, C_out, H, W)
        if not return_dict:
            return (x,)
        return SirDiffUNetOutput(sample=x)
