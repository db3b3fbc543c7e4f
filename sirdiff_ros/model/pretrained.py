"""Initialise a SirDiffUNet from Stable Diffusion 2.1 and Stable Video Diffusion weights.

Both are read from local folders in diffusers layout (``<root>/unet/config.json``
+ ``diffusion_pytorch_model.safetensors``; the ``unet`` folder itself works
too). Nothing is downloaded. The mapping, key by key:

* every 2D tensor (time embedding, ``conv_in``/``conv_out``, 2D ResNets,
  self-attention transformers, down/upsamplers) comes from SD's UNet; our
  ResNet keys carry SVD's ``.spatial_res_block.`` infix, SD's do not;
* ``conv_in`` is *widened*: SD's weights for the latent channels, exact zeros
  for the condition channels, so the condition is ignored at initialisation.
  (``from_pretrained(..., ignore_mismatched_sizes=True)`` would instead
  re-initialise the whole conv randomly and lose SD's input layer.)
* the 3D convolution branches (``.temporal_res_block.``) come from SVD's
  temporal ResNets, whose keys are the same;
* the blend alphas and the zero view gates are new, as are the 3D branches
  when no SVD folder is given;
* left out: SD's cross-attention (``attn2``, ``norm2``; the model has no text
  conditioning) and all of SVD but its temporal ResNets (its spatial weights
  duplicate SD's roles, its ``time_mixer`` implements a different blend).

Every tensor is shape-checked and must be finite; any problem raises
:class:`PretrainedWeightsError` naming the file and the key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from sirdiff_ros.model.unet import SirDiffUNet

__all__ = [
    "InitReport",
    "PretrainedWeightsError",
    "build_from_pretrained",
    "load_pretrained",
    "read_unet_config",
    "resolve_component_dir",
    "sirdiff_config_from_sd",
]

WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
)
INDEX_FILES = tuple(name + ".index.json" for name in WEIGHT_FILES)

_SPATIAL = ".spatial_res_block."
_TEMPORAL = ".temporal_res_block."
_NEW_SUFFIXES = (".blend_alpha", ".view_gate")
_CROSS_ATTENTION = re.compile(r"\.transformer_blocks\.\d+\.(attn2|norm2)\.")


class PretrainedWeightsError(ValueError):
    """A pretrained folder, file or tensor cannot initialise the model; the message names file and key."""


@dataclass
class InitReport:
    """What :func:`load_pretrained` did to each tensor of the model, by state-dict key.

    ``copied``/``widened``/``new`` hold model keys; ``source`` maps each copied or
    widened model key to ``"<file>::<key>"``; ``left_out`` holds the
    ``"<file>::<key>"`` of every source tensor that was not used.
    """

    copied: list[str] = field(default_factory=list)
    widened: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    source: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """A short human-readable account: counts, then keys grouped by pattern."""
        lines = [
            f"copied {len(self.copied)}, widened {len(self.widened)}, new {len(self.new)}, "
            f"left out {len(self.left_out)} (source tensors not used)"
        ]
        for title, keys in (("widened", self.widened), ("new", self.new)):
            lines.extend(f"  {title}: {pattern} x{count}" for pattern, count in _group(keys, _index_pattern))
        lines.extend(f"  left out: {group} x{count}" for group, count in _group(self.left_out, _left_out_group))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and mapping, e.g. to write the report next to a checkpoint as JSON."""
        return {
            "copied": list(self.copied),
            "widened": list(self.widened),
            "new": list(self.new),
            "left_out": list(self.left_out),
            "source": dict(self.source),
        }


def _index_pattern(key: str) -> str:
    """'down_blocks.1.resnets.0.view_gate' -> 'down_blocks.*.resnets.*.view_gate'."""
    return re.sub(r"(?<=\.)\d+(?=\.)", "*", key)


_LEFT_OUT_MARKERS = (
    "attn2",
    "norm2",
    "temporal_transformer_blocks",
    "time_pos_embed",
    "time_mixer",
    "spatial_res_block",
    "add_embedding",
)


def _left_out_group(entry: str) -> str:
    """'<file>::<key>' -> '<file>: <why-ish marker or top module>'."""
    file, _, key = entry.rpartition("::")
    marker = next((m for m in _LEFT_OUT_MARKERS if f".{m}." in f".{key}"), key.split(".")[0])
    return f"{file}: {marker}"


def _group(keys: list[str], by) -> list[tuple[str, int]]:
    groups: dict[str, int] = {}
    for key in keys:
        group = by(key)
        groups[group] = groups.get(group, 0) + 1
    return sorted(groups.items())


