"""The full-resolution refinement head: identity at start, part of a checkpoint, refused when corrupt."""

from __future__ import annotations

import pytest
import torch

from sirdiff_ros.model.encoders import SpaceToDepthEncoder
from sirdiff_ros.model.pipeline import REFINER_FOLDER, CheckpointError, Parametrization, SirDiffPipeline, make_scheduler
from sirdiff_ros.model.presets import build_model
from sirdiff_ros.model.refiner import PixelRefiner


def _pipe(refiner: PixelRefiner | None) -> SirDiffPipeline:
    torch.manual_seed(0)
    unet = build_model("tiny", in_channels=48, cond_channels=48, out_channels=48)
    return SirDiffPipeline(unet, make_scheduler("ddim"), SpaceToDepthEncoder(4),
                           Parametrization(residual=True, residual_scale=0.1), refiner=refiner)


def _trained_looking_head() -> PixelRefiner:
    torch.manual_seed(1)
    head = PixelRefiner(channels=8, num_blocks=1)
    torch.nn.init.normal_(head.conv_out.weight, std=0.05)  # as if trained: no longer the identity
    return head


def test_an_untrained_head_is_the_identity_and_checks_shapes() -> None:
    head = PixelRefiner(channels=8, num_blocks=2)
    x, y = torch.rand(2, 3, 20, 24) * 2 - 1, torch.rand(2, 3, 20, 24) * 2 - 1
    torch.testing.assert_close(head(x, y), x, atol=0, rtol=0)
    with pytest.raises(ValueError, match="two \\(M, 3, H, W\\) tensors of one shape"):
        head(x, y[:, :, :10])
    with pytest.raises(ValueError, match="num_blocks >= 0"):
        PixelRefiner(channels=8, num_blocks=-1)


def test_the_head_changes_the_output_and_round_trips_with_the_checkpoint(tmp_path) -> None:
    plain, refined = _pipe(None), _pipe(_trained_looking_head())
    x = torch.rand(1, 2, 3, 32, 32) * 2 - 1

    def run(p: SirDiffPipeline) -> torch.Tensor:
        return p(x, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images

    a, b = run(plain), run(refined)
    assert (a - b).abs().max() > 1e-3  # the head is applied (same UNet, same noise)
    folder = refined.save_checkpoint(tmp_path / "ckpt", default_steps=2)
    assert (folder / REFINER_FOLDER / "config.json").is_file()
    loaded = SirDiffPipeline.from_checkpoint(folder)
    assert isinstance(loaded.refiner, PixelRefiner) and loaded.refiner.config.num_blocks == 1
    torch.testing.assert_close(run(loaded), b, atol=1e-6, rtol=0)
    # A checkpoint without a head still loads as before.
    assert SirDiffPipeline.from_checkpoint(plain.save_checkpoint(tmp_path / "plain")).refiner is None


def test_a_corrupt_or_missing_head_is_refused(tmp_path) -> None:
    folder = _pipe(_trained_looking_head()).save_checkpoint(tmp_path / "ckpt")
    weights = folder / REFINER_FOLDER / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot load the refiner"):
        SirDiffPipeline.from_checkpoint(folder)
    weights.unlink()
    (folder / REFINER_FOLDER / "config.json").unlink()
    with pytest.raises(CheckpointError, match="cannot load the refiner"):
        SirDiffPipeline.from_checkpoint(folder)


def test_output_views_decode_and_refine_only_the_views_asked_for() -> None:
    pipe = _pipe(_trained_looking_head())
    x = torch.rand(2, 3, 3, 32, 32) * 2 - 1

    def run(**kw) -> torch.Tensor:
        return pipe(x, num_inference_steps=1, generator=torch.Generator().manual_seed(0), **kw).images

    full = run()
    assert full.shape == (2, 3, 3, 32, 32)
    torch.testing.assert_close(run(output_views=[2, 0]), full[:, [2, 0]], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="output_views"):
        run(output_views=[3])
