"""Building blocks of the multi-view SIR-Diff UNet.

Every block works on views folded into the batch axis, ``(B*N, C, H, W)``,
and receives the number of views ``N`` so that the two cross-view parts can
unfold it:

* :class:`SpatialViewResBlock` -- SD's 2D ResNet block with a parallel 3D
  convolution branch over the view axis (the seed's "Spatial-3D ResNet").
* :class:`MultiViewTransformer2D` -- SD's self-attention transformer where,
  at the configured low-resolution levels, every token attends to the tokens
  of all views (the seed's "3D self-attention"); cross-attention is absent.

Module and parameter names mirror diffusers' ``UNet2DConditionModel`` (2D
parts) and ``UNetSpatioTemporalConditionModel`` (``spatial_res_block`` /
``temporal_res_block``) so Stable Diffusion 2.1 and Stable Video Diffusion
state dicts map onto this model key by key (see ``pretrained.py``).
"""

from __future__ import annotations

import torch
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.upsampling import Upsample2D
from torch import nn

__all__ = [
    "MultiViewTransformer2D",
    "SpatialViewResBlock",
    "ViewConvBranch",
    "ViewDownBlock",
    "ViewMidBlock",
    "ViewUpBlock",
]


def _unfold_views(x: torch.Tensor, num_views: int) -> torch.Tensor:
    """(B*N, C, H, W) -> (B, C, N, H, W), the layout of Conv3d over views."""
    bn, c, h, w = x.shape
    if bn % num_views:
        raise ValueError(f"batch of {bn} feature maps is not a multiple of num_views={num_views}")
    return x.reshape(bn // num_views, num_views, c, h, w).permute(0, 2, 1, 3, 4)


def _fold_views(x: torch.Tensor) -> torch.Tensor:
    """(B, C, N, H, W) -> (B*N, C, H, W)."""
    b, c, n, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * n, c, h, w)


class ViewConvBranch(nn.Module):
    """Residual of a ResNet block built from 3D convolutions over the view axis.

    Same layers and parameter names as diffusers' ``TemporalResnetBlock``
    (norm1, conv1 (3,1,1), time_emb_proj, norm2, conv2 (3,1,1)) so Stable
    Video Diffusion's temporal ResNet weights load unchanged. Two
    differences, both needed by :class:`SpatialViewResBlock`: it returns the
    residual only (the skip connection is carried once, by the 2D path), and
    the GroupNorm group count is configurable (the diffusers block fixes 32,
    which small CPU models cannot use). The kernel mixes each view with its
    neighbours in the given view order; GroupNorm statistics span all views.
    """

    def __init__(self, channels: int, temb_channels: int, *, groups: int, eps: float = 1e-5) -> None:
        super().__init__()
        kernel, padding = (3, 1, 1), (1, 0, 0)
        self.norm1 = nn.GroupNorm(num_groups=groups, num_channels=channels, eps=eps, affine=True)
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=kernel, padding=padding)
        self.time_emb_proj = nn.Linear(temb_channels, channels)
        self.norm2 = nn.GroupNorm(num_groups=groups, num_channels=channels, eps=eps, affine=True)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size=kernel, padding=padding)
        self.nonlinearity = nn.SiLU()

    def forward(self, x: torch.Tensor, temb: torch.Tensor, num_views: int) -> torch.Tensor:
        """x (B*N, C, H, W), temb (B*N, T) -> residual (B*N, C, H, W)."""
        h = _unfold_views(x, num_views)  # (B, C, N, H, W)
        h = self.conv1(self.nonlinearity(self.norm1(h)))
        t = self.time_emb_proj(self.nonlinearity(temb))  # (B*N, C)
        # (B*N, C) -> (B, N, C) -> (B, C, N, 1, 1)
        t = t.reshape(h.shape[0], num_views, -1).permute(0, 2, 1)[..., None, None]
        h = self.conv2(self.nonlinearity(self.norm2(h + t)))
        return _fold_views(h)


