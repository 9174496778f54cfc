"""Export and load camera-conditioned backbones trained by ``BackboneFitModule``.

A ``BackboneFitModule`` checkpoint holds the weights of a :class:`CameraConditioned` backbone
under ``net.``; the architecture (``WanConfig``) and the training knobs that sampling must
repeat (camera mode, block size, window, position rules, sink mode) are what turn those weights
back into a usable generator. ``lrag export`` writes both into one ``.safetensors`` file:

* tensors: the ``CameraConditioned`` state dict (``backbone.*``, ``camera_mlp.*``);
* metadata: ``lrag_kind = "backbone_fit"``, ``config`` (``WanConfig`` JSON), ``camera``,
  ``knobs`` (training hyper-parameters JSON), ``data`` (the world datamodule's
  hyper-parameters: which world seeds were training worlds) and ``source_sha256``.

:func:`load_backbone_fit` reads such a file, or the Lightning ``.ckpt`` directly, strictly and
with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lrag.checkpoints.io import (
    KIND_KEY,
    CheckpointError,
    check_state_dict,
    checkpoint_hash,
    read_checkpoint,
    read_lrag_safetensors,
)
from lrag.nets.camera import CameraConditioned
from lrag.nets.wan import PRESETS, CausalWanModel, WanConfig

log = logging.getLogger(__name__)

__all__ = ["BACKBONE_FIT_KIND", "BackboneFitInfo", "build_conditioned", "config_from_fit_yaml", "export_backbone_fit",
           "is_backbone_fit_checkpoint", "load_backbone_fit", "read_backbone_fit"]

BACKBONE_FIT_KIND = "backbone_fit"
#: Checkpoint entry with ``dataclasses.asdict(WanConfig)`` (``BackboneFitModule.on_save_checkpoint``);
#: older checkpoints need ``--fit_config`` (or ``--preset``) on export.
CONFIG_KEY = "backbone_config"
#: Training hyper-parameters that sampling has to repeat (or knowingly change).
INFERENCE_KNOBS = ("camera", "frames_per_block", "window", "sink", "memory_size", "recent_exclude",
                   "budget", "positions", "memory_position", "sink_mode")


@dataclass
class BackboneFitInfo:
    """What a backbone-fit file says about the weights.

    Attributes:
        config: Architecture of the wrapped ``CausalWanModel``.
        camera: Camera mode of :class:`CameraConditioned` (``none | motion | position``).
        knobs: Training hyper-parameters (``INFERENCE_KNOBS`` and more).
        data: Hyper-parameters of the training datamodule (``num_worlds``, ``seed_offset``...).
    """

    config: WanConfig
    camera: str
    knobs: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def train_seeds(self) -> list[int]:
        """World seeds the backbone trained on (empty when unknown)."""
        if "num_worlds" not in self.data:
            return []
        start = int(self.data.get("seed_offset", 0))
        return list(range(start, start + int(self.data["num_worlds"])))


def is_backbone_fit_checkpoint(ckpt: dict[str, Any]) -> bool:
    """A Lightning checkpoint of ``BackboneFitModule`` (``net.backbone.*`` weights + ``camera``)."""
    state, hp = ckpt.get("state_dict"), ckpt.get("hyper_parameters")
    return (isinstance(state, dict) and isinstance(hp, dict) and "camera" in hp
            and any(str(k).startswith("net.backbone.") for k in state))


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def config_from_fit_yaml(path: str | Path) -> WanConfig:
    """The ``WanConfig`` a ``lrag fit`` YAML built (``model.init_args.backbone.init_args.config``).

    Works with the training config (``configs/backbone/demo.yaml``) and with the ``config.yaml``
    LightningCLI saves next to the checkpoints; fields the YAML leaves out take ``WanConfig``'s
    defaults, exactly as LightningCLI instantiated them.

    Raises:
        CheckpointError: The YAML has no backbone config at that place.
    """
    import yaml

    doc = yaml.safe_load(Path(path).read_text()) or {}
    try:
        cfg = doc["model"]["init_args"]["backbone"]["init_args"]["config"]
    except (KeyError, TypeError):
        cfg = None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"--fit_config {path}: no model.init_args.backbone.init_args.config mapping; "
                              "pass the YAML that `lrag fit` trained the checkpoint with.")
    return WanConfig(**_config_fields(cfg))


def _resolve_config(ckpt: dict[str, Any], source: str, preset: str | None,
                    fit_config: str | Path | None, model_config: WanConfig | None = None) -> tuple[WanConfig, str]:
    """Architecture of a Lightning checkpoint and where it came from (recorded on export)."""
    if CONFIG_KEY in ckpt:
        return WanConfig.from_dict(dict(ckpt[CONFIG_KEY])), "checkpoint"
    if model_config is not None:  # loading into a configured model: its config is the claim to check
        return model_config, "model"
    if fit_config is not None:
        return config_from_fit_yaml(fit_config), f"fit_config:{Path(fit_config).name}"
    if preset is not None:
        if preset not in PRESETS:
            raise CheckpointError(f"{source}: unknown --preset {preset!r}; choose one of {sorted(PRESETS)}.")
        log.warning("%s records no %r; assuming preset %r (shapes are checked, head count and "
                    "text_len cannot be)", source, CONFIG_KEY, preset)
        return PRESETS[preset](), f"preset:{preset}"
    raise CheckpointError(
        f"{source}: the checkpoint records no {CONFIG_KEY!r} (written by BackboneFitModule since "
        "this version); pass --fit_config <the lrag fit YAML it was trained with> "
        "(e.g. configs/backbone/demo.yaml) or --preset <name>."
    )


def _from_lightning(ckpt: dict[str, Any], source: str, preset: str | None = None,
                    fit_config: str | Path | None = None,
                    model_config: WanConfig | None = None) -> tuple[dict[str, Tensor], BackboneFitInfo]:
    if not is_backbone_fit_checkpoint(ckpt):
        raise CheckpointError(f"{source}: not a BackboneFitModule checkpoint (needs 'state_dict' with "
                              "'net.backbone.*' weights and 'hyper_parameters' with 'camera').")
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    config, config_source = _resolve_config(ckpt, source, preset, fit_config, model_config)
    hp = {k: _jsonable(v) for k, v in ckpt["hyper_parameters"].items()}
    hp["config_source"] = config_source
    data = {k: _jsonable(v) for k, v in (ckpt.get("datamodule_hyper_parameters") or {}).items()}
    return state, BackboneFitInfo(config, str(hp["camera"]), hp, data)


def _from_safetensors(path: Path) -> tuple[dict[str, Tensor], BackboneFitInfo]:
    state, meta = read_lrag_safetensors(
        path, BACKBONE_FIT_KIND, "lrag export <BackboneFitModule .ckpt> OUT.safetensors"
    )
    config = WanConfig(**_config_fields(json.loads(meta["config"])))
    return state, BackboneFitInfo(config, meta.get("camera", "none"), json.loads(meta.get("knobs", "{}")),
                                  json.loads(meta.get("data", "{}")))


def _config_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    # JSON turns tuples into lists; WanConfig compares patch_size as a tuple.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def read_backbone_fit(path: str | Path, preset: str | None = None, fit_config: str | Path | None = None,
                      model_config: WanConfig | None = None) -> tuple[dict[str, Tensor], BackboneFitInfo]:
    """State dict (``CameraConditioned`` key names) and info of an exported file or ``.ckpt``.

    Args:
        path: ``.safetensors`` from ``lrag export`` or a ``BackboneFitModule`` Lightning ``.ckpt``
            (read with ``weights_only=True``).
        preset: Architecture of a ``.ckpt`` that records no ``WanConfig`` (last resort).
        fit_config: ``lrag fit`` YAML of a ``.ckpt`` that records no ``WanConfig``.
        model_config: Config of the model the weights go into; used (shape-checked) for a
            ``.ckpt`` that records none, before ``fit_config`` and ``preset``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: Not a backbone-fit file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return _from_safetensors(path)
    return _from_lightning(read_checkpoint(path), str(path), preset, fit_config, model_config)


