"""SirDiffUNet: shapes, cross-view mixing, the 2D/3D blend at initialisation, save/load."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from sirdiff_ros.model import SirDiffUNet, build_model
from sirdiff_ros.model.blocks import SpatialViewResBlock

H = W = 8  # latent size: every level of the tiny preset still has >= 4x4 pixels


def _inputs(batch: int, views: int, seed: int = 0, size: tuple[int, int] = (H, W)):
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, views, 4, *size, generator=gen)
    cond = torch.randn(batch, views, 4, *size, generator=gen)
    return sample, cond


@pytest.fixture(scope="module")
def tiny() -> SirDiffUNet:
    torch.manual_seed(0)
    return build_model("tiny").eval()


@pytest.fixture(scope="module")
def tiny_2d() -> SirDiffUNet:
    """The tiny preset without 3D attention; its 3D convolutions stay gated to zero."""
    torch.manual_seed(0)
    return build_model("tiny", view_attention_levels=(False, False), mid_block_view_attention=False).eval()


@pytest.mark.parametrize("views", [1, 2, 4, 7])
def test_output_shape_for_any_number_of_views(tiny: SirDiffUNet, views: int) -> None:
    sample, cond = _inputs(2, views)
    with torch.no_grad():
        out = tiny(sample, torch.tensor([10, 900]), cond).sample
    assert out.shape == (2, views, 4, H, W)
    assert torch.isfinite(out).all()


def test_sizes_not_divisible_by_the_downsampling_and_timestep_forms(tiny: SirDiffUNet) -> None:
    sample, cond = _inputs(2, 3, size=(9, 7))
    with torch.no_grad():
        scalar = tiny(sample, 250, cond).sample
        per_set = tiny(sample, torch.tensor([250, 250]), cond).sample
        per_view = tiny(sample, torch.full((2, 3), 250), cond).sample
        other = tiny(sample, torch.tensor([250, 800]), cond).sample
    assert scalar.shape == (2, 3, 4, 9, 7)
    torch.testing.assert_close(scalar, per_set, rtol=0, atol=0)
    torch.testing.assert_close(scalar, per_view, rtol=0, atol=0)
    # the timestep reaches the second set only
    torch.testing.assert_close(other[0], scalar[0], rtol=0, atol=0)
    assert not torch.allclose(other[1], scalar[1])


def _view_change_effect(model: SirDiffUNet) -> tuple[float, float]:
    """Max change of view 0's and of view 2's output when only view 2's input changes."""
    sample, cond = _inputs(1, 3)
    changed = sample.clone()
    changed[:, 2] += torch.randn_like(changed[:, 2])
    with torch.no_grad():
        before = model(sample, 500, cond).sample
        after = model(changed, 500, cond).sample
    return float((after[:, 0] - before[:, 0]).abs().max()), float((after[:, 2] - before[:, 2]).abs().max())


def test_3d_attention_mixes_views(tiny: SirDiffUNet) -> None:
    # At initialisation the 3D convolutions are gated off: only the attention can mix.
    other_view, same_view = _view_change_effect(tiny)
    assert same_view > 1e-2
    assert other_view > 1e-4


def test_without_3d_parts_views_are_independent(tiny_2d: SirDiffUNet) -> None:
    other_view, same_view = _view_change_effect(tiny_2d)
    assert same_view > 1e-2
    assert other_view == 0.0


def test_3d_convolutions_mix_views_once_their_gate_opens() -> None:
    torch.manual_seed(1)
    model = build_model("tiny", view_attention_levels=(False, False), mid_block_view_attention=False).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, SpatialViewResBlock):
                module.view_gate.fill_(1.0)
    other_view, _ = _view_change_effect(model)
    assert other_view > 1e-4


def test_3d_attention_treats_views_as_a_set(tiny: SirDiffUNet) -> None:
    # With the (order-dependent) 3D convolutions gated off, permuting views permutes outputs.
    sample, cond = _inputs(1, 4)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        out = tiny(sample, 300, cond).sample
        out_perm = tiny(sample[:, perm], 300, cond[:, perm]).sample
    torch.testing.assert_close(out_perm, out[:, perm], rtol=1e-4, atol=1e-5)


def _block(alpha_init: float = 0.5, in_ch: int = 16, out_ch: int = 32) -> SpatialViewResBlock:
    torch.manual_seed(2)
    return SpatialViewResBlock(
        in_ch, out_ch, 64, groups=8, eps=1e-5, view_eps=1e-5, alpha_init=alpha_init
    ).eval()


