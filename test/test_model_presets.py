"""Model presets: sizes, SD 2.1 / SVD compatibility of ``sd21`` (checked on the meta device), overrides."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel, UNetSpatioTemporalConditionModel

from sirdiff_ros.model import PRESETS, build_model, preset_config
from sirdiff_ros.model.pretrained import sirdiff_config_from_sd

# Stable Diffusion 2.1's UNet config (stabilityai/stable-diffusion-2-1, unet/config.json).
SD21_UNET = dict(
    sample_size=96,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    upcast_attention=True,
    norm_num_groups=32,
    norm_eps=1e-5,
)


@pytest.mark.parametrize("name, low, high", [("tiny", 0.5e6, 2.5e6), ("small", 5e6, 9e6), ("base", 20e6, 35e6)])
def test_cpu_preset_sizes(name: str, low: float, high: float) -> None:
    with torch.device("meta"):
        params = build_model(name).num_parameters()
    assert low <= params <= high


def test_sd21_preset_maps_one_to_one_onto_sd21_and_svd() -> None:
    with torch.device("meta"):
        ours = build_model("sd21").state_dict()
        sd = UNet2DConditionModel(**SD21_UNET).state_dict()
        svd = UNetSpatioTemporalConditionModel().state_dict()  # diffusers' defaults are SVD's sizes
    two_d = {k: v for k, v in ours.items() if ".temporal_res_block." not in k and not k.endswith(("_alpha", "_gate"))}
    three_d = {k: v for k, v in ours.items() if ".temporal_res_block." in k}
    for key, value in two_d.items():
        source = sd[key.replace(".spatial_res_block.", ".")]
        if key == "conv_in.weight":
            assert value.shape == (320, 8, 3, 3) and source.shape == (320, 4, 3, 3)
        else:
            assert value.shape == source.shape, key
    for key, value in three_d.items():
        assert svd[key].shape == value.shape, key
        if key.endswith("conv1.weight"):
            assert value.shape[2:] == (3, 1, 1)
    # everything of SD but its cross-attention has a place in the model
    used = {k.replace(".spatial_res_block.", ".") for k in two_d}
    unused = set(sd) - used
    assert unused and all(".attn2." in k or ".norm2." in k for k in unused)


def test_sd21_preset_equals_the_config_derived_from_sd21(tmp_path) -> None:
    with torch.device("meta"):
        UNet2DConditionModel(**SD21_UNET).save_config(tmp_path / "unet")
    derived = sirdiff_config_from_sd(tmp_path)
    preset = preset_config("sd21")
    for key, value in preset.items():
        assert derived[key] == value, key


@pytest.mark.parametrize("channels", [12, 48])
def test_latent_and_condition_channels_follow_the_encoder(channels: int) -> None:
    torch.manual_seed(0)
    model = build_model("tiny", in_channels=channels, cond_channels=channels, out_channels=channels).eval()
    assert model.conv_in.in_channels == 2 * channels
    x = torch.randn(1, 2, channels, 8, 8)
    with torch.no_grad():
        assert model(x, 1, x).sample.shape == (1, 2, channels, 8, 8)


def test_unconditional_model_takes_no_condition() -> None:
    model = build_model("tiny", cond_channels=0).eval()
    x = torch.randn(1, 2, 4, 8, 8)
    with torch.no_grad():
        assert model(x, 1).sample.shape == x.shape
    with pytest.raises(ValueError, match="takes no condition"):
        model(x, 1, x)


def test_preset_errors_and_read_only_table() -> None:
    assert {"sd21", "small", "tiny", "base"} <= set(PRESETS)
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        preset_config("huge")
    with pytest.raises(ValueError, match="not SirDiffUNet arguments"):
        preset_config("tiny", channels=3)
    with pytest.raises(TypeError):
        PRESETS["tiny"]["layers_per_block"] = 5  # type: ignore[index]


@pytest.mark.parametrize("views, height, width", [(4, 48, 64), (1, 50, 66)])
def test_sd21_forward_shapes_on_the_meta_device(views: int, height: int, width: int) -> None:
    # four levels, attention-free last level, sizes divisible by 8 or not; no memory used
    with torch.device("meta"):
        model = build_model("sd21").eval()
        x = torch.empty(1, views, 4, height, width)
        with torch.no_grad():
            out = model(x, torch.tensor([500]), x).sample
    assert out.shape == (1, views, 4, height, width)
