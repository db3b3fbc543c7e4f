"""Encoder and sampling pipeline on tiny random models (CPU, seconds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sirdiff_ros.model.encoders import EncoderError, SpaceToDepthEncoder, encoder_from_spec
from sirdiff_ros.model.pipeline import (
    CheckpointError,
    Parametrization,
    SirDiffPipeline,
    images_to_tensor,
    make_scheduler,
    tensor_to_images,
    tile_windows,
)
from sirdiff_ros.model.presets import build_model
from sirdiff_ros.model.unet import SirDiffUNet


def tiny_unet(channels: int = 48) -> SirDiffUNet:
    torch.manual_seed(0)
    return build_model("tiny", in_channels=channels, cond_channels=channels, out_channels=channels)


@pytest.fixture(scope="module")
def pipe() -> SirDiffPipeline:
    return SirDiffPipeline(tiny_unet(), make_scheduler("ddim"), SpaceToDepthEncoder(4),
                           Parametrization(residual=True, residual_scale=0.1))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def test_space_to_depth_round_trip_is_lossless() -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(3, 64, 96, 3), dtype=np.uint8)
    enc = SpaceToDepthEncoder(4)
    z = enc.encode(images_to_tensor(imgs))
    assert z.shape == (3, 48, 16, 24)
    back = tensor_to_images(enc.decode(z))
    assert psnr(back, imgs) == math.inf
    assert encoder_from_spec(enc.spec()).latent_channels == 48


def test_encoder_rejects_bad_sizes() -> None:
    with pytest.raises(EncoderError, match="multiple of the encoder factor 4"):
        SpaceToDepthEncoder(4).encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(EncoderError, match="unknown encoder type"):
        encoder_from_spec({"type": "jpeg"})


@pytest.mark.parametrize("n", [1, 4])
def test_shapes_and_determinism(pipe: SirDiffPipeline, n: int) -> None:
    x = torch.rand(2, n, 3, 32, 48) * 2 - 1
    a = pipe(x, num_inference_steps=2, generator=torch.Generator().manual_seed(3)).images
    b = pipe(x, num_inference_steps=2, generator=torch.Generator().manual_seed(3)).images
    c = pipe(x, num_inference_steps=2, generator=torch.Generator().manual_seed(4)).images
    assert a.shape == (2, n, 3, 32, 48)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    u8 = pipe(x, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="np").images
    assert u8.shape == (2, n, 32, 48, 3) and u8.dtype == np.uint8


def test_chunking_does_not_change_results(pipe: SirDiffPipeline) -> None:
    x = torch.rand(3, 2, 3, 32, 32) * 2 - 1
    whole = pipe(x, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    # A budget too small for 3 sets at once forces chunks of sets (tiles stay whole via tile_size).
    chunked = pipe(x, num_inference_steps=2, generator=torch.Generator().manual_seed(0), tile_size=8,
                   memory_budget_mb=1.0)
    assert whole.chunks == 1 and chunked.chunks > 1
    torch.testing.assert_close(whole.images, chunked.images, atol=1e-5, rtol=0)


def test_tiles_covering_the_image_equal_the_untiled_result(pipe: SirDiffPipeline) -> None:
    x = torch.rand(1, 3, 3, 32, 48) * 2 - 1
    full = pipe(x, num_inference_steps=2, generator=torch.Generator().manual_seed(1))
    same = pipe(x, num_inference_steps=2, generator=torch.Generator().manual_seed(1), tile_size=16)
    assert same.tiles == 1
    torch.testing.assert_close(full.images, same.images, atol=1e-6, rtol=0)
    tiled = pipe(x, num_inference_steps=2, generator=torch.Generator().manual_seed(1), tile_size=8, tile_overlap=4)
    assert tiled.tiles == 2
    assert tiled.images.shape == full.images.shape and torch.isfinite(tiled.images).all()


def test_memory_budget_triggers_tiling(pipe: SirDiffPipeline) -> None:
    x = torch.rand(1, 4, 3, 64, 64) * 2 - 1
    free = pipe(x, num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    tight = pipe(x, num_inference_steps=1, generator=torch.Generator().manual_seed(0), memory_budget_mb=0.5)
    assert free.tiles == 1 and tight.tiles > 1


def test_tile_windows_cover_with_overlap() -> None:
    w = tile_windows(40, 16, 4, 2)
    assert w[0][0] == 0 and w[-1][1] == 40
    for (_, a1), (b0, _) in zip(w, w[1:]):
        assert b0 < a1 and a1 - b0 >= 4
    assert tile_windows(10, 16, 4, 2) == [(0, 10)]


def test_check_inputs_errors(pipe: SirDiffPipeline) -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        pipe(torch.zeros(1, 2, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, N, 3, H, W\)"):
        pipe(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="NaN"):
        pipe(torch.full((1, 1, 3, 32, 32), float("nan")))


def test_checkpoint_round_trip_and_errors(pipe: SirDiffPipeline, tmp_path) -> None:
    folder = pipe.save_checkpoint(tmp_path / "ckpt", default_steps=3)
    loaded = SirDiffPipeline.from_checkpoint(folder)
    assert loaded.default_steps == 3 and loaded.parametrization.residual_scale == pytest.approx(0.1)
    x = torch.rand(1, 2, 3, 32, 32) * 2 - 1
    a = pipe(x, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    b = loaded(x, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)

    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors"):
        SirDiffPipeline.from_checkpoint(folder)
    weights.unlink()
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors is missing"):
        SirDiffPipeline.from_checkpoint(folder)


def test_zero_terminal_snr_schedule() -> None:
    plain = make_scheduler("ddim", prediction_type="v_prediction")
    zero = make_scheduler("ddim", prediction_type="v_prediction", zero_terminal_snr=True)
    # SD's schedule leaves sqrt(alpha_bar) = 0.068 of the clean signal in x_999; the rescaled one none.
    assert float(plain.alphas_cumprod[-1].sqrt()) == pytest.approx(0.068, abs=0.002)
    assert float(zero.alphas_cumprod[-1]) < 1e-6
    with pytest.raises(ValueError, match="zero_terminal_snr needs"):
        make_scheduler("ddim", prediction_type="epsilon", zero_terminal_snr=True)


def test_channels_last_weights_give_the_same_output() -> None:
    """The CPU layout (use_channels_last) changes where weights sit in memory, not what the pipeline computes."""
    from sirdiff_ros.model.refiner import PixelRefiner

    torch.manual_seed(3)
    head = PixelRefiner(channels=8, num_blocks=1)
    torch.nn.init.normal_(head.conv_out.weight, std=0.05)
    unet = tiny_unet()
    with torch.no_grad():  # open the 3D-convolution gates (zero at init) so the 5D weights count
        for m in unet.modules():
            if hasattr(m, "view_gate"):
                m.view_gate.fill_(1.0)
    p = SirDiffPipeline(unet, make_scheduler("ddim"), SpaceToDepthEncoder(4), Parametrization(residual_scale=0.1), refiner=head)
    x = torch.rand(1, 3, 3, 32, 48) * 2 - 1
    before = p(x, num_inference_steps=1, generator=torch.Generator().manual_seed(0)).images
    p.use_channels_last()
    convs = [q for q in p.unet.parameters() if q.dim() == 5] + [q for q in head.parameters() if q.dim() == 4]
    assert any(q.dim() == 5 for q in convs)
    assert all(q.is_contiguous(memory_format=torch.channels_last_3d if q.dim() == 5 else torch.channels_last) for q in convs)
    after = p(x, num_inference_steps=1, generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)