def resolve_component_dir(path: str | Path, component: str = "unet") -> Path:
    """The folder of one diffusers component: ``path/component`` or ``path`` itself.

    Accepts a pipeline root (``sd21/`` holding ``unet/`` and ``vae/``) or the
    component folder. Raises :class:`PretrainedWeightsError` when neither holds
    a ``config.json``.
    """
    root = Path(path)
    for candidate in (root / component, root):
        if (candidate / "config.json").is_file():
            return candidate
    raise PretrainedWeightsError(f"{root}: no {component}/config.json (nor config.json) in this folder")


def read_unet_config(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(config file, parsed dict) of the UNet under ``path``."""
    config_file = resolve_component_dir(path, "unet") / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PretrainedWeightsError(f"{config_file}: unreadable config ({exc})") from exc
    if not isinstance(config, dict):
        raise PretrainedWeightsError(f"{config_file}: config is not a JSON object")
    return config_file, config


class _TensorSource:
    """Lazy reader of one component's safetensors weights (single file or sharded)."""

    def __init__(self, path: str | Path, component: str = "unet") -> None:
        folder = resolve_component_dir(path, component)
        self.folder = folder
        self._key_to_file: dict[str, Path] = {}
        self._handles: dict[Path, Any] = {}
        single = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
        index = [folder / name for name in INDEX_FILES if (folder / name).is_file()]
        if single:
            self._open(single[0])
            for key in self._handles[single[0]].keys():
                self._key_to_file[key] = single[0]
        elif index:
            self._read_index(index[0])
        else:
            legacy = folder / "diffusion_pytorch_model.bin"
            hint = " (only a pickle .bin is present; convert it to safetensors)" if legacy.exists() else ""
            raise PretrainedWeightsError(f"{folder}: no {WEIGHT_FILES[0]} or sharded index{hint}")

    def _read_index(self, index_file: Path) -> None:
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise PretrainedWeightsError(f"{index_file}: unreadable shard index ({exc})") from exc
        for key, shard in weight_map.items():
            shard_file = index_file.parent / shard
            if shard_file not in self._handles:
                self._open(shard_file)
            self._key_to_file[key] = shard_file

    def _open(self, file: Path) -> None:
        try:
            self._handles[file] = safe_open(str(file), framework="pt", device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise PretrainedWeightsError(f"{file}: not a readable safetensors file ({exc})") from exc

    def keys(self) -> list[str]:
        return list(self._key_to_file)

    def file_of(self, key: str) -> Path:
        return self._key_to_file.get(key, self.folder / WEIGHT_FILES[0])

    def __contains__(self, key: str) -> bool:
        return key in self._key_to_file

    def get(self, key: str, shape: torch.Size, needed_by: str) -> torch.Tensor:
        """Tensor ``key``, checked to exist, have ``shape`` and be finite."""
        file = self.file_of(key)
        if key not in self._key_to_file:
            raise PretrainedWeightsError(f"{file}: missing tensor {key!r} (needed for {needed_by!r})")
        try:
            tensor = self._handles[file].get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise PretrainedWeightsError(f"{file}: tensor {key!r} cannot be read ({exc})") from exc
        if tensor.shape != shape:
            raise PretrainedWeightsError(
                f"{file}: tensor {key!r} has shape {tuple(tensor.shape)}, {needed_by!r} needs {tuple(shape)}"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise PretrainedWeightsError(f"{file}: tensor {key!r} holds NaN or infinite values")
        return tensor


def _heads_per_level(config: dict[str, Any], levels: int) -> tuple[int, ...]:
    # diffusers' UNet2DConditionModel historically stores the number of heads
    # under `attention_head_dim` (SD 2.1: [5, 10, 20, 20]); `num_attention_heads` wins when set.
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    return tuple(heads) if isinstance(heads, (list, tuple)) else (heads,) * levels


def sirdiff_config_from_sd(
    sd_path: str | Path, *, cond_channels: int | None = None, **overrides: Any
) -> dict[str, Any]:
    """SirDiffUNet arguments with the sizes of the SD UNet under ``sd_path``.

    ``cond_channels`` defaults to the SD latent channels (VAE-encoded
    condition). View-attention levels default to every attention level but the
    highest-resolution one, plus the bottleneck (the ``sd21`` preset's choice);
    pass ``view_attention_levels=...`` to change it. Raises
    :class:`PretrainedWeightsError` (naming the config file and key) for SD
    features this model does not have.
    """
    config_file, cfg = read_unet_config(sd_path)
    unsupported = {
        "class_embed_type": None,
        "num_class_embeds": None,
        "addition_embed_type": None,
        "encoder_hid_dim": None,
        "time_embedding_type": "positional",
        "resnet_time_scale_shift": "default",
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "dual_cross_attention": False,
        "only_cross_attention": False,
        "center_input_sample": False,
        "act_fn": "silu",
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "time_embedding_dim": None,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
    }
    for key, wanted in unsupported.items():
        value = cfg.get(key, wanted)
        if value != wanted:
            raise PretrainedWeightsError(f"{config_file}: key {key!r} = {value!r} is not supported (need {wanted!r})")
    for key in ("block_out_channels", "down_block_types", "in_channels", "out_channels"):
        if key not in cfg:
            raise PretrainedWeightsError(f"{config_file}: missing key {key!r}")
    channels = tuple(cfg["block_out_channels"])
    levels = len(channels)
    attention = tuple("CrossAttn" in str(kind) for kind in cfg["down_block_types"])
    expected_up = tuple(reversed(attention))
    got_up = tuple("CrossAttn" in str(kind) for kind in cfg.get("up_block_types", ()))
    if len(attention) != levels or got_up != expected_up:
        raise PretrainedWeightsError(
            f"{config_file}: key 'down_block_types'/'up_block_types' do not mirror each other over {levels} levels"
        )
    heads = _heads_per_level(cfg, levels)
    layers = cfg.get("layers_per_block", 2)
    transformer_layers = cfg.get("transformer_layers_per_block", 1)
    if not isinstance(layers, int) or not isinstance(transformer_layers, int):
        raise PretrainedWeightsError(
            f"{config_file}: key 'layers_per_block'/'transformer_layers_per_block' must be one integer"
        )
    head_dims = []
    for lvl, ch in enumerate(channels):
        if ch % heads[lvl]:
            raise PretrainedWeightsError(
                f"{config_file}: key 'attention_head_dim': {heads[lvl]} heads do not divide {ch} channels"
            )
        head_dims.append(ch // heads[lvl])
    view_levels = tuple(has and lvl > 0 for lvl, has in enumerate(attention))
    result: dict[str, Any] = dict(
        in_channels=cfg["in_channels"],
        cond_channels=cfg["in_channels"] if cond_channels is None else cond_channels,
        out_channels=cfg["out_channels"],
        block_out_channels=channels,
        layers_per_block=layers,
        attention_levels=attention,
        view_attention_levels=view_levels,
        mid_block_attention=True,
        mid_block_view_attention=True,
        attention_head_dim=head_dims[0] if len(set(head_dims)) == 1 else tuple(head_dims),
        transformer_layers_per_block=transformer_layers,
        norm_num_groups=cfg.get("norm_num_groups", 32),
        norm_eps=cfg.get("norm_eps", 1e-5),
        flip_sin_to_cos=cfg.get("flip_sin_to_cos", True),
        freq_shift=cfg.get("freq_shift", 0),
        use_linear_projection=cfg.get("use_linear_projection", False),
        upcast_attention=cfg.get("upcast_attention", False),
        sample_size=cfg.get("sample_size"),
    )
    result.update(overrides)
    return result


def _check_compatible(model: SirDiffUNet, sd_path: str | Path) -> None:
    """The model must have the SD UNet's sizes (weights of equal shape can still mean other maths)."""
    config_file, _ = read_unet_config(sd_path)
    expected = sirdiff_config_from_sd(sd_path, cond_channels=model.config.cond_channels)
    # Keys that change the computation, not only shapes (head split, norms, projections).
    keys = (
        "in_channels",
        "out_channels",
        "block_out_channels",
        "layers_per_block",
        "attention_levels",
        "transformer_layers_per_block",
        "norm_num_groups",
        "norm_eps",
        "flip_sin_to_cos",
        "freq_shift",
        "use_linear_projection",
    )
    for key in keys:
        ours, theirs = model.config[key], expected[key]
        if isinstance(ours, list):
            ours = tuple(ours)
        if ours != theirs:
            raise PretrainedWeightsError(f"{config_file}: key {key!r} = {theirs!r}, the model has {ours!r}")
    ours_heads = _per_level_head_dims(model)
    theirs_heads = expected["attention_head_dim"]
    theirs_heads = tuple(theirs_heads) if isinstance(theirs_heads, tuple) else (theirs_heads,) * len(ours_heads)
    for lvl, (a, b) in enumerate(zip(ours_heads, theirs_heads)):
        if model.config.attention_levels[lvl] and a != b:
            raise PretrainedWeightsError(
                f"{config_file}: key 'attention_head_dim' gives {b}-channel heads at level {lvl}, the model uses {a}"
            )


def _per_level_head_dims(model: SirDiffUNet) -> tuple[int, ...]:
    dims = model.config.attention_head_dim
    levels = len(model.config.block_out_channels)
    return tuple(dims) if isinstance(dims, (list, tuple)) else (dims,) * levels


def _sd_key(key: str) -> str:
    return key.replace(_SPATIAL, ".")


@torch.no_grad()
def load_pretrained(
    model: SirDiffUNet, sd_path: str | Path, svd_path: str | Path | None = None
) -> InitReport:
    """Copy SD 2.1 (2D) and, optionally, SVD (3D branch) weights into ``model`` in place.

    ``model`` must have the SD UNet's sizes (see :func:`sirdiff_config_from_sd`);
    its condition channels may be any number. Tensors are cast to the model's
    dtype; with equal dtypes they are copied bit for bit. Parameters not
    covered (blend alphas, view gates, 3D branches without SVD) keep their
    values, which are the model's initialisation when it was just built.

    Returns an :class:`InitReport`. Raises :class:`PretrainedWeightsError`.
    """
    _check_compatible(model, sd_path)
    sd = _TensorSource(sd_path)
    svd = _TensorSource(svd_path) if svd_path is not None else None
    if svd is not None:
        _check_svd_sizes(model, svd_path)
    report = InitReport()
    used_sd: set[str] = set()
    used_svd: set[str] = set()
    in_channels = model.config.in_channels

    for key, target in model.state_dict(keep_vars=True).items():
        if key.endswith(_NEW_SUFFIXES):
            report.new.append(key)
            continue
        if _TEMPORAL in key:
            if svd is None:
                report.new.append(key)
                continue
            tensor = svd.get(key, target.shape, key)
            used_svd.add(key)
            _assign(target, tensor)
            report.copied.append(key)
            report.source[key] = f"{svd.file_of(key)}::{key}"
            continue
        src_key = _sd_key(key)
        if key == "conv_in.weight":
            # (C0, C, 3, 3) from SD -> (C0, C + Cc, 3, 3): condition channels start at exactly zero.
            shape = torch.Size((target.shape[0], in_channels, *target.shape[2:]))
            tensor = sd.get(src_key, shape, key)
            target.zero_()
            target[:, :in_channels].copy_(tensor.to(target.dtype))
            report.widened.append(key)
        else:
            tensor = sd.get(src_key, target.shape, key)
            _assign(target, tensor)
            report.copied.append(key)
        used_sd.add(src_key)
        report.source[key] = f"{sd.file_of(src_key)}::{src_key}"

    unused_sd = [k for k in sd.keys() if k not in used_sd]
    unexpected = [k for k in unused_sd if not _CROSS_ATTENTION.search(k)]
    if unexpected:
        raise PretrainedWeightsError(
            f"{sd.file_of(unexpected[0])}: tensor {unexpected[0]!r} has no place in the model "
            f"({len(unexpected)} such tensors; is this an SD 2.x-style UNet?)"
        )
    report.left_out.extend(f"{sd.file_of(k)}::{k}" for k in unused_sd)
    if svd is not None:
        report.left_out.extend(f"{svd.file_of(k)}::{k}" for k in svd.keys() if k not in used_svd)
    return report


def _assign(target: torch.Tensor, tensor: torch.Tensor) -> None:
    target.copy_(tensor.to(dtype=target.dtype))


def _check_svd_sizes(model: SirDiffUNet, svd_path: str | Path) -> None:
    config_file, cfg = read_unet_config(svd_path)
    for key in ("block_out_channels", "layers_per_block"):
        theirs = cfg.get(key)
        theirs = tuple(theirs) if isinstance(theirs, list) else theirs
        ours = model.config[key]
        ours = tuple(ours) if isinstance(ours, list) else ours
        if theirs != ours:
            raise PretrainedWeightsError(f"{config_file}: key {key!r} = {theirs!r}, the model has {ours!r}")


def build_from_pretrained(
    sd_path: str | Path,
    svd_path: str | Path | None = None,
    *,
    cond_channels: int | None = None,
    **overrides: Any,
) -> tuple[SirDiffUNet, InitReport]:
    """A new SirDiffUNet with the SD UNet's sizes, initialised by :func:`load_pretrained`."""
    model = SirDiffUNet(**sirdiff_config_from_sd(sd_path, cond_channels=cond_channels, **overrides))
    report = load_pretrained(model, sd_path, svd_path)
    return model, report

