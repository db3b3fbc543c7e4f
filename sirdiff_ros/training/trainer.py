"""The training loop: diffusion loss on random-N view sets.

The network target is the paper's epsilon or, by default, SD 2.1's
v-prediction (measured here: eps-trained models of a CPU budget produce
diverging few-step samples because the x0 estimate at t=999 multiplies the
eps error by 1/sqrt(alpha_bar) ~ 15; v-prediction does not, see docs/training.md).

Built on ``accelerate.Accelerator`` so the same code runs on one CPU, one GPU
or many GPUs (``accelerate launch -m sirdiff_ros.training.cli train ...``).
A run folder holds:

* ``run.json``: the full :class:`TrainConfig` plus values measured at the
  start (the residual scale), so a resumed run trains exactly the same thing;
* ``checkpoints/step_XXXXXXX/``: model, optimizer, LR scheduler, EMA, data
  sampler RNG, torch/numpy/python RNG states (``Accelerator.save_state``),
  written to a temporary folder and renamed, so a kill never leaves a
  half-written checkpoint as the latest; the two newest are kept;
* ``loss.jsonl``: one line per logged step (step, loss, lr, views, seconds).

Starting ``train`` again on the same run folder resumes from the newest
checkpoint and continues to ``max_steps``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..model.encoders import SpaceToDepthEncoder
from ..model.pipeline import Parametrization, SirDiffPipeline, make_scheduler
from .config import TrainConfig, read_run_config
from .data import BatchSampler, ShardStore

__all__ = ["TrainConfig", "Trainer", "RunTrainer", "lr_factor", "measure_residual_scale", "run_checkpoints", "load_run_weights",
           "export_run", "read_run_config", "resolve_run_config", "resume_state", "save_state"]


def resolve_run_config(cls: type, run_dir: Path, config: Any | None) -> Any:
    """The config a run folder trains with: its ``run.json`` when there is one (a resume may
    change only ``max_steps``, taken from ``config``), else ``config`` (a new run)."""
    cfg_path = run_dir / "run.json"
    if cfg_path.is_file():
        saved = cls.from_json(cfg_path)
        if config is not None:
            saved.max_steps = config.max_steps
        return saved
    if config is None:
        raise ValueError(f"{run_dir} has no run.json; pass a {cls.__name__} to start a run")
    return config


def measure_residual_scale(store: ShardStore, encoder: SpaceToDepthEncoder, max_sets: int = 256) -> float:
    """Standard deviation of ``enc(sharp) - enc(blurred)`` over (up to) ``max_sets`` cached sets."""
    n = min(len(store), max_sets)
    sharp = torch.from_numpy(store.sharp[:n]).float()
    blurred = torch.from_numpy(store.blurred[:n]).float()
    diff = (sharp - blurred) / 127.5  # [-1, 1] scale, (S, V, H, W, 3)
    # Space-to-depth is a permutation of pixels: the std is the same in latent space.
    return float(diff.std().clamp_min(1e-3))


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Multiplier of ``cfg.lr`` at ``step``: linear warmup, then ``cfg.lr_schedule``."""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if cfg.lr_schedule == "constant" or step < cfg.warmup_steps:
        return warm
    # cosine (TrainConfig checks the name)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _build_unet(preset: str, latent_channels: int):
    from ..model.presets import build_model

    c = latent_channels
    return build_model(preset, in_channels=c, cond_channels=c, out_channels=c)


