"""A full-resolution refinement head after the latent decoder.

The CPU presets' encoder is a lossless space-to-depth x4: the UNet's finest
level sees 4x4 pixel blocks as 48 channels through 32 feature channels, so it
cannot produce per-pixel corrections such as removing sensor noise. Measured
on a validation sequence with an earlier UNet (MODEL_CARD.md): the restored targets'
high-frequency error (above a 1.5 px Gaussian) fell only from 24.8e-4 to
22.8e-4 (MSE) where the noise-free blurred frames have 21.5e-4, and a plain
non-local-means filter on the *output* added +0.43 dB. SD's VAE decoder is a
full-resolution network; the space-to-depth decoder is a reshape. This head
is the missing full-resolution stage: a small residual CNN that sees the
decoded restoration and the degraded view it came from (both in [-1, 1]) and
returns a corrected restoration. Its last convolution starts at zero, so an
untrained head is the identity.

It is trained after the UNet, with the UNet frozen, on the pipeline's own
output at the checkpoint's default number of steps (``sirdiff-train refine``).

With ``set_context=True`` the head also sees its view set at full resolution:
the per-pixel mean of the set's degraded views and their spread around that
mean (:func:`view_set_context`). Registered sets hold every view in the
target's pixel grid, with the target's own pixels wherever a partner could not
be verified, so the mean is the target averaged with the partners where they
agree: independent sensor noise falls by up to the square root of the number
of views, which a single-view head cannot do; the spread marks where the
views disagree (blur or residual misalignment). Summaries over the views keep
the head independent of their number and order; a single view gives its own
image and zero spread.

With ``restored_context=True`` as well, the same summary of the set's
*restored* views (the UNet's output for every view, all in the target's grid)
follows: the partners' restorations carry detail the target's blur destroyed,
and their mean averages the UNet's own per-view errors.

With ``mean_gate=True`` (needs ``set_context``) the head starts from a per-pixel
blend of the restoration and the mean of the set's degraded views, the blend
weight a sigmoid of its features, and adds its correction to that. Measured
on real-photo validation sets whose views were deblurred by their own motion:
the mean of four views (33.14 dB) and the UNet+head (33.01 dB) err in
different places, and their plain average scored 33.95 dB; a gate lets the
head learn where each holds. The gate starts at one half.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

__all__ = ["PixelRefiner", "view_set_context"]


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(self.act(x))))


def _summary(sets: torch.Tensor) -> torch.Tensor:
    """(B, N, 3, H, W) -> (B, 4, H, W): the views' mean (3) and their mean
    absolute deviation from it, averaged over colour (1)."""
    mean = sets.mean(dim=1)  # (B, N, 3, H, W) -> (B, 3, H, W)
    spread = (sets - mean[:, None]).abs().mean(dim=(1, 2))  # -> (B, H, W)
    return torch.cat([mean, spread[:, None]], dim=1)


def view_set_context(degraded_sets: torch.Tensor, restored_sets: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N, 3, H, W) degraded view sets -> (B, 4, H, W): the views' mean (3)
    and their mean absolute deviation from it, averaged over colour (1).

    With ``restored_sets`` (the same sets restored, same shape), their summary
    follows: (B, 8, H, W).
    """
    for name, t in (("degraded", degraded_sets), ("restored", restored_sets)):
        if t is not None and (t.ndim != 5 or t.shape[2] != 3):
            raise ValueError(f"need (B, N, 3, H, W) {name} view sets, got {tuple(t.shape)}")
    if restored_sets is None:
        return _summary(degraded_sets)
    if restored_sets.shape != degraded_sets.shape:
        raise ValueError(f"restored sets {tuple(restored_sets.shape)} do not match the degraded "
                         f"{tuple(degraded_sets.shape)}")
    return torch.cat([_summary(degraded_sets), _summary(restored_sets.to(degraded_sets.dtype))], dim=1)