def build_conditioned(info: BackboneFitInfo) -> nn.Module:
    """A fresh :class:`CameraConditioned` ``CausalWanModel`` of ``info``'s architecture."""
    return CameraConditioned(CausalWanModel(info.config), info.camera)


def load_backbone_fit(net: nn.Module, path: str | Path, preset: str | None = None,
                      fit_config: str | Path | None = None) -> BackboneFitInfo:
    """Load a backbone-fit file strictly into ``net`` (a ``CameraConditioned`` backbone).

    ``preset`` / ``fit_config``: as in :func:`read_backbone_fit`.

    Raises:
        CheckpointError: Camera mode, architecture, keys or shapes differ; the message names them.
    """
    camera = getattr(net, "camera", None)
    own = getattr(getattr(net, "backbone", None), "config", None)
    state, info = read_backbone_fit(path, preset, fit_config, own)
    if camera is None:
        raise CheckpointError(
            f"{path} holds a camera-conditioned backbone (camera={info.camera!r}); wrap the "
            "backbone in the config: class_path: lrag.nets.camera.CameraConditioned with "
            f"init_args: {{backbone: ..., camera: {info.camera}}}."
        )
    if camera != info.camera:
        raise CheckpointError(f"{path} was trained with camera={info.camera!r} but the backbone has "
                              f"camera={camera!r}; set init_args.camera: {info.camera}.")
    if own is not None and own != info.config:
        diff = {f.name: (getattr(own, f.name), getattr(info.config, f.name))
                for f in dataclasses.fields(WanConfig) if getattr(own, f.name) != getattr(info.config, f.name)}
        raise CheckpointError(f"{path}: backbone config differs from the file's (config: file): {diff}")
    check_state_dict({k: tuple(v.shape) for k, v in net.state_dict().items()}, state, str(path))
    net.load_state_dict(state, strict=True)
    return info


def export_backbone_fit(ckpt: dict[str, Any], source: Path, out: Path, preset: str | None = None,
                        fit_config: str | Path | None = None) -> str:
    """Write a ``BackboneFitModule`` checkpoint as safetensors + metadata (module docstring).

    The architecture comes from the checkpoint's ``backbone_config``, else ``fit_config`` (the
    ``lrag fit`` YAML), else ``preset``; the weights' shapes are checked against it either way.
    """
    from safetensors.torch import save_file

    state, info = _from_lightning(ckpt, str(source), preset, fit_config)
    net = build_conditioned(info)
    check_state_dict({k: tuple(v.shape) for k, v in net.state_dict().items()}, state, str(source))
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}
    meta = {KIND_KEY: BACKBONE_FIT_KIND, "camera": info.camera,
            "config": json.dumps(dataclasses.asdict(info.config)),
            "knobs": json.dumps(info.knobs), "data": json.dumps(info.data),
            "source_sha256": checkpoint_hash(source)}
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(out)
    params = sum(v.numel() for v in tensors.values())
    return (f"backbone_fit: {len(tensors)} tensors, {params / 1e6:.2f} M parameters, camera={info.camera}, "
            f"config from {info.knobs['config_source']}")