@pytest.mark.parametrize("alpha_init", [0.5, -1.0, 3.0])
def test_blend_reproduces_the_2d_block_at_initialisation(alpha_init: float) -> None:
    block = _block(alpha_init)
    x, temb = torch.randn(6, 16, 5, 5), torch.randn(6, 64)
    with torch.no_grad():
        w_2d, w_3d = block.blend_weights()
    assert float(w_2d) == 1.0
    assert float(w_3d) == pytest.approx(1 / (1 + math.exp(alpha_init - 1)) * (1 + math.exp(-alpha_init)), rel=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(block(x, temb, 3), block.spatial_res_block(x, temb), rtol=0, atol=0)


def test_blend_follows_the_seed_formula_after_training_moves_it() -> None:
    block = _block(0.5)
    x, temb = torch.randn(4, 16, 5, 5), torch.randn(4, 64)
    alpha = 1.7
    with torch.no_grad():
        block.blend_alpha.fill_(alpha)
        block.view_gate.copy_(torch.linspace(-1, 1, 32))
        out = block(x, temb, 2)
        o_2d = block.spatial_res_block(x, temb)
        # the 3D branch runs on the block input projected to the output channels (parallel, not after O_2D)
        x_s = block.spatial_res_block.conv_shortcut(x)
        o_3d = block.view_gate[:, None, None] * block.temporal_res_block(x_s, temb, 2)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = (sig(alpha) * o_2d + sig(1 - alpha) * o_3d) / sig(0.5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, o_2d)


def test_3d_branch_kernel_mixes_neighbouring_views_only() -> None:
    block = _block(in_ch=32)
    branch = block.temporal_res_block
    assert branch.conv1.kernel_size == (3, 1, 1) and branch.conv2.kernel_size == (3, 1, 1)
    # Without the view-spanning GroupNorm statistics, one 3D conv reaches only adjacent views.
    with torch.no_grad():
        x = torch.randn(1, 32, 5, 3, 3)  # (B, C, N, H, W)
        y = branch.conv1(x)
        x[:, :, 4] += 1.0
        y2 = branch.conv1(x)
    torch.testing.assert_close(y2[:, :, :3], y[:, :, :3], rtol=0, atol=0)
    assert not torch.allclose(y2[:, :, 3], y[:, :, 3])


def _plain_config(model: SirDiffUNet) -> dict:
    # JSON turns tuples into lists; diffusers adds private bookkeeping keys.
    return {k: json.loads(json.dumps(v)) for k, v in model.config.items() if not k.startswith("_")}


def test_save_load_round_trip(tiny: SirDiffUNet, tmp_path) -> None:
    tiny.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = SirDiffUNet.from_pretrained(tmp_path).eval()
    assert _plain_config(loaded) == _plain_config(tiny)
    for key, value in tiny.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    sample, cond = _inputs(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(sample, 40, cond).sample, tiny(sample, 40, cond).sample, rtol=0, atol=0)
    # loading in bf16 keeps the blend's initial 2D weight at exactly one
    half = SirDiffUNet.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    blocks = [m for m in half.modules() if isinstance(m, SpatialViewResBlock)]
    with torch.no_grad():
        assert blocks and all(float(b.blend_weights()[0]) == 1.0 for b in blocks)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(3)
    model = build_model("tiny")
    sample, cond = _inputs(1, 2)

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        model(sample, 100, cond).sample.square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.enable_gradient_checkpointing()
    checkpointed = grads()
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda s, c: (s[0], c), re.escape("must be (B, N, C, H, W)")),
        (lambda s, c: (s[:, :, :3], c), "sample has 3 channels"),
        (lambda s, c: (s, None), "condition"),
        (lambda s, c: (s, c[:, :1]), "condition must have shape"),
    ],
)
def test_bad_inputs_are_rejected_clearly(tiny: SirDiffUNet, make_args, message: str) -> None:
    sample, cond = _inputs(1, 2)
    with pytest.raises(ValueError, match=message):
        tiny(*make_args(sample, cond)[:1], 10, make_args(sample, cond)[1])


def test_bad_timestep_shape_is_rejected(tiny: SirDiffUNet) -> None:
    sample, cond = _inputs(2, 2)
    with pytest.raises(ValueError, match="timestep must be"):
        tiny(sample, torch.zeros(3), cond)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(attention_levels=(False, True), view_attention_levels=(True, True)), "has no attention"),
        (dict(attention_levels=(True,)), "attention_levels has 1 entries"),
        (dict(norm_num_groups=24), "does not divide"),
        (dict(attention_head_dim=12), "does not divide"),
        (dict(mid_block_attention=False), "mid_block_view_attention needs"),
    ],
)
def test_inconsistent_configs_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model("tiny", **kwargs)


def test_zero_initialised_parts_still_learn() -> None:
    # Zero gates and zeroed condition channels must not be dead ends for the gradient.
    torch.manual_seed(4)
    model = build_model("tiny")
    with torch.no_grad():
        model.conv_in.weight[:, 4:].zero_()  # as after widening a pretrained conv_in
    sample, cond = _inputs(1, 3)
    model(sample, 100, cond).sample.square().mean().backward()
    assert torch.count_nonzero(model.conv_in.weight.grad[:, 4:]) > 0
    block = model.down_blocks[0].resnets[0]
    assert torch.count_nonzero(block.view_gate.grad) > 0
    assert float(block.blend_alpha.grad.abs()) > 0
    # the 3D convolutions receive gradient only once their gate has opened (ControlNet-style)
    assert torch.count_nonzero(block.temporal_res_block.conv2.weight.grad) == 0
    model.zero_grad()
    with torch.no_grad():
        block.view_gate.fill_(0.1)
    model(sample, 100, cond).sample.square().mean().backward()
    assert torch.count_nonzero(block.temporal_res_block.conv2.weight.grad) > 0