class PixelRefiner(ModelMixin, ConfigMixin):
    """``forward(restored, degraded[, context])``: (M, 3, H, W) each, in [-1, 1] -> refined (M, 3, H, W).

    ``channels`` feature channels, ``num_blocks`` residual blocks of two 3x3
    convolutions (receptive field ``4 * num_blocks + 5`` px); ``set_context``:
    also take each view's set summary ``context`` (M, 4, H, W) from
    :func:`view_set_context`; ``restored_context`` (with ``set_context``): that
    context also summarises the set's restored views, (M, 8, H, W);
    ``mean_gate`` (with ``set_context``): start from a learned per-pixel blend
    of the restoration and the set's degraded mean (module docstring).
    """

    @register_to_config
    def __init__(self, channels: int = 32, num_blocks: int = 3, set_context: bool = False,
                 restored_context: bool = False, mean_gate: bool = False) -> None:
        super().__init__()
        if channels < 1 or num_blocks < 0:
            raise ValueError(f"need channels >= 1 and num_blocks >= 0, got {channels} / {num_blocks}")
        if restored_context and not set_context:
            raise ValueError("restored_context extends the set context; it needs set_context=True")
        if mean_gate and not set_context:
            raise ValueError("mean_gate blends with the set's mean; it needs set_context=True")
        self.conv_in = nn.Conv2d(6 + self.context_channels, channels, 3, padding=1, padding_mode="reflect")
        self.res_blocks = nn.ModuleList(_ResBlock(channels) for _ in range(num_blocks))
        self.conv_out = nn.Conv2d(channels, 3, 3, padding=1, padding_mode="reflect")
        nn.init.zeros_(self.conv_out.weight)  # starts as the identity
        nn.init.zeros_(self.conv_out.bias)
        # Blend weight towards the set's mean; zero weights: sigmoid(0) = one half everywhere.
        self.gate_out = nn.Conv2d(channels, 1, 3, padding=1, padding_mode="reflect") if mean_gate else None
        if self.gate_out is not None:
            nn.init.zeros_(self.gate_out.weight)
            nn.init.zeros_(self.gate_out.bias)

    @property
    def summarises_restored(self) -> bool:
        """Whether the context also summarises the set's restored views (callers must decode them all)."""
        return bool(self.config.restored_context)

    @property
    def context_channels(self) -> int:
        """Channels of the context :meth:`forward` takes (0: none)."""
        if not self.config.set_context:
            return 0
        return 8 if self.summarises_restored else 4

    def forward(self, restored: torch.Tensor, degraded: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        if restored.shape != degraded.shape or restored.ndim != 4 or restored.shape[1] != 3:
            raise ValueError(f"need two (M, 3, H, W) tensors of one shape, got {tuple(restored.shape)} "
                             f"and {tuple(degraded.shape)}")
        inputs = [restored, degraded]
        c = self.context_channels
        if c:
            m, _, hh, ww = restored.shape
            if context is None or tuple(context.shape) != (m, c, hh, ww):
                got = None if context is None else tuple(context.shape)
                raise ValueError(f"this head takes its view set's context ({m}, {c}, {hh}, {ww}), got {got}")
            inputs.append(context.to(restored.dtype))
        elif context is not None:
            raise ValueError("this head was built without set_context; it takes no context")
        h = self.conv_in(torch.cat(inputs, dim=1))  # (M, 6 + context, H, W) -> (M, C, H, W)
        for block in self.res_blocks:
            h = block(h)
        h = torch.nn.functional.silu(h)
        base = restored
        if self.gate_out is not None:
            gate = torch.sigmoid(self.gate_out(h))  # (M, C, H, W) -> (M, 1, H, W)
            base = restored + gate * (inputs[2][:, :3] - restored)  # towards the degraded views' mean
        return base + self.conv_out(h)  # (M, C, H, W) -> (M, 3, H, W)