class RunTrainer:
    """What a training run and a refine run share: the run folder and its config,
    ``accelerate``, the batch sampler, the optimizer with its schedule,
    checkpoints and the loop. Subclasses build their model in ``__init__``
    between :meth:`_start` and :meth:`_prepare`, and define :meth:`train_step`.
    """

    progress_label = "sirdiff-train"
    config: Any
    model: torch.nn.Module  # the trained module, prepared by accelerate

    def _start(self, run_dir: str | Path, config_cls: type, config: Any | None, progress: bool) -> Any:
        """Run folder, config (its run.json wins on a resume), torch threads and accelerate."""
        from accelerate import Accelerator

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config = cfg = resolve_run_config(config_cls, self.run_dir, config)
        torch.set_num_threads(cfg.num_threads)
        mixed_precision = getattr(cfg, "mixed_precision", "no")
        self.accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
        self.progress = progress and self.accelerator.is_main_process
        return cfg

    def _write_config(self) -> None:
        if self.accelerator.is_main_process:
            (self.run_dir / "run.json").write_text(json.dumps(asdict(self.config), indent=2))

    def _sampler(self, store: ShardStore, task: str) -> BatchSampler:
        """The run's batches; the same weights seed on every process, the data differs per process."""
        cfg = self.config
        return BatchSampler(store, cfg.batch_size, cfg.crop, cfg.n_views, task=task,
                            seed=cfg.seed + 1000 * self.accelerator.process_index,
                            soften_fraction=cfg.soften_fraction, soften_sigma=cfg.soften_sigma)

    def _prepare(self, model: torch.nn.Module, params: Any, weight_decay: float = 0.0) -> torch.nn.Module:
        """AdamW with the run's warmup and schedule, everything through accelerate, then resume."""
        cfg = self.config
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s))
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(model, opt, sched)
        self.accelerator.register_for_checkpointing(self.sampler)
        self.step = resume_state(self.accelerator, self.run_dir)
        return self.model

    # ------------------------------------------------------------ checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def checkpoints(self) -> list[Path]:
        return run_checkpoints(self.run_dir)

    def save(self) -> Path:
        """Checkpoint the full training state atomically (tmp folder, then rename)."""
        return save_state(self.accelerator, self.run_dir, self.step)

    # ------------------------------------------------------------------- loop
    def train_step(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one batch (with grad) and the values to log with it."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimizer step (the EMA update of a training run)."""

    def fit(self, stop_after: int | None = None) -> int:
        """Train to ``max_steps`` (or ``stop_after`` more steps); returns the step reached.

        ``loss.jsonl`` gets one line per ``log_every`` steps: the step, the mean
        loss and logged values over those steps, the learning rate, the seconds.
        """
        cfg = self.config
        goal = cfg.max_steps if stop_after is None else min(cfg.max_steps, self.step + stop_after)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.step, desc=self.progress_label, unit="step", dynamic_ncols=True)
        self.model.train()
        t_last = time.time()
        running: list[dict[str, float]] = []
        while self.step < goal:
            batch = self.sampler.next()
            with self.accelerator.accumulate(self.model):
                loss, values = self.train_step(batch)
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients and cfg.grad_clip:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.after_step()
            self.step += 1
            running.append({"loss": float(loss.detach()), **values})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean([r['loss'] for r in running[-50:]]):.5f}")
            if self.step % cfg.log_every == 0 and self.accelerator.is_main_process:
                now = time.time()
                rec = {"step": self.step, **{k: float(np.mean([r[k] for r in running])) for k in running[0]},
                       "lr": self.lr_scheduler.get_last_lr()[0], "seconds": round(now - t_last, 3), "time": now}
                with (self.run_dir / "loss.jsonl").open("a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                running, t_last = [], now
            if self.step % cfg.save_every == 0:
                self.save()
        if bar is not None:
            bar.close()
        cps = self.checkpoints()
        if not cps or cps[-1].name != f"step_{self.step:07d}":
            self.save()
        return self.step


class Trainer(RunTrainer):
    """One run folder, one model; ``fit()`` trains (or resumes) to ``max_steps``."""

    def __init__(self, run_dir: str | Path, config: TrainConfig | None = None, progress: bool = True) -> None:
        from diffusers.training_utils import EMAModel

        new_run = not (Path(run_dir) / "run.json").is_file()
        cfg = self._start(run_dir, TrainConfig, config, progress)
        self.store = ShardStore(cfg.cache)
        self.encoder = SpaceToDepthEncoder(cfg.encoder_factor)
        if "residual_scale" not in cfg.measured:
            if cfg.init_from and cfg.residual:
                # Fine-tuning keeps the scale the source weights were trained against.
                src = TrainConfig.from_json(Path(cfg.init_from) / "run.json")
                cfg.measured["residual_scale"] = float(src.measured["residual_scale"])
            else:
                cfg.measured["residual_scale"] = measure_residual_scale(self.store, self.encoder) if cfg.residual else 1.0
        # How the cached partners were prepared; the exported checkpoint tells the backend.
        cfg.measured.setdefault("view_registration", self.store.registration)
        if cfg.measured["view_registration"] != self.store.registration:
            raise ValueError(f"{self.run_dir} was trained on {cfg.measured['view_registration']!r} view sets, "
                             f"its cache now holds {self.store.registration!r} ones")
        self.parametrization = Parametrization(
            residual=cfg.residual, residual_scale=float(cfg.measured["residual_scale"]), task=cfg.task
        )

        # Same seed on every process for the weights; data differs per process.
        torch.manual_seed(cfg.seed)
        unet = _build_unet(cfg.preset, self.encoder.latent_channels)
        initialised = bool(cfg.init_from) and not self.checkpoints()
        if initialised:
            # The source run goes on; record which step we took.
            cfg.measured["init_checkpoint"] = str(load_run_weights(cfg.init_from, unet))
        if new_run or initialised:
            self._write_config()
        self.noise_scheduler = make_scheduler("ddim", prediction_type=cfg.prediction_type,
                                              zero_terminal_snr=cfg.zero_terminal_snr)
        self.ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True,
                            model_cls=type(unet), model_config=unet.config)
        self.sampler = self._sampler(self.store, cfg.task)
        self.accelerator.register_for_checkpointing(self.ema)
        self.unet = self._prepare(unet, _param_groups(unet, cfg.lr, cfg.view_lr_scale), cfg.weight_decay)

    # ------------------------------------------------------------------- loss
    def loss_on(self, sharp: torch.Tensor, degraded: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Diffusion loss for one batch of view sets (B, N, 3, H, W) in [-1, 1]."""
        b, n, _, hh, ww = sharp.shape
        dev = self.accelerator.device
        # (B, N, 3, H, W) -> (B*N, 3, H, W) -> encoder -> (B, N, C, h, w)
        z_sharp = self.encoder.encode(sharp.reshape(b * n, 3, hh, ww).to(dev))
        z_deg = self.encoder.encode(degraded.reshape(b * n, 3, hh, ww).to(dev))
        h, w = z_sharp.shape[-2:]
        z_sharp = z_sharp.reshape(b, n, -1, h, w)
        z_deg = z_deg.reshape(b, n, -1, h, w)
        x0 = self.parametrization.target(z_sharp, z_deg)
        noise = torch.randn_like(x0)
        # One timestep per set: every view of a set is at the same noise level, as at sampling time.
        T = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, T, (b,), device=dev)
        if self.config.high_t_fraction > 0:
            high = torch.rand(b, device=dev) < self.config.high_t_fraction
            t = torch.where(high, torch.randint(int(self.config.high_t_start * T), T, (b,), device=dev), t)
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        pred = self.unet(noisy, t, z_deg).sample
        kind = self.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.noise_scheduler.get_velocity(x0, noise, t)
        elif kind == "sample":
            target = x0
        else:
            raise ValueError(f"unknown prediction_type {kind!r}")
        per_set = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3, 4))
        if self.config.snr_gamma is not None:
            ac = self.noise_scheduler.alphas_cumprod.to(dev)[t]
            snr = ac / (1 - ac).clamp_min(1e-8)
            w = torch.clamp(snr, max=self.config.snr_gamma)
            w = w / snr if kind == "epsilon" else (w / (snr + 1) if kind == "v_prediction" else w)
            per_set = per_set * w
        return per_set.mean(), n

    def train_step(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        loss, n = self.loss_on(batch.sharp, batch.degraded)
        return loss, {"views": float(n)}

    def after_step(self) -> None:
        self.ema.step(self.accelerator.unwrap_model(self.unet).parameters())

    # ----------------------------------------------------------------- export
    def pipeline(self, use_ema: bool = True) -> SirDiffPipeline:
        """A sampling pipeline with the current (EMA) weights, detached from training."""
        import copy

        unet = copy.deepcopy(self.accelerator.unwrap_model(self.unet)).eval()
        if use_ema:
            self.ema.copy_to(unet.parameters())
        sched = make_scheduler("ddim", prediction_type=self.config.prediction_type,
                               zero_terminal_snr=self.config.zero_terminal_snr)
        return SirDiffPipeline(unet=unet, scheduler=sched, encoder=self.encoder, parametrization=self.parametrization,
                               view_registration=str(self.config.measured["view_registration"]))


#: Parameter name parts of the cross-view paths (sirdiff_ros.model.blocks.SpatialViewResBlock).
VIEW_PARAMETERS = ("temporal_res_block", "view_gate", "blend_alpha")


def _param_groups(unet: torch.nn.Module, lr: float, view_lr_scale: float) -> list[dict]:
    """AdamW groups: the cross-view parameters at ``lr * view_lr_scale``, the rest at ``lr``."""
    if view_lr_scale == 1.0:
        return [{"params": list(unet.parameters())}]
    view, rest = [], []
    for name, p in unet.named_parameters():
        (view if any(k in name for k in VIEW_PARAMETERS) else rest).append(p)
    if not view:
        raise ValueError("view_lr_scale given but the model has no cross-view parameters")
    return [{"params": rest}, {"params": view, "lr": lr * view_lr_scale}]


def save_state(accelerator: Any, run_dir: Path, step: int) -> Path:
    """Write ``accelerator``'s full state to ``run_dir/checkpoints/step_XXXXXXX`` atomically
    (a ``.tmp`` folder renamed when complete); the two newest checkpoints are kept."""
    accelerator.wait_for_everyone()
    final = Path(run_dir) / "checkpoints" / f"step_{step:07d}"
    if accelerator.is_main_process:
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.save_state(str(tmp))
        (tmp / "step.json").write_text(json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
        for old in run_checkpoints(run_dir)[:-2]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume_state(accelerator: Any, run_dir: Path) -> int:
    """Load the newest checkpoint of ``run_dir`` into ``accelerator``; returns its step (0: none).

    Lines of ``loss.jsonl`` logged after that checkpoint (by the interrupted
    process) are dropped: those steps are trained again."""
    cps = run_checkpoints(run_dir)
    if not cps:
        return 0
    latest = cps[-1]
    accelerator.load_state(str(latest))
    step = int(json.loads((latest / "step.json").read_text())["step"])
    log = Path(run_dir) / "loss.jsonl"
    if log.is_file() and accelerator.is_main_process:
        keep = [ln for ln in log.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        log.write_text("".join(ln + "\n" for ln in keep))
    return step


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (``*.tmp`` folders are half-written)."""
    folder = Path(run_dir) / "checkpoints"
    return sorted(p for p in folder.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))


