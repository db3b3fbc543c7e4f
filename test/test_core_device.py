"""``device: auto`` and explicit devices, resolved once per backend."""

from __future__ import annotations

import pytest

from sirdiff_ros.core.device import DeviceError, resolve_device
from sirdiff_ros.core.restorers import RestorerError, create_restorer


def _best_present() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def test_auto_prefers_cuda_then_mps_then_cpu() -> None:
    choice = resolve_device("auto")
    assert choice.device == _best_present() and choice.requested == "auto"
    assert choice.describe().startswith(f"device auto -> {choice.device} (")
    if choice.device == "cpu":
        assert "no CUDA" in choice.why and "no MPS" in choice.why


def test_cpu_only_backends_resolve_auto_to_the_cpu() -> None:
    # Without importing torch: test_node_e2e.py checks that in a fresh interpreter (device auto is the default).
    choice = resolve_device("auto", supported=("cpu",))
    assert (choice.device, choice.why) == ("cpu", "the backend runs on the CPU only")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "CPU", "", "tpu:0"])
def test_unknown_devices_are_rejected(bad: str) -> None:
    with pytest.raises(DeviceError, match="cpu, cuda, cuda:N, mps or auto"):
        resolve_device(bad)


def test_absent_or_unsupported_devices_are_rejected_naming_them() -> None:
    with pytest.raises(DeviceError, match="CPU only; got device 'mps'"):
        resolve_device("mps", supported=("cpu",))
    present = _best_present()
    for kind in ("cuda", "mps"):
        if kind != present:
            with pytest.raises(DeviceError, match=f"{kind.upper()} is not available"):
                resolve_device(f"{kind}:0" if kind == "cuda" else kind)


def test_backends_accept_auto(tmp_path) -> None:
    import torch

    from sirdiff_ros.model.encoders import SpaceToDepthEncoder
    from sirdiff_ros.model.pipeline import Parametrization, SirDiffPipeline, make_scheduler
    from sirdiff_ros.model.presets import build_model

    assert create_restorer("fusion", device="auto").device == "cpu"
    assert create_restorer("passthrough", device="auto").device == "cpu"
    torch.manual_seed(0)
    unet = build_model("tiny", in_channels=48, cond_channels=48, out_channels=48)
    ckpt = SirDiffPipeline(unet, make_scheduler(), SpaceToDepthEncoder(4), Parametrization()).save_checkpoint(tmp_path / "tiny")
    restorer = create_restorer("sirdiff", checkpoint=str(ckpt), device="auto")
    assert restorer.device == _best_present()
    with pytest.raises(RestorerError, match="cpu, cuda, cuda:N, mps or auto"):
        create_restorer("sirdiff", checkpoint=str(ckpt), device="gpu")
