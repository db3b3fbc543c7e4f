"""The configurations of training runs (``run.json``), without the libraries that train.

:class:`TrainConfig` (a UNet run, :mod:`.trainer`) and :class:`RefineConfig`
(a refinement-head run, :mod:`.refine`) import neither torch nor diffusers,
so that ``sirdiff-train --help`` (whose option defaults come from them)
answers at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..model.refiner import PixelRefiner

__all__ = ["LR_SCHEDULES", "RUN_KIND", "RefineConfig", "TrainConfig", "read_run_config"]


LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Everything a run depends on (saved to ``run.json``)."""

    cache: str | list[str]  # shard folder(s) (``sirdiff-train cache``), concatenated in order
    preset: str = "small"
    task: str = "deblur"
    max_steps: int = 10000
    batch_size: int = 4
    crop: tuple[int, int] | None = None  # (h, w) random crop, None: full cached views
    n_views: tuple[int, int] = (1, 4)
    lr: float = 2e-4
    warmup_steps: int = 200
    # 'constant' after warmup, or 'cosine': decays to 0 at max_steps (a resume
    # that moves max_steps moves the end of the decay with it).
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    prediction_type: str = "v_prediction"  # 'epsilon' (paper), 'v_prediction' (SD 2.1), 'sample'
    snr_gamma: float | None = None  # min-SNR-gamma loss weighting; None: plain MSE
    # Share of sets whose timestep is drawn from [high_t_start * T, T) (the rest
    # uniformly): few-step sampling starts there (0: uniform, as the paper).
    high_t_fraction: float = 0.0
    high_t_start: float = 0.7
    # Rescaled betas with SNR 0 at t=999 (not for eps); see make_scheduler.
    zero_terminal_snr: bool = True
    residual: bool = True
    encoder_factor: int = 4
    seed: int = 0
    save_every: int = 250
    log_every: int = 10
    num_threads: int = 1  # 1: under CPU contention 2 OpenMP threads ran ~25x slower (measured)
    grad_clip: float = 1.0
    mixed_precision: str = "no"  # accelerate: 'no', 'fp16', 'bf16'
    # Another run whose newest EMA weights initialise this one (fine-tuning); the
    # optimizer starts fresh. Used once, when the run has no checkpoint yet.
    init_from: str | None = None
    # Learning-rate multiplier for the cross-view paths (3D-convolution branches,
    # their gates and blend weights). Their gates start at zero, so with Adam they
    # move ~lr per step and the branches behind them see gradients scaled by the
    # gate: at 3e-4 a gate of 0.1 took 1,000 steps to reach 0.12 (measured).
    view_lr_scale: float = 1.0
    # Share of sets seen on a Gaussian-softened scene (training.data.soften_set),
    # sigma drawn uniformly from soften_sigma (px); 0: off.
    soften_fraction: float = 0.0
    soften_sigma: tuple[float, float] = (0.5, 3.0)
    measured: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r} (expected one of {LR_SCHEDULES})")

    @classmethod
    def from_json(cls, path: Path) -> "TrainConfig":
        return read_run_config(cls, path)


def read_run_config(cls: type, path: Path) -> Any:
    """A run's config dataclass ``cls`` from its ``run.json`` (JSON lists back to the tuples it holds)."""
    d = json.loads(path.read_text())
    for k in ("crop", "n_views", "soften_sigma"):
        if d.get(k) is not None:
            d[k] = tuple(d[k])
    return cls(**d)


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
    mean_gate: bool = False  # start from a learned blend with the set's mean (PixelRefiner's mean_gate)
    seed: int = 0
    save_every: int = 250
    log_every: int = 10
    num_threads: int = 1
    grad_clip: float = 1.0
    soften_fraction: float = 0.0
    soften_sigma: tuple[float, float] = (0.5, 3.0)
    init_head: str | None = None  # a saved head (e.g. a shipped checkpoint's refiner/) to start from
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
        from ..model.refiner import PixelRefiner

        return PixelRefiner(channels=self.channels, num_blocks=self.blocks, set_context=self.set_context,
                            restored_context=self.restored_context, mean_gate=self.mean_gate)
