"""The model's networks run by ONNX Runtime on the CPU (optional; PyTorch is the reference).

A network (the UNet's forward, the refinement head) is exported with
``torch.onnx.export`` once per input signature (shapes and dtypes) and the
file is kept in a cache folder keyed by the weights, the signature and the
library versions, so a node restarts without exporting again. Sessions run
with a fixed number of intra-op threads and without spin-waiting
(``session.intra_op.allow_spinning = 0``): on a CPU shared with a SLAM stack,
idle threads must sleep, not burn the cores others need.

On this project's CPU models ONNX Runtime is 1.5-1.7x faster than PyTorch for
the convolution-bound shapes (a 32x32 latent tile, the full-resolution head).
On a whole 320x240 view set PyTorch's fused attention wins on an idle CPU
(1.0 s against 1.3 s), but next to one other busy process its two OpenMP
threads stall (8.0 s) where ONNX Runtime's do not (1.4 s): the CPU a robot
shares with its SLAM stack is the case that counts (``bench/README.md``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["OnnxEngineError", "OnnxRunner", "default_cache_dir", "onnxruntime_available"]


class OnnxEngineError(RuntimeError):
    """ONNX Runtime is missing, or a network could not be exported or run by it."""


def onnxruntime_available() -> bool:
    """Whether the ``onnxruntime`` package is installed (``pip install sirdiff_ros[onnx]``)."""
    return importlib.util.find_spec("onnxruntime") is not None


def default_cache_dir() -> Path:
    """``$SIRDIFF_ONNX_CACHE``, else ``$XDG_CACHE_HOME/sirdiff_ros/onnx`` (``~/.cache/...``)."""
    if os.environ.get("SIRDIFF_ONNX_CACHE"):
        return Path(os.environ["SIRDIFF_ONNX_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sirdiff_ros" / "onnx"


def _weights_digest(module: torch.nn.Module) -> str:
    """Identity of a network: its class, every parameter and buffer, and the library versions."""
    import onnxruntime

    h = hashlib.sha256(f"{type(module).__qualname__}|torch {torch.__version__}|ort {onnxruntime.__version__}".encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:20]


class OnnxRunner:
    """Call ``module(*inputs)`` (tensors in, one tensor out) through ONNX Runtime.

    ``name`` prefixes the cached files; ``threads`` is the session's intra-op
    thread count. Inputs are moved to the CPU as numpy arrays and the output
    comes back as a CPU tensor of the output's dtype. Thread-safe.
    """

    def __init__(self, module: torch.nn.Module, name: str, threads: int, cache_dir: str | Path | None = None) -> None:
        if not onnxruntime_available():
            raise OnnxEngineError("onnxruntime is not installed (pip install sirdiff_ros[onnx])")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.module = module.eval()
        self.name = name
        self.threads = threads
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._digest = _weights_digest(module)
        self._sessions: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        signature = tuple((tuple(t.shape), str(t.dtype)) for t in inputs)
        with self._lock:
            session = self._sessions.get(signature)
            if session is None:
                session = self._sessions[signature] = self._session(signature, inputs)
        feed = {f"input{i}": t.detach().cpu().numpy() for i, t in enumerate(inputs)}
        try:
            (out,) = session.run(None, feed)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise OnnxEngineError(f"ONNX Runtime failed on {self.name} {signature}: {exc}") from exc
        return torch.from_numpy(np.ascontiguousarray(out))

    def model_path(self, signature: tuple[Any, ...]) -> Path:
        """The cached ONNX file of this network for one input signature."""
        sig = hashlib.sha256(repr(signature).encode()).hexdigest()[:12]
        return self.cache_dir / f"{self.name}-{self._digest}-{sig}.onnx"

    def _session(self, signature: tuple[Any, ...], inputs: tuple[torch.Tensor, ...]) -> Any:
        import onnxruntime as ort

        path = self.model_path(signature)
        if not path.is_file():
            self._export(path, inputs)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle worker threads sleep instead of spinning (a shared CPU).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise OnnxEngineError(f"ONNX Runtime cannot load {path}: {exc}") from exc

    def _export(self, path: Path, inputs: tuple[torch.Tensor, ...]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written under a temporary name and renamed: a concurrent reader never sees half a file.
        fd, tmp = tempfile.mkstemp(suffix=".onnx.part", dir=path.parent)
        os.close(fd)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # The TorchScript-based exporter warns that it is not the dynamo one; it is the one
                # that needs no extra package and handles the custom attention processors.
                warnings.simplefilter("ignore")
                torch.onnx.export(self.module, tuple(t.detach().cpu() for t in inputs), tmp, dynamo=False,
                                  opset_version=17, input_names=[f"input{i}" for i in range(len(inputs))],
                                  output_names=["output"])
            os.replace(tmp, path)
        except Exception as exc:
            raise OnnxEngineError(f"cannot export {self.name} to ONNX: {exc}") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
