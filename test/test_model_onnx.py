"""The ONNX Runtime engine of the model backends agrees with the PyTorch reference.

Tolerance: the pipeline's float outputs (images in [-1, 1]) within 1e-4 of
PyTorch's; uint8 images within 1 grey level (rounding of values that differ
by ~1e-6). Measured differences are ~1e-6 (float32 kernels summing in another
order).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from sirdiff_ros.core.restorers.base import RestoreRequest, RestorerError, create_restorer
from sirdiff_ros.model.encoders import SpaceToDepthEncoder
from sirdiff_ros.model.pipeline import Parametrization, SirDiffPipeline, make_scheduler
from sirdiff_ros.model.presets import build_model
from sirdiff_ros.model.refiner import PixelRefiner

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (make venv installs the pinned version)")

from sirdiff_ros.model.onnx_engine import OnnxRunner  # noqa: E402

FLOAT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def pipe() -> SirDiffPipeline:
    torch.manual_seed(0)
    unet = build_model("tiny", in_channels=48, cond_channels=48, out_channels=48).eval()
    refiner = PixelRefiner(channels=8, num_blocks=1, set_context=True, restored_context=True).eval()
    return SirDiffPipeline(unet, make_scheduler(), SpaceToDepthEncoder(4), Parametrization(residual_scale=0.2),
                           refiner=refiner)


def _run(pipe: SirDiffPipeline, views: torch.Tensor, **kw) -> torch.Tensor:
    return pipe(views, num_inference_steps=2, generator=torch.Generator().manual_seed(3), **kw).images


@pytest.mark.parametrize("tile_size", [None, 8])
def test_onnx_and_torch_outputs_agree(pipe: SirDiffPipeline, tmp_path, tile_size) -> None:
    views = torch.rand(1, 3, 3, 48, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    pipe.use_engine("torch")
    reference = _run(pipe, views, tile_size=tile_size)
    pipe.use_engine("onnx", threads=1, cache_dir=tmp_path)
    try:
        assert pipe.engine == "onnx"
        got = _run(pipe, views, tile_size=tile_size)
    finally:
        pipe.use_engine("torch")
    assert got.shape == reference.shape
    diff = float((got - reference).abs().max())
    assert diff <= FLOAT_TOLERANCE, diff
    assert not torch.equal(reference, torch.zeros_like(reference))


def test_exports_are_cached_per_weights_and_shape(pipe: SirDiffPipeline, tmp_path) -> None:
    runner = OnnxRunner(pipe.refiner, "head", threads=1, cache_dir=tmp_path)
    a = torch.rand(1, 3, 16, 16) * 2 - 1
    ctx = torch.zeros(1, runner.module.context_channels, 16, 16)
    first = runner(a, a, ctx)
    files = sorted(tmp_path.glob("head-*.onnx"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    # Another runner with the same weights and shapes loads the file; a new shape exports a second one.
    again = OnnxRunner(pipe.refiner, "head", threads=1, cache_dir=tmp_path)
    torch.testing.assert_close(again(a, a, ctx), first)
    assert files[0].stat().st_mtime_ns == stamp and len(list(tmp_path.glob("head-*.onnx"))) == 1
    b = torch.rand(1, 3, 16, 24) * 2 - 1
    again(b, b, torch.zeros(1, runner.module.context_channels, 16, 24))
    assert len(list(tmp_path.glob("head-*.onnx"))) == 2
    # Other weights: another file.
    other = PixelRefiner(channels=8, num_blocks=1, set_context=True, restored_context=True)
    OnnxRunner(other, "head", threads=1, cache_dir=tmp_path)(a, a, ctx)
    assert len(list(tmp_path.glob("head-*.onnx"))) == 3
    assert not list(tmp_path.glob("*.part"))
    with pytest.raises(ValueError):
        OnnxRunner(pipe.refiner, "head", threads=0, cache_dir=tmp_path)


def test_shipped_weights_agree_and_auto_picks_onnx(tmp_path) -> None:
    from sirdiff_ros.data.synth import sample_view_set

    views = sample_view_set(5, 4, 96, 64)
    request = RestoreRequest(views=views, targets=[0])
    torch_r = create_restorer("sirdiff", engine="torch", dtype="float32")
    auto = create_restorer("sirdiff", dtype="float32", onnx_cache=str(tmp_path))
    assert torch_r.engine == "torch" and auto.engine == "onnx"
    # Asked for by name, ONNX Runtime gets the float32 it runs, whatever 'auto' picks on this CPU.
    assert create_restorer("sirdiff", engine="onnx", onnx_cache=str(tmp_path)).dtype == torch.float32
    a, b = torch_r.restore(request).for_index(0).image, auto.restore(request).for_index(0).image
    assert a.shape == b.shape == views[0].image.shape
    assert int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1
    assert list(tmp_path.glob("unet-*.onnx")) and list(tmp_path.glob("refiner-*.onnx"))
    # Views deblurred by their own motion: the head for them, in both engines alike.
    from dataclasses import replace

    deblurred = RestoreRequest(views=[replace(v, extras={**v.extras, "deblur_px": 4.0}) for v in views], targets=[0])
    c, d = torch_r.restore(deblurred).for_index(0), auto.restore(deblurred).for_index(0)
    assert c.info["head"] == d.info["head"] == "deblurred" and not np.array_equal(c.image, a)
    assert int(np.abs(c.image.astype(int) - d.image.astype(int)).max()) <= 1


def test_engine_option_is_checked() -> None:
    with pytest.raises(RestorerError, match="engine"):
        create_restorer("sirdiff", engine="tensorrt")
    with pytest.raises(RestorerError, match="threads"):
        create_restorer("sirdiff", threads=0)
    with pytest.raises(RestorerError, match="tile_size"):
        create_restorer("sirdiff", tile_size=-4)
    assert os.environ.get("OMP_WAIT_POLICY") == "PASSIVE"  # set before torch loaded (conftest or the backend)