class SpatialViewResBlock(nn.Module):
    r"""SD's ResNet block with a parallel 3D branch over views (Spatial-3D ResNet).

    The seed states ``O = sigmoid(alpha) * O_2D + sigmoid(1 - alpha) * O_3D``
    with a learned ``alpha``, the 3D convolution *parallel* to the 2D one.
    Where diffusers differs, and what this block does instead:

    * ``SpatioTemporalResBlock`` is sequential: its 3D block consumes the 2D
      block's output. Here both branches read the block input, so the 3D
      branch sees what the 2D one sees. Its input is the input after the 2D
      block's own channel shortcut (``conv_shortcut``, a 1x1 conv present only
      where channels change), so the branch always maps C_out -> C_out and
      SVD's temporal convolutions (always C_out -> C_out) load in every block.
    * ``AlphaBlender`` computes ``a * x2d + (1 - a) * x3d`` with
      ``a = sigmoid(mix)``: weights summing to one. The seed's weights
      ``sigmoid(alpha)`` and ``sigmoid(1 - alpha)`` do not sum to one (their sum
      lies in (1, 1.245]); we keep the seed's formula and its learned alpha.

    Initialisation. Pretrained SD weights are only useful if the block
    reproduces SD's 2D block exactly at the start of fine-tuning, for any N.
    Two things stand in the way, and are resolved so:

    1. Taken literally, the blend scales the pretrained 2D output by
       ``sigmoid(alpha_0)`` (0.62 at alpha_0 = 0.5) in each of SD's 22 ResNet
       blocks; the shrinkage compounds and the pretrained denoiser is lost.
       The blend is therefore divided by the constant ``sigmoid(alpha_0)``
       (``alpha_0`` = the configured initial alpha, a constant, not learned):
       at initialisation the 2D weight is exactly 1.0, and training moves
       alpha, and with it the 2D/3D balance, exactly as the seed's formula.
    2. The 3D branch holds SVD's weights (or random ones) and its output is
       not zero. Its residual is multiplied by a per-channel gate initialised
       to zero (as ControlNet's zero convolutions), so ``O_3D = 0`` at
       initialisation while SVD's convolutions stay intact; the gate receives
       gradient from the first step, and the convolutions right after.

    Hence ``O = (sigmoid(a) * O_2D + sigmoid(1 - a) * g * R_3D) / sigmoid(a_0)``
    with ``O_2D = x_s + R_2D`` and, at initialisation, ``O == O_2D`` bit for bit.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        *,
        groups: int,
        eps: float,
        view_eps: float,
        alpha_init: float,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.spatial_res_block = ResnetBlock2D(
            in_channels=in_channels,
            out_channels=out_channels,
            temb_channels=temb_channels,
            eps=eps,
            groups=groups,
            dropout=dropout,
            non_linearity="swish",
        )
        self.temporal_res_block = ViewConvBranch(out_channels, temb_channels, groups=groups, eps=view_eps)
        self.blend_alpha = nn.Parameter(torch.tensor([float(alpha_init)]))
        self.view_gate = nn.Parameter(torch.zeros(out_channels))
        # a_0, a constant of the config: a non-persistent buffer, so it follows .to(device, dtype)
        # like blend_alpha (no host-to-device copy per forward) and stays out of checkpoints.
        self.register_buffer("blend_alpha_init", torch.tensor([float(alpha_init)]), persistent=False)

    def blend_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(w_2D, w_3D) = (sigmoid(a), sigmoid(1 - a)) / sigmoid(a_0); w_2D is exactly 1.0 while a == a_0."""
        alpha = self.blend_alpha
        # sigmoid(a_0) computed like sigmoid(a) (same dtype, same op) so the ratio is exactly 1 at init.
        norm = torch.sigmoid(self.blend_alpha_init.to(alpha.dtype))
        return torch.sigmoid(alpha) / norm, torch.sigmoid(1.0 - alpha) / norm

    def forward(self, x: torch.Tensor, temb: torch.Tensor, num_views: int) -> torch.Tensor:
        """x (B*N, C_in, H, W), temb (B*N, T) -> (B*N, C_out, H, W)."""
        out_2d = self.spatial_res_block(x, temb)
        shortcut = self.spatial_res_block.conv_shortcut
        x_s = shortcut(x) if shortcut is not None else x
        out_3d = self.view_gate[:, None, None] * self.temporal_res_block(x_s, temb, num_views)
        w_2d, w_3d = self.blend_weights()
        w_2d, w_3d = w_2d.to(out_2d.dtype), w_3d.to(out_2d.dtype)
        return w_2d * out_2d + w_3d * out_3d