def load_run_weights(run_dir: str | Path, unet: torch.nn.Module, use_ema: bool = True) -> Path:
    """Load the newest checkpoint of ``run_dir`` into ``unet`` (its EMA weights by default).

    Returns the checkpoint folder used. The model must have the run's architecture.
    """
    from safetensors.torch import load_file

    cps = run_checkpoints(run_dir)
    if not cps:
        raise FileNotFoundError(f"no checkpoints in {Path(run_dir) / 'checkpoints'}")
    latest = cps[-1]
    unet.load_state_dict(load_file(str(latest / "model.safetensors")))
    if use_ema:
        # The EMA is the first object registered for checkpointing (custom_checkpoint_0).
        shadow = torch.load(latest / "custom_checkpoint_0.pkl", weights_only=True)["shadow_params"]
        params = list(unet.parameters())
        if len(shadow) != len(params):
            raise ValueError(f"EMA in {latest} has {len(shadow)} tensors, the model {len(params)}")
        with torch.no_grad():
            for p, s in zip(params, shadow):
                p.copy_(s)
    return latest


def export_run(run_dir: str | Path, out: str | Path, use_ema: bool = True, fp16: bool = False,
               default_steps: int = 4) -> Path:
    """Write a run's newest (EMA) weights as a checkpoint folder the ``sirdiff`` backend loads.

    Reads only ``run.json`` and the newest checkpoint (no training data), so it
    can run beside a training process that keeps writing checkpoints.
    """
    run_dir = Path(run_dir)
    cfg = TrainConfig.from_json(run_dir / "run.json")
    encoder = SpaceToDepthEncoder(cfg.encoder_factor)
    unet = _build_unet(cfg.preset, encoder.latent_channels)
    latest = load_run_weights(run_dir, unet, use_ema=use_ema)
    par = Parametrization(residual=cfg.residual, residual_scale=float(cfg.measured.get("residual_scale", 1.0)),
                          task=cfg.task)
    sched = make_scheduler("ddim", prediction_type=cfg.prediction_type, zero_terminal_snr=cfg.zero_terminal_snr)
    pipe = SirDiffPipeline(unet=unet.eval(), scheduler=sched, encoder=encoder, parametrization=par,
                           view_registration=str(cfg.measured.get("view_registration", "none")))
    if fp16:
        pipe.unet.to(torch.float16)
    step = int(json.loads((latest / "step.json").read_text())["step"])
    info = {"run": str(run_dir), "step": step, "ema": use_ema, "config": asdict(cfg)}
    return pipe.save_checkpoint(out, default_steps=default_steps, extra=info)
