"""Initialisation from tiny random SD-like and SVD-like checkpoints made here with save_pretrained.

The equivalence tests compare SirDiffUNet with diffusers' UNet2DConditionModel
on the same input. Our model has no cross-attention; to make the comparison
exact and honest, the tiny SD UNet's cross-attention output projections are
zeroed before saving, so its cross-attention adds exactly 0 whatever the
(random) text states it is given -- everything else in it is random and used.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel, UNetSpatioTemporalConditionModel
from safetensors.torch import load_file, save_file

from sirdiff_ros.model import SirDiffUNet
from sirdiff_ros.model.pretrained import (
    PretrainedWeightsError,
    build_from_pretrained,
    load_pretrained,
    sirdiff_config_from_sd,
)

WEIGHTS = "diffusion_pytorch_model.safetensors"
COND = 6  # condition channels differ from SD's 4 latent channels on purpose
SIZE = 16


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Random values everywhere (diffusers zero-initialises some layers), reproducibly."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def sd_unet(tmp_path_factory) -> tuple[Path, UNet2DConditionModel]:
    root = tmp_path_factory.mktemp("sd21_tiny")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=SIZE,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24,
        attention_head_dim=(2, 4),  # diffusers' name for the head counts: 16-channel heads
        use_linear_projection=True,
        norm_num_groups=8,
    )
    _perturb(unet, 1)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".attn2.to_out.0." in name:
                p.zero_()
    unet.save_pretrained(root / "unet")
    return root, unet.eval()


@pytest.fixture(scope="module")
def svd_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("svd_tiny")
    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=24,
        num_attention_heads=(2, 4),
        in_channels=8,
        out_channels=4,
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24,
    )
    _perturb(unet, 2)
    unet.save_pretrained(root / "unet")
    return root


@pytest.fixture(scope="module")
def initialised(sd_unet, svd_root):
    model, report = build_from_pretrained(sd_unet[0], svd_root, cond_channels=COND)
    return model.eval(), report


def _inputs(batch: int, views: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, views, 4, SIZE, SIZE, generator=gen)
    cond = torch.randn(batch, views, COND, SIZE, SIZE, generator=gen)
    return sample, cond


def test_report_accounts_for_every_tensor(initialised, sd_unet, svd_root) -> None:
    model, report = initialised
    keys = set(model.state_dict())
    parts = [set(report.copied), set(report.widened), set(report.new)]
    assert sum(len(p) for p in parts) == len(keys) and set.union(*parts) == keys
    assert report.widened == ["conv_in.weight"]
    assert all(k.endswith((".blend_alpha", ".view_gate")) for k in report.new)
    sd_keys = set(load_file(sd_unet[0] / "unet" / WEIGHTS))
    sd_left = {e.split("::")[1] for e in report.left_out if e.startswith(str(sd_unet[0]))}
    # exactly SD's cross-attention (attn2 and its LayerNorm norm2), nothing else
    cross_attention = {k for k in sd_keys if ".transformer_blocks." in k and (".attn2." in k or ".norm2." in k)}
    assert cross_attention and sd_left == cross_attention
    svd_file = str(svd_root / "unet" / WEIGHTS)
    assert all(report.source[k].startswith(svd_file) for k in report.copied if ".temporal_res_block." in k)
    assert "widened 1" in report.summary() and "attn2" in report.summary()


def test_tensors_are_copied_bit_exactly(initialised) -> None:
    model, report = initialised
    state = model.state_dict()
    files: dict[str, dict[str, torch.Tensor]] = {}
    for key in report.copied + report.widened:
        file, _, src_key = report.source[key].rpartition("::")
        if file not in files:
            files[file] = load_file(file)
        source = files[file][src_key]
        if key == "conv_in.weight":
            assert state[key].shape == (32, 4 + COND, 3, 3)
            assert torch.equal(state[key][:, :4], source)
            assert torch.count_nonzero(state[key][:, 4:]) == 0
        else:
            assert state[key].shape == source.shape
            assert torch.equal(state[key], source), key
    assert any(".temporal_res_block.conv1.weight" in k for k in report.copied)


def test_reproduces_the_2d_unet_for_a_single_view(initialised, sd_unet) -> None:
    model, _ = initialised
    sample, cond = _inputs(2, 1)
    timesteps = torch.tensor([10, 700])
    text = torch.randn(2, 5, 24)  # contributes exactly zero through the zeroed cross-attention
    with torch.no_grad():
        ours = model(sample, timesteps, cond).sample
        reference = sd_unet[1](sample[:, 0], timesteps, encoder_hidden_states=text).sample
    torch.testing.assert_close(ours[:, 0], reference, rtol=0, atol=0)


def test_reproduces_the_2d_unet_per_view_without_3d_attention(sd_unet, svd_root) -> None:
    # The 3D convolutions hold SVD's (non-zero) weights; their zero gate keeps views independent.
    model, _ = build_from_pretrained(sd_unet[0], svd_root, cond_channels=COND, mid_block_view_attention=False)
    sample, cond = _inputs(2, 3, seed=1)
    timesteps = torch.tensor([10, 700])
    with torch.no_grad():
        ours = model.eval()(sample, timesteps, cond).sample
        # (B, N, C, H, W) -> (B*N, C, H, W) for the 2D UNet, one timestep per view
        flat = sample.reshape(6, 4, SIZE, SIZE)
        text = torch.zeros(6, 1, 24)
        reference = sd_unet[1](flat, timesteps.repeat_interleave(3), encoder_hidden_states=text).sample
    torch.testing.assert_close(ours, reference.reshape(2, 3, 4, SIZE, SIZE), rtol=0, atol=0)


def test_3d_attention_is_the_only_difference_with_several_views(initialised) -> None:
    model, _ = initialised
    assert model.config.mid_block_view_attention
    sample, cond = _inputs(1, 3, seed=2)
    with torch.no_grad():
        joint = model(sample, 300, cond).sample
        alone = torch.cat([model(sample[:, i : i + 1], 300, cond[:, i : i + 1]).sample for i in range(3)], dim=1)
    assert not torch.allclose(joint, alone, atol=1e-5)


def test_condition_is_ignored_at_initialisation(initialised) -> None:
    model, _ = initialised
    sample, cond = _inputs(1, 2, seed=3)
    with torch.no_grad():
        a = model(sample, 50, cond).sample
        b = model(sample, 50, torch.randn_like(cond)).sample
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_without_svd_the_3d_branches_are_new(sd_unet) -> None:
    model, report = build_from_pretrained(sd_unet[0], cond_channels=COND)
    temporal = [k for k in model.state_dict() if ".temporal_res_block." in k]
    assert temporal and set(temporal) <= set(report.new)
    sample, cond = _inputs(1, 1)
    with torch.no_grad():
        ours = model.eval()(sample, 5, cond).sample[:, 0]
        reference = sd_unet[1](sample[:, 0], 5, encoder_hidden_states=torch.zeros(1, 1, 24)).sample
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)


def test_unet_folder_and_pipeline_root_are_both_accepted(sd_unet) -> None:
    root = sd_unet[0]
    assert sirdiff_config_from_sd(root) == sirdiff_config_from_sd(root / "unet")
    assert sirdiff_config_from_sd(root)["attention_head_dim"] == 16


# ---- failures: each names the file and, where one is at fault, the key ------------------------


def _copy_sd(src: Path, dst: Path, edit=None) -> Path:
    shutil.copytree(src, dst)
    if edit is not None:
        file = dst / "unet" / WEIGHTS
        tensors = load_file(file)
        edit(tensors)
        save_file(tensors, file)
    return dst


def _model(root: Path) -> SirDiffUNet:
    return SirDiffUNet(**sirdiff_config_from_sd(root, cond_channels=COND))


def test_corrupt_file_names_the_file(sd_unet, tmp_path) -> None:
    root = _copy_sd(sd_unet[0], tmp_path / "sd")
    file = root / "unet" / WEIGHTS
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # truncated download
    with pytest.raises(PretrainedWeightsError, match=str(file)):
        load_pretrained(_model(root), root)
    file.write_bytes(b"not a safetensors file at all")
    with pytest.raises(PretrainedWeightsError, match=str(file)):
        load_pretrained(_model(root), root)


@pytest.mark.parametrize(
    "key, edit, message",
    [
        (
            "down_blocks.0.resnets.1.conv1.weight",
            lambda t, k: t.__setitem__(k, torch.zeros(32, 32, 1, 1)),
            "has shape",
        ),
        ("mid_block.attentions.0.proj_in.bias", lambda t, k: t.pop(k), "missing tensor"),
        ("conv_out.weight", lambda t, k: t[k].view(-1).__setitem__(7, float("nan")), "NaN"),
        ("add_embedding.linear_1.weight", lambda t, k: t.__setitem__(k, torch.zeros(2, 2)), "has no place"),
    ],
)
def test_bad_tensor_names_file_and_key(sd_unet, tmp_path, key, edit, message) -> None:
    root = _copy_sd(sd_unet[0], tmp_path / "sd", lambda tensors: edit(tensors, key))
    model = _model(root)
    with pytest.raises(PretrainedWeightsError, match=message) as info:
        load_pretrained(model, root)
    assert str(root / "unet" / WEIGHTS) in str(info.value)
    assert repr(key) in str(info.value)


def test_svd_tensor_shape_mismatch_names_file_and_key(sd_unet, svd_root, tmp_path) -> None:
    svd_copy = tmp_path / "svd"
    shutil.copytree(svd_root, svd_copy)
    file = svd_copy / "unet" / WEIGHTS
    tensors = load_file(file)
    key = "up_blocks.1.resnets.2.temporal_res_block.conv2.weight"
    tensors[key] = tensors[key][:, :, :1].contiguous()  # a (1,1,1) kernel instead of (3,1,1)
    save_file(tensors, file)
    with pytest.raises(PretrainedWeightsError, match="has shape") as info:
        load_pretrained(_model(sd_unet[0]), sd_unet[0], svd_copy)
    assert str(file) in str(info.value) and repr(key) in str(info.value)


def test_model_of_other_sizes_is_rejected_naming_config_and_key(sd_unet) -> None:
    other = SirDiffUNet(**{**sirdiff_config_from_sd(sd_unet[0]), "block_out_channels": (32, 32)})
    with pytest.raises(PretrainedWeightsError, match="block_out_channels") as info:
        load_pretrained(other, sd_unet[0])
    assert str(sd_unet[0] / "unet" / "config.json") in str(info.value)
    narrow_heads = SirDiffUNet(**{**sirdiff_config_from_sd(sd_unet[0]), "attention_head_dim": 8})
    with pytest.raises(PretrainedWeightsError, match="attention_head_dim"):
        load_pretrained(narrow_heads, sd_unet[0])


def test_unsupported_sd_config_is_rejected(sd_unet, tmp_path) -> None:
    root = _copy_sd(sd_unet[0], tmp_path / "sd")
    config_file = root / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config["resnet_time_scale_shift"] = "scale_shift"
    config_file.write_text(json.dumps(config))
    with pytest.raises(PretrainedWeightsError, match="resnet_time_scale_shift") as info:
        sirdiff_config_from_sd(root)
    assert str(config_file) in str(info.value)


def test_missing_folder_or_weights_are_reported(sd_unet, tmp_path) -> None:
    with pytest.raises(PretrainedWeightsError, match="config.json"):
        sirdiff_config_from_sd(tmp_path / "nowhere")
    root = _copy_sd(sd_unet[0], tmp_path / "sd")
    (root / "unet" / WEIGHTS).unlink()
    with pytest.raises(PretrainedWeightsError, match=WEIGHTS):
        load_pretrained(_model(root), root)