class MultiViewTransformer2D(Transformer2DModel):
    """SD's self-attention transformer (no cross-attention), optionally across views.

    With ``across_views`` the per-view token sequences are concatenated before
    the transformer blocks, (B*N, L, D) -> (B, N*L, D): self-attention then
    lets every token attend to all N*L tokens of all views with SD's own
    ``attn1`` weights, while LayerNorms and feed-forward layers, being per
    token, are unchanged. Reshaping around the blocks rather than inside an
    attention processor keeps whatever attention processor is installed
    (SDPA, xformers, ...) valid, so ``set_attn_processor`` cannot silently turn
    the 3D attention back into 2D. diffusers' ``TransformerSpatioTemporalModel``
    attends across frames per pixel only, which is not this.

    Built with ``cross_attention_dim=None``, so ``BasicTransformerBlock`` has no
    ``attn2``/``norm2``. With N = 1 the computation equals SD's self-attention.
    """

    def forward(  # type: ignore[override]
        self, hidden_states: torch.Tensor, num_views: int = 1, across_views: bool = False
    ) -> torch.Tensor:
        """hidden_states (B*N, C, H, W) -> (B*N, C, H, W)."""
        bn, _, height, width = hidden_states.shape
        residual = hidden_states
        tokens, inner_dim = self._operate_on_continuous_inputs(hidden_states)  # (B*N, L, D)
        if across_views:
            if bn % num_views:
                raise ValueError(f"batch of {bn} feature maps is not a multiple of num_views={num_views}")
            tokens = tokens.reshape(bn // num_views, num_views * height * width, -1)  # (B, N*L, D)
        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                tokens = self._gradient_checkpointing_func(block, tokens)
            else:
                tokens = block(tokens)
        tokens = tokens.reshape(bn, height * width, -1)  # (B*N, L, D)
        return self._get_output_for_continuous_inputs(tokens, residual, bn, height, width, inner_dim)


def _transformer(
    channels: int, head_dim: int, *, groups: int, layers: int, linear_proj: bool, upcast: bool
) -> MultiViewTransformer2D:
    if channels % head_dim:
        raise ValueError(f"attention head dim {head_dim} does not divide {channels} channels")
    return MultiViewTransformer2D(
        num_attention_heads=channels // head_dim,
        attention_head_dim=head_dim,
        in_channels=channels,
        num_layers=layers,
        cross_attention_dim=None,
        norm_num_groups=groups,
        use_linear_projection=linear_proj,
        upcast_attention=upcast,
    )


def _transformers(channels: int, head_dim: int, count: int, attn_kw: dict) -> nn.ModuleList:
    return nn.ModuleList(_transformer(channels, head_dim, **attn_kw) for _ in range(count))


class _ViewBlockBase(nn.Module):
    """Shared per-layer step: ResNet block, then (optionally) attention."""

    resnets: nn.ModuleList
    attentions: nn.ModuleList | None
    across_views: bool

    def __init__(self) -> None:
        super().__init__()
        self.gradient_checkpointing = False

    def _layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, num_views: int) -> torch.Tensor:
        resnet = self.resnets[i]
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            x = self._gradient_checkpointing_func(resnet, x, temb, num_views)
        else:
            x = resnet(x, temb, num_views)
        if self.attentions is not None:
            x = self.attentions[i](x, num_views=num_views, across_views=self.across_views)
        return x


