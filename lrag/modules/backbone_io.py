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
from jsonargparse import ArgumentParser, Namespace
from torch import Tensor, nn

from lrag.commands.export import Exporter, register_exporter
from lrag.modules.nets.checkpoints import CheckpointError, check_state_dict, checkpoint_hash, read_checkpoint
from lrag.modules.nets.wan import PRESETS, CausalWanModel, WanConfig

log = logging.getLogger(__name__)

__all__ = ["BACKBONE_FIT_KIND", "BackboneFitInfo", "build_conditioned", "export_backbone_fit",
           "is_backbone_fit_checkpoint", "load_backbone_fit", "read_backbone_fit"]

BACKBONE_FIT_KIND = "backbone_fit"
_KIND_KEY = "lrag_kind"
#: Optional checkpoint entry with ``dataclasses.asdict(WanConfig)`` (else ``--preset``).
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


def _from_lightning(ckpt: dict[str, Any], source: str, preset: str) -> tuple[dict[str, Tensor], BackboneFitInfo]:
    if not is_backbone_fit_checkpoint(ckpt):
        raise CheckpointError(f"{source}: not a BackboneFitModule checkpoint (needs 'state_dict' with "
                              "'net.backbone.*' weights and 'hyper_parameters' with 'camera').")
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    if CONFIG_KEY in ckpt:
        config = WanConfig.from_dict(dict(ckpt[CONFIG_KEY]))
    elif preset in PRESETS:
        config = PRESETS[preset]()
    else:
        raise CheckpointError(f"{source}: no {CONFIG_KEY!r} in the checkpoint and unknown --preset "
                              f"{preset!r}; choose one of {sorted(PRESETS)}.")
    hp = {k: _jsonable(v) for k, v in ckpt["hyper_parameters"].items()}
    data = {k: _jsonable(v) for k, v in (ckpt.get("datamodule_hyper_parameters") or {}).items()}
    return state, BackboneFitInfo(config, str(hp["camera"]), hp, data)


def _from_safetensors(path: Path) -> tuple[dict[str, Tensor], BackboneFitInfo]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    if meta.get(_KIND_KEY) != BACKBONE_FIT_KIND or "config" not in meta:
        raise CheckpointError(
            f"{path}: safetensors metadata lacks {_KIND_KEY}={BACKBONE_FIT_KIND!r} and 'config'; "
            "write backbone files with `lrag export <BackboneFitModule .ckpt> OUT.safetensors`."
        )
    config = WanConfig(**_config_fields(json.loads(meta["config"])))
    return state, BackboneFitInfo(config, meta.get("camera", "none"), json.loads(meta.get("knobs", "{}")),
                                  json.loads(meta.get("data", "{}")))


def _config_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    # JSON turns tuples into lists; WanConfig compares patch_size as a tuple.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def read_backbone_fit(path: str | Path, preset: str = "tiny") -> tuple[dict[str, Tensor], BackboneFitInfo]:
    """State dict (``CameraConditioned`` key names) and info of an exported file or ``.ckpt``.

    Args:
        path: ``.safetensors`` from ``lrag export`` or a ``BackboneFitModule`` Lightning ``.ckpt``
            (read with ``weights_only=True``).
        preset: Architecture of a ``.ckpt`` that does not record its ``WanConfig``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: Not a backbone-fit file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return _from_safetensors(path)
    return _from_lightning(read_checkpoint(path), str(path), preset)


def build_conditioned(info: BackboneFitInfo) -> nn.Module:
    """A fresh :class:`CameraConditioned` ``CausalWanModel`` of ``info``'s architecture."""
    from lrag.modules.backbone_fit import CameraConditioned

    return CameraConditioned(CausalWanModel(info.config), info.camera)


def load_backbone_fit(net: nn.Module, path: str | Path, preset: str = "tiny") -> BackboneFitInfo:
    """Load a backbone-fit file strictly into ``net`` (a ``CameraConditioned`` backbone).

    Raises:
        CheckpointError: Camera mode, architecture, keys or shapes differ; the message names them.
    """
    state, info = read_backbone_fit(path, preset)
    camera = getattr(net, "camera", None)
    if camera is None:
        raise CheckpointError(
            f"{path} holds a camera-conditioned backbone (camera={info.camera!r}); wrap the "
            "backbone in the config: class_path: lrag.modules.backbone_fit.CameraConditioned with "
            f"init_args: {{backbone: ..., camera: {info.camera}}}."
        )
    if camera != info.camera:
        raise CheckpointError(f"{path} was trained with camera={info.camera!r} but the backbone has "
                              f"camera={camera!r}; set init_args.camera: {info.camera}.")
    own = getattr(net.backbone, "config", None)
    if own is not None and own != info.config:
        diff = {f.name: (getattr(own, f.name), getattr(info.config, f.name))
                for f in dataclasses.fields(WanConfig) if getattr(own, f.name) != getattr(info.config, f.name)}
        raise CheckpointError(f"{path}: backbone config differs from the file's (config: file): {diff}")
    check_state_dict({k: tuple(v.shape) for k, v in net.state_dict().items()}, state, str(path))
    net.load_state_dict(state, strict=True)
    return info


def export_backbone_fit(ckpt: dict[str, Any], source: Path, out: Path, preset: str = "tiny") -> str:
    """Write a ``BackboneFitModule`` checkpoint as safetensors + metadata (module docstring)."""
    from safetensors.torch import save_file

    state, info = _from_lightning(ckpt, str(source), preset)
    net = build_conditioned(info)
    check_state_dict({k: tuple(v.shape) for k, v in net.state_dict().items()}, state, str(source))
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}
    meta = {_KIND_KEY: BACKBONE_FIT_KIND, "camera": info.camera,
            "config": json.dumps(dataclasses.asdict(info.config)),
            "knobs": json.dumps(info.knobs), "data": json.dumps(info.data),
            "source_sha256": checkpoint_hash(source)}
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(out)
    params = sum(v.numel() for v in tensors.values())
    return f"backbone_fit: {len(tensors)} tensors, {params / 1e6:.2f} M parameters, camera={info.camera}"


def _add_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--preset", type=str, default="tiny",
                        help="backbone_fit: WanConfig preset of a checkpoint that does not record "
                        f"its config; one of {', '.join(PRESETS)}.")


def _export(ckpt: dict[str, Any], source: Path, out: Path, options: Namespace) -> str:
    return export_backbone_fit(ckpt, source, out, getattr(options, "preset", None) or "tiny")


register_exporter(Exporter(kind=BACKBONE_FIT_KIND, matches=is_backbone_fit_checkpoint, export=_export,
                           add_arguments=_add_arguments))
