"""What ``lrag export`` can export: one :class:`Exporter` per model kind, in one explicit list.

A checkpoint's *content* (never its file name) decides its kind: each exporter's ``matches``
looks at the read checkpoint dict. The kinds and their command-line options are plain data in
:mod:`lrag.checkpoints.export_options` (no torch: ``lrag export --help`` is built from it alone);
:mod:`lrag.commands.export` dispatches over :data:`EXPORTERS`; nothing registers itself.

* ``embedder``: ``EmbedderModule`` ``.ckpt`` or the reference AE ``.pt``;
* ``backbone_fit``: ``BackboneFitModule`` ``.ckpt`` (camera-conditioned tiny backbones);
* ``generator``: upstream Self-Forcing / Causal-Forcing / LongLive training checkpoints, a
  LongLive LoRA merged with ``--lora``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lrag.checkpoints.backbone_fit import BACKBONE_FIT_KIND, export_backbone_fit, is_backbone_fit_checkpoint
from lrag.checkpoints.embedder import CKPT_CONFIG_KEY, EMBEDDER_KIND, embedder_from_checkpoint, save_embedder
from lrag.checkpoints.export_options import DEFAULT_GENERATOR_PRESET, GENERATOR_DTYPES
from lrag.checkpoints.io import CheckpointError, normalize_key
from lrag.checkpoints.upstream import export_backbone

__all__ = ["EXPORTERS", "Exporter", "is_generator_checkpoint"]


@dataclass(frozen=True)
class Exporter:
    """One exportable model kind.

    Attributes:
        kind: Name shown to the user and accepted by ``--kind``.
        matches: ``checkpoint dict -> bool``: does this checkpoint hold this kind?
        export: ``(checkpoint, source path, out path, options by name) -> summary line``.
    """

    kind: str
    matches: Callable[[dict[str, Any]], bool]
    export: Callable[[dict[str, Any], Path, Path, Mapping[str, Any]], str]

# -- embedder -------------------------------------------------------------------------------
def _is_embedder(ckpt: dict[str, Any]) -> bool:
    if CKPT_CONFIG_KEY in ckpt and "state_dict" in ckpt:
        return True
    model = ckpt.get("model")
    return isinstance(model, dict) and "config" in ckpt and any(
        str(k).startswith("encoder.conv_stack.") for k in model
    )


def _export_embedder(ckpt: dict[str, Any], source: Path, out: Path, options: Mapping[str, Any]) -> str:
    model = embedder_from_checkpoint(ckpt, str(source))
    save_embedder(model, out)
    cfg = model.config
    return (f"embedder: {len(model.state_dict())} tensors, {cfg.in_channels}x{cfg.spatial_h}x"
            f"{cfg.spatial_w} -> {cfg.latent_dim}")


# -- backbone_fit ---------------------------------------------------------------------------
def _export_backbone_fit(ckpt: dict[str, Any], source: Path, out: Path, options: Mapping[str, Any]) -> str:
    return export_backbone_fit(ckpt, source, out, options.get("preset"), options.get("fit_config"))


# -- generator (upstream) -------------------------------------------------------------------
GENERATOR_KIND = "generator"
#: Entries of an upstream training checkpoint that may hold the generator's weights.
GENERATOR_ENTRIES = ("generator_ema", "generator", "model")
#: Keys every Wan backbone has (after wrapper prefixes are stripped).
_WAN_MARKERS = ("patch_embedding.weight", "blocks.0.self_attn.q.weight")
_DTYPES = {name: getattr(torch, name) for name in GENERATOR_DTYPES}


def is_generator_checkpoint(ckpt: dict[str, Any]) -> bool:
    """Does ``ckpt`` hold an upstream Wan generator under ``generator``/``generator_ema``/``model``?"""
    for entry in GENERATOR_ENTRIES:
        state = ckpt.get(entry)
        if isinstance(state, Mapping):
            keys = {normalize_key(str(k)) for k in state}
            if all(marker in keys for marker in _WAN_MARKERS):
                return True
    return False


def _export_generator(ckpt: dict[str, Any], source: Path, out: Path, options: Mapping[str, Any]) -> str:
    dtype_name = options.get("dtype") or "bfloat16"
    if dtype_name not in _DTYPES:
        raise CheckpointError(f"--dtype {dtype_name!r}: choose one of {', '.join(_DTYPES)}")
    preset = options.get("preset") or DEFAULT_GENERATOR_PRESET
    prefer_ema = options.get("prefer_ema", True)
    prefer_ema = True if prefer_ema is None else bool(prefer_ema)
    lora = options.get("lora")
    try:
        written = export_backbone(source, out, lora=lora, preset=preset, prefer_ema=prefer_ema,
                                  dtype=_DTYPES[dtype_name], lora_alpha=options.get("lora_alpha"))
    except KeyError as err:  # unknown preset
        raise CheckpointError(f"--preset: {err.args[0]}") from None
    used = next((e for e in (GENERATOR_ENTRIES if prefer_ema else ("generator", "model", "generator_ema"))
                 if isinstance(ckpt.get(e), Mapping)), "?")
    merged = f", LoRA {Path(lora).name} merged" if lora else ""
    return f"generator: '{used}' weights{merged}, preset {preset}, {dtype_name} -> {written.name}"


#: Every exportable kind, in the order of :data:`~lrag.checkpoints.export_options.EXPORT_OPTIONS`.
EXPORTERS: tuple[Exporter, ...] = (
    Exporter(EMBEDDER_KIND, _is_embedder, _export_embedder),
    Exporter(BACKBONE_FIT_KIND, is_backbone_fit_checkpoint, _export_backbone_fit),
    Exporter(GENERATOR_KIND, is_generator_checkpoint, _export_generator),
)