class ViewDownBlock(_ViewBlockBase):
    """One encoder level: ``layers`` ResNet(+attention) layers, then a strided conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        *,
        layers: int,
        attention: bool,
        across_views: bool,
        head_dim: int,
        add_downsample: bool,
        resnet_kw: dict,
        attn_kw: dict,
    ) -> None:
        super().__init__()
        self.across_views = across_views
        self.resnets = nn.ModuleList(
            SpatialViewResBlock(in_channels if i == 0 else out_channels, out_channels, temb_channels, **resnet_kw)
            for i in range(layers)
        )
        self.attentions = _transformers(out_channels, head_dim, layers, attn_kw) if attention else None
        self.downsamplers = (
            nn.ModuleList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=1, name="op")])
            if add_downsample
            else None
        )

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, num_views: int
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """x (B*N, C_in, H, W) -> (B*N, C_out, H', W') and the skip tensors for the decoder."""
        skips: tuple[torch.Tensor, ...] = ()
        for i in range(len(self.resnets)):
            x = self._layer(i, x, temb, num_views)
            skips += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips += (x,)
        return x, skips


class ViewMidBlock(_ViewBlockBase):
    """Bottleneck: ResNet, then (attention, ResNet), as SD's mid block."""

    def __init__(
        self,
        channels: int,
        temb_channels: int,
        *,
        attention: bool,
        across_views: bool,
        head_dim: int,
        resnet_kw: dict,
        attn_kw: dict,
    ) -> None:
        super().__init__()
        self.across_views = across_views
        self.resnets = nn.ModuleList(
            SpatialViewResBlock(channels, channels, temb_channels, **resnet_kw) for _ in range(2)
        )
        self.attentions = _transformers(channels, head_dim, 1, attn_kw) if attention else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor, num_views: int) -> torch.Tensor:
        """x (B*N, C, H, W) -> (B*N, C, H, W)."""
        x = self.resnets[0](x, temb, num_views)
        if self.attentions is not None:
            x = self.attentions[0](x, num_views=num_views, across_views=self.across_views)
        return self.resnets[1](x, temb, num_views)


class ViewUpBlock(_ViewBlockBase):
    """One decoder level: ``layers`` ResNet(+attention) layers on [x, skip], then upsampling."""

    def __init__(
        self,
        in_channels: int,
        prev_output_channels: int,
        out_channels: int,
        temb_channels: int,
        *,
        layers: int,
        attention: bool,
        across_views: bool,
        head_dim: int,
        add_upsample: bool,
        resnet_kw: dict,
        attn_kw: dict,
    ) -> None:
        super().__init__()
        self.across_views = across_views
        resnets = []
        for i in range(layers):
            skip_channels = in_channels if i == layers - 1 else out_channels
            resnet_in = prev_output_channels if i == 0 else out_channels
            resnets.append(SpatialViewResBlock(resnet_in + skip_channels, out_channels, temb_channels, **resnet_kw))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = _transformers(out_channels, head_dim, layers, attn_kw) if attention else None
        upsampler = Upsample2D(out_channels, use_conv=True, out_channels=out_channels) if add_upsample else None
        self.upsamplers = nn.ModuleList([upsampler]) if upsampler is not None else None

    def forward(
        self,
        x: torch.Tensor,
        skips: tuple[torch.Tensor, ...],
        temb: torch.Tensor,
        num_views: int,
        upsample_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """x (B*N, C, H, W) with skips (last one consumed first) -> (B*N, C_out, 2H, 2W)."""
        for i in range(len(self.resnets)):
            skip, skips = skips[-1], skips[:-1]
            x = torch.cat([x, skip], dim=1)  # (B*N, C + C_skip, H, W)
            x = self._layer(i, x, temb, num_views)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x
