"""``lrag export`` for upstream generator checkpoints (Self-Forcing, Causal-Forcing, LongLive).

Registers the exporter kind ``generator``: a training checkpoint whose ``generator``,
``generator_ema`` or ``model`` entry holds a Wan state dict (``blocks.<i>.self_attn.q.weight``
after wrapper prefixes are stripped). It calls
:func:`lrag.modules.nets.checkpoints.export_backbone`, merging a LongLive LoRA given with
``--lora``, so ``lrag export base.pt merged.safetensors --lora lora.pt`` is the whole recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser, Namespace

from lrag.commands.export import Exporter, register_exporter
from lrag.modules.nets.checkpoints import (
    CheckpointError,
    export_backbone,
    normalize_key,
)

GENERATOR_KIND = "generator"
#: Entries of an upstream training checkpoint that may hold the generator's weights.
GENERATOR_ENTRIES = ("generator_ema", "generator", "model")
#: Keys every Wan backbone has (after wrapper prefixes are stripped).
_WAN_MARKERS = ("patch_embedding.weight", "blocks.0.self_attn.q.weight")
DEFAULT_PRESET = "wan_1_3b"
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def is_generator_checkpoint(ckpt: dict[str, Any]) -> bool:
    """Does ``ckpt`` hold an upstream Wan generator under ``generator``/``generator_ema``/``model``?"""
    for entry in GENERATOR_ENTRIES:
        state = ckpt.get(entry)
        if isinstance(state, Mapping):
            keys = {normalize_key(str(k)) for k in state}
            if all(marker in keys for marker in _WAN_MARKERS):
                return True
    return False


def _add_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--lora", type=str | None, default=None,
                        help="generator: LongLive LoRA adapter file ({'generator_lora': ...} or a bare "
                        "adapter dict); merged into the base weights as W + (alpha/r) B A.")
    parser.add_argument("--lora_alpha", type=float | None, default=None,
                        help="generator: LoRA alpha; default alpha = rank (LongLive's scaling 1).")
    parser.add_argument("--prefer_ema", type=bool, default=True,
                        help="generator: use 'generator_ema' when the checkpoint has it (else 'generator').")
    parser.add_argument("--dtype", type=str, default="bfloat16",
                        help=f"generator: stored dtype, one of {', '.join(_DTYPES)}.")
    preset_help = (f" generator: the WanConfig preset describing the architecture (default "
                   f"{DEFAULT_PRESET}, the Wan2.1-T2V-1.3B backbone).")
    # Another exporter may already declare --preset; share the option instead of a conflict.
    existing = parser._option_string_actions.get("--preset")  # noqa: SLF001 (argparse has no API)
    if existing is not None:
        existing.help = (existing.help or "") + preset_help
    else:
        parser.add_argument("--preset", type=str | None, default=None, help=preset_help.strip())


def _export(ckpt: dict[str, Any], source: Path, out: Path, options: Namespace) -> str:
    dtype_name = getattr(options, "dtype", None) or "bfloat16"
    if dtype_name not in _DTYPES:
        raise CheckpointError(f"--dtype {dtype_name!r}: choose one of {', '.join(_DTYPES)}")
    preset = getattr(options, "preset", None) or DEFAULT_PRESET
    prefer_ema = getattr(options, "prefer_ema", True)
    prefer_ema = True if prefer_ema is None else bool(prefer_ema)
    lora = getattr(options, "lora", None)
    try:
        written = export_backbone(source, out, lora=lora, preset=preset, prefer_ema=prefer_ema,
                                  dtype=_DTYPES[dtype_name], lora_alpha=getattr(options, "lora_alpha", None))
    except KeyError as err:  # unknown preset
        raise CheckpointError(f"--preset: {err.args[0]}") from None
    used = next((e for e in (GENERATOR_ENTRIES if prefer_ema else ("generator", "model", "generator_ema"))
                 if isinstance(ckpt.get(e), Mapping)), "?")
    merged = f", LoRA {Path(lora).name} merged" if lora else ""
    return f"generator: '{used}' weights{merged}, preset {preset}, {dtype_name} -> {written.name}"


register_exporter(Exporter(kind=GENERATOR_KIND, matches=is_generator_checkpoint, export=_export,
                           add_arguments=_add_arguments))
