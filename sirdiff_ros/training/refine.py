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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..model.pipeline import SirDiffPipeline
from ..model.refiner import PixelRefiner, view_set_context
from .data import BatchSampler, ShardStore
from .trainer import (LR_SCHEDULES, lr_factor, read_run_config, resolve_run_config, resume_state, run_checkpoints,
                      save_state)

__all__ = ["RefineConfig", "RefinerTrainer", "export_refined_run", "is_refine_run"]

RUN_KIND = "refiner"


@dataclass
class RefineConfig:
    """Everything a refine run depends on (saved to ``run.json``)."""

    base: str  # exported checkpoint folder whose UNet stays frozen
    cache: str | list[str]
    max_steps: int = 3000
    batch_size: int = 4
    crop: tuple[int, int] | None = (64, 64)
    n_views: tuple[int, int] = (1, 4)
    lr: float = 1e-3
    warmup_steps: int = 100
    lr_schedule: str = "cosine"
    channels: int = 32
    blocks: int = 3
    set_context: bool = False  # the head also sees its view set (PixelRefiner's set_context)
    restored_context: bool = False  # ... and the set's restored views (PixelRefiner's restored_context)
    seed: int = 0
    save_every: int = 250
    log_every: int = 10
    num_threads: int = 1
    grad_clip: float = 1.0
    soften_fraction: float = 0.0
    soften_sigma: tuple[float, float] = (0.5, 3.0)
    kind: str = RUN_KIND
    measured: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r} (expected one of {LR_SCHEDULES})")
        if self.kind != RUN_KIND:
            raise ValueError(f"not a refine run config (kind {self.kind!r})")

    @classmethod
    def from_json(cls, path: Path) -> "RefineConfig":
        return read_run_config(cls, path)

    def build_head(self) -> PixelRefiner:
        """A fresh (identity) head of this run's architecture."""
        return PixelRefiner(channels=self.channels, num_blocks=self.blocks, set_context=self.set_context,
                            restored_context=self.restored_context)


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


class RefinerTrainer:
    """One refine run folder; ``fit()`` trains (or resumes) the head to ``max_steps``."""

    def __init__(self, run_dir: str | Path, config: RefineConfig | None = None, progress: bool = True) -> None:
        from accelerate import Accelerator

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.run_dir / "run.json"
        self.config = cfg = resolve_run_config(RefineConfig, self.run_dir, config)
        torch.set_num_threads(cfg.num_threads)
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.progress = progress and self.accelerator.is_main_process
        self.base = _load_base(cfg.base).to(self.accelerator.device)
        self.store = ShardStore(cfg.cache)
        if self.store.registration != self.base.view_registration:
            raise ValueError(f"{cfg.base} was trained on {self.base.view_registration!r} view sets, "
                             f"the cache holds {self.store.registration!r} ones")
        m = self.base.size_multiple
        if cfg.crop is not None and (cfg.crop[0] % m or cfg.crop[1] % m):
            raise ValueError(f"crop {cfg.crop} must be a multiple of {m} (the base pipeline's size multiple)")
        cfg.measured.setdefault("base_steps", int(self.base.default_steps))
        if self.accelerator.is_main_process and not cfg_path.is_file():
            cfg_path.write_text(json.dumps(asdict(cfg), indent=2))

        torch.manual_seed(cfg.seed)
        self.refiner = cfg.build_head()
        self.sampler = BatchSampler(self.store, cfg.batch_size, cfg.crop, cfg.n_views, task=self.base.parametrization.task,
                                    seed=cfg.seed + 1000 * self.accelerator.process_index,
                                    soften_fraction=cfg.soften_fraction, soften_sigma=cfg.soften_sigma)
        opt = torch.optim.AdamW(self.refiner.parameters(), lr=cfg.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s))  # duck-typed: lr_schedule, warmup, max
        self.refiner, self.optimizer, self.lr_scheduler = self.accelerator.prepare(self.refiner, opt, sched)
        self.accelerator.register_for_checkpointing(self.sampler)
        self.step = resume_state(self.accelerator, self.run_dir)

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

    def fit(self, stop_after: int | None = None) -> int:
        """Train to ``max_steps`` (or ``stop_after`` more steps); returns the step reached."""
        cfg = self.config
        goal = cfg.max_steps if stop_after is None else min(cfg.max_steps, self.step + stop_after)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.step, desc="sirdiff-train refine", unit="step", dynamic_ncols=True)
        self.refiner.train()
        t_last, running = time.time(), []
        while self.step < goal:
            batch = self.sampler.next()
            loss, base_loss = self.losses(batch.sharp, batch.degraded)
            self.accelerator.backward(loss)
            if cfg.grad_clip:
                self.accelerator.clip_grad_norm_(self.refiner.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            running.append((float(loss.detach()), base_loss))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean([r[0] for r in running[-50:]]):.5f}")
            if self.step % cfg.log_every == 0 and self.accelerator.is_main_process:
                now = time.time()
                head, base = np.mean(running, axis=0)
                rec = {"step": self.step, "loss": float(head), "base_loss": float(base),
                       "lr": self.lr_scheduler.get_last_lr()[0], "seconds": round(now - t_last, 3), "time": now}
                with (self.run_dir / "loss.jsonl").open("a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                running, t_last = [], now
            if self.step % cfg.save_every == 0:
                save_state(self.accelerator, self.run_dir, self.step)
        if bar is not None:
            bar.close()
        cps = run_checkpoints(self.run_dir)
        if not cps or cps[-1].name != f"step_{self.step:07d}":
            save_state(self.accelerator, self.run_dir, self.step)
        return self.step


def export_refined_run(run_dir: str | Path, out: str | Path, default_steps: int | None = None) -> Path:
    """Write the run's base checkpoint with the newest head attached (reads no training data)."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    cfg = RefineConfig.from_json(run_dir / "run.json")
    cps = run_checkpoints(run_dir)
    if not cps:
        raise FileNotFoundError(f"no checkpoints in {run_dir / 'checkpoints'}")
    pipe = _load_base(cfg.base)
    refiner = cfg.build_head()
    refiner.load_state_dict(load_file(str(cps[-1] / "model.safetensors")))
    pipe.refiner = refiner.eval()
    step = int(json.loads((cps[-1] / "step.json").read_text())["step"])
    base_cfg = json.loads((Path(cfg.base) / "sirdiff_pipeline.json").read_text())
    steps = default_steps if default_steps is not None else int(cfg.measured.get("base_steps", pipe.default_steps))
    info = {**base_cfg.get("training", {}), "refiner": {"run": str(run_dir), "step": step, "config": asdict(cfg)}}
    return pipe.save_checkpoint(out, default_steps=steps, extra=info)
