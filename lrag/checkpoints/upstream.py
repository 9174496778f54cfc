"""Upstream backbone checkpoints: Self-Forcing / Causal-Forcing / LongLive generators and LoRA.

Everything here reads local files only, with ``torch.load(weights_only=True)`` or safetensors
(:mod:`lrag.checkpoints.io`), and loads strictly: a missing, unexpected or wrongly
shaped key is an error that lists them.

Formats understood by :func:`load_generator_state_dict`:

* Self-Forcing / Causal-Forcing / LongLive training checkpoints: a dict with ``generator``
  and/or ``generator_ema`` (or ``model``) holding the wrapper's state dict, whose keys start with
  ``model.`` (the wrapper's attribute) and, for FSDP-saved EMA weights, carry
  ``_fsdp_wrapped_module.`` / ``_checkpoint_wrapped_module.`` / ``module.`` wrappers.
* Lightning ``.ckpt`` (``state_dict``), a bare state dict, or our exported ``.safetensors``.

LongLive's LoRA (rank 256, alpha 256 on every ``nn.Linear`` inside each attention block) goes
through peft (:mod:`lrag.checkpoints.lora`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lrag.checkpoints.io import (
    MAX_LISTED,
    CheckpointError,
    checkpoint_hash,
    load_into,
    normalize_state_dict,
    read_checkpoint,
)
from lrag.checkpoints.lora import apply_lora, load_lora_state_dict, lora_rank, merge_lora, read_lora_state_dict

__all__ = ["export_backbone", "load_backbone_weights", "load_generator_state_dict"]

log = logging.getLogger(__name__)


def _pick_generator(payload: dict[str, Any], prefer_ema: bool, source: str) -> dict[str, Any]:
    order = ["generator_ema", "generator", "model"] if prefer_ema else ["generator", "model", "generator_ema"]
    for name in order:
        if isinstance(payload.get(name), Mapping):
            log.info("%s: using the %r weights", source, name)
            return payload[name]
    if isinstance(payload.get("state_dict"), Mapping):  # Lightning .ckpt
        return payload["state_dict"]
    if payload and all(isinstance(v, Tensor) for v in payload.values()):
        return payload
    raise CheckpointError(
        f"{source}: no generator weights found; top-level keys are {sorted(payload)[:MAX_LISTED]}. "
        "Expected 'generator_ema', 'generator', 'model', 'state_dict' or a bare state dict."
    )


def load_generator_state_dict(
    path: str | Path, prefer_ema: bool = True, strip_prefix: str | None = None
) -> dict[str, Tensor]:
    """Read a generator checkpoint in any supported format as a clean state dict.

    Args:
        path: Local ``.pt`` / ``.pth`` / ``.ckpt`` / ``.safetensors`` file.
        prefer_ema: Take ``generator_ema`` when present (upstream ``use_ema``); otherwise
            ``generator`` first. Falls back to whichever exists.
        strip_prefix: Extra leading prefix to remove (e.g. ``"backbone."`` for a Lightning
            module that holds the network under that attribute).

    Returns:
        State dict with upstream ``CausalWanModel`` parameter names.
    """
    payload = read_checkpoint(path)
    raw = _pick_generator(payload, prefer_ema, str(path))
    if strip_prefix:
        raw = {k[len(strip_prefix) :] if k.startswith(strip_prefix) else k: v for k, v in raw.items()}
    return normalize_state_dict(raw, str(path))


def load_backbone_weights(
    model: nn.Module,
    ckpt: str | Path,
    lora: str | Path | None = None,
    prefer_ema: bool = True,
    merge: bool = True,
    lora_alpha: float | None = None,
) -> nn.Module:
    """Load a generator checkpoint (and optionally a LongLive LoRA) into ``model``.

    Args:
        model: Freshly built backbone (e.g. ``CausalWanModel(PRESETS["wan_1_3b"])``).
        ckpt: Base generator checkpoint (see :func:`load_generator_state_dict`).
        lora: Optional LoRA adapter file; its rank is read from the file.
        prefer_ema: Use EMA weights when the checkpoint has them.
        merge: Fold the adapter into the weights (plain model, no peft at run time); ``False``
            returns the ``peft.PeftModel`` (LongLive's unmerged inference).
        lora_alpha: LoRA alpha; ``None`` means alpha = rank (LongLive).

    Returns:
        The loaded network (``model`` itself unless an unmerged LoRA was applied).
    """
    load_into(model, load_generator_state_dict(ckpt, prefer_ema=prefer_ema), str(ckpt))
    if lora is None:
        return model
    lora_state = read_lora_state_dict(lora)
    peft_model = apply_lora(model, rank=lora_rank(lora_state), alpha=lora_alpha)
    load_lora_state_dict(peft_model, lora_state, str(lora))
    return merge_lora(peft_model) if merge else peft_model


def export_backbone(
    ckpt: str | Path,
    out: str | Path,
    lora: str | Path | None = None,
    preset: str = "wan_1_3b",
    prefer_ema: bool = True,
    dtype: torch.dtype = torch.bfloat16,
    lora_alpha: float | None = None,
) -> Path:
    """Write an upstream generator (LoRA merged if given) as one ``.safetensors`` file.

    The metadata records the preset, the full ``WanConfig`` as JSON and the SHA-256 of every
    source file, so the export is self-describing and loads with :func:`load_generator_state_dict`.

    Args:
        ckpt: Base generator checkpoint.
        out: Output path; ``.safetensors`` is appended when missing.
        lora: Optional LongLive LoRA file, merged into the weights.
        preset: Name in ``lrag.nets.wan.PRESETS`` describing the architecture.
        prefer_ema: Use EMA weights when the checkpoint has them.
        dtype: Stored dtype (bf16 halves the file; upstream runs in bf16).
        lora_alpha: LoRA alpha; ``None`` means alpha = rank (LongLive).

    Returns:
        The written path.
    """
    import dataclasses
    import json

    from safetensors.torch import save_file

    from lrag.nets.wan import PRESETS, CausalWanModel

    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[preset]()
    model = load_backbone_weights(CausalWanModel(config), ckpt, lora, prefer_ema=prefer_ema, merge=True,
                                  lora_alpha=lora_alpha)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    sources = {"ckpt": checkpoint_hash(ckpt)} | ({"lora": checkpoint_hash(lora)} if lora else {})
    metadata = {
        "format": "lrag-backbone",
        "preset": preset,
        "config": json.dumps(dataclasses.asdict(config), default=str),
        "sources_sha256": json.dumps(sources),
    }
    out = Path(out)
    out = out if out.suffix == ".safetensors" else out.with_name(out.name + ".safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(state, tmp, metadata=metadata)
    tmp.replace(out)  # never leave a half-written export under the final name
    log.info("exported %s (%d tensors, %s) to %s", preset, len(state), dtype, out)
    return out
