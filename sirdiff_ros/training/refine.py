"""Training the full-resolution refinement head (:class:`~sirdiff_ros.model.refiner.PixelRefiner`).

The UNet of an exported checkpoint is frozen; each batch of cached view sets
is restored by that checkpoint's own pipeline at its default number of steps
(exactly what the backend runs), and the head learns to map (restored,
degraded[, the set's context]) to the sharp views with a plain MSE on [-1, 1]
images.

A refine run folder holds ``run.json`` (:class:`RefineConfig`, with
``kind: "refiner"``), ``checkpoints/`` (head, optimizer, LR schedule, sampler
and RNG states; resumable like ``sirdiff-train train``) and ``loss.jsonl``
(the head's loss and the frozen pipeline's loss on the same batch).
``sirdiff-train export`` on such a run writes the base checkpoint with the
head attached.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..model.pipeline import SirDiffPipeline
from ..model.refiner import PixelRefiner, view_set_context
from .config import RUN_KIND, RefineConfig
from .data import ShardStore
from .trainer import RunTrainer, run_checkpoints

__all__ = ["RefineConfig", "RefinerTrainer", "export_refined_run", "is_refine_run"]


def is_refine_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a refine run (else a UNet run of :mod:`.trainer`)."""
    path = Path(run_dir) / "run.json"
    return path.is_file() and json.loads(path.read_text()).get("kind") == RUN_KIND


def _load_base(folder: str | Path) -> SirDiffPipeline:
    pipe = SirDiffPipeline.from_checkpoint(folder)
    if pipe.refiner is not None:
        raise ValueError(f"{folder} already has a refiner; refine from the checkpoint without one")
    pipe.unet.requires_grad_(False).eval()
    return pipe


class RefinerTrainer(RunTrainer):
    """One refine run folder; ``fit()`` trains (or resumes) the head to ``max_steps``."""

    progress_label = "sirdiff-train refine"

    def __init__(self, run_dir: str | Path, config: RefineConfig | None = None, progress: bool = True) -> None:
        new_run = not (Path(run_dir) / "run.json").is_file()
        cfg = self._start(run_dir, RefineConfig, config, progress)
        self.base = _load_base(cfg.base).to(self.accelerator.device)
        self.store = ShardStore(cfg.cache)
        if self.store.registration != self.base.view_registration:
            raise ValueError(f"{cfg.base} was trained on {self.base.view_registration!r} view sets, "
                             f"the cache holds {self.store.registration!r} ones")
        m = self.base.size_multiple
        if cfg.crop is not None and (cfg.crop[0] % m or cfg.crop[1] % m):
            raise ValueError(f"crop {cfg.crop} must be a multiple of {m} (the base pipeline's size multiple)")
        cfg.measured.setdefault("base_steps", int(self.base.default_steps))
        if new_run:
            self._write_config()

        torch.manual_seed(cfg.seed)
        refiner = cfg.build_head()
        if cfg.init_head:
            # Fine-tuning: the saved head's weights, which must be of this run's architecture.
            saved = PixelRefiner.from_pretrained(cfg.init_head)
            # A head without the mean gate may start a gated one: the gate keeps its initial half.
            gate_only = cfg.mean_gate and not saved.config.get("mean_gate", False)
            try:
                missing, unexpected = refiner.load_state_dict(saved.state_dict(), strict=not gate_only)
            except RuntimeError as exc:
                raise ValueError(f"{cfg.init_head} is not a head of this run's architecture: {exc}") from exc
            if unexpected or any(not k.startswith("gate_out.") for k in missing):
                raise ValueError(f"{cfg.init_head} is not a head of this run's architecture: "
                                 f"missing {missing}, unexpected {unexpected}")
        self.sampler = self._sampler(self.store, self.base.parametrization.task)
        self.refiner = self._prepare(refiner, refiner.parameters())

    def losses(self, sharp: torch.Tensor, degraded: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(head loss with grad, frozen pipeline's loss) for a batch (B, N, 3, H, W) in [-1, 1]."""
        dev = self.accelerator.device
        b, n, _, hh, ww = sharp.shape
        degraded = degraded.to(dev)
        with torch.no_grad():
            restored = self.base(degraded, num_inference_steps=int(self.config.measured["base_steps"])).images

        def flat(t: torch.Tensor) -> torch.Tensor:  # (B, N, 3, H, W) -> (B*N, 3, H, W)
            return t.reshape(b * n, 3, hh, ww).to(dev)

        context = None
        if self.config.set_context:  # each view gets its set's summary: (B, 4|8, H, W) -> (B*N, 4|8, H, W)
            rs = restored.to(dev) if self.config.restored_context else None
            context = view_set_context(degraded, rs).repeat_interleave(n, dim=0)
        refined = self.refiner(flat(restored), flat(degraded), context)
        target = flat(sharp)
        return F.mse_loss(refined, target), float(F.mse_loss(flat(restored), target))

    def train_step(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        loss, base_loss = self.losses(batch.sharp, batch.degraded)
        return loss, {"base_loss": base_loss}


def export_refined_run(run_dir: str | Path, out: str | Path, default_steps: int | None = None,
                       deblurred_head_for: str | Path | None = None) -> Path:
    """Write the run's base checkpoint with the newest head attached (reads no training data).

    ``deblurred_head_for``: instead, that checkpoint (the same UNet as the
    run's base, with its own head) with the run's head as its head for view
    sets deblurred by their own motion (``deblurred_refiner``).
    """
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    cfg = RefineConfig.from_json(run_dir / "run.json")
    cps = run_checkpoints(run_dir)
    if not cps:
        raise FileNotFoundError(f"no checkpoints in {run_dir / 'checkpoints'}")
    refiner = cfg.build_head()
    refiner.load_state_dict(load_file(str(cps[-1] / "model.safetensors")))
    step = int(json.loads((cps[-1] / "step.json").read_text())["step"])
    record = {"run": str(run_dir), "step": step, "config": asdict(cfg)}
    if deblurred_head_for is None:
        pipe = _load_base(cfg.base)
        pipe.refiner = refiner.eval()
        source, key = Path(cfg.base), "refiner"
    else:
        source, key = Path(deblurred_head_for), "deblurred_refiner"
        pipe = SirDiffPipeline.from_checkpoint(source)
        base = _load_base(cfg.base)
        same = all(torch.equal(a, b) for a, b in zip(base.unet.state_dict().values(), pipe.unet.state_dict().values()))
        if pipe.refiner is None or not same or base.unet.state_dict().keys() != pipe.unet.state_dict().keys():
            raise ValueError(f"{source} must hold the UNet of {cfg.base} (the run's base) and a head of its own")
        pipe.deblurred_refiner = refiner.eval()
    base_cfg = json.loads((source / "sirdiff_pipeline.json").read_text())
    steps = default_steps if default_steps is not None else int(cfg.measured.get("base_steps", pipe.default_steps))
    info = {**base_cfg.get("training", {}), key: record}
    return pipe.save_checkpoint(out, default_steps=steps, extra=info)
