"""LongLive's LoRA through peft: rank 256, alpha 256 on every ``nn.Linear`` inside each attention block.

Adapter files load strictly, like the base checkpoints (:mod:`lrag.checkpoints.io`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from lrag.checkpoints.io import (
    WRAPPER_TOKENS,
    CheckpointError,
    check_state_dict,
    key_listing,
    normalize_key,
    normalize_state_dict,
    read_checkpoint,
)

__all__ = [
    "apply_lora", "load_lora_state_dict", "lora_rank", "lora_target_modules", "merge_lora", "read_lora_state_dict",
]

_PEFT_PREFIX = "base_model.model."


def lora_target_modules(model: nn.Module, container: str = "blocks") -> list[str]:
    """Full names of every ``nn.Linear`` inside ``model.<container>`` (LongLive's targets)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(f"{container}.")]
    if not names:
        raise CheckpointError(f"{type(model).__name__} has no nn.Linear under '{container}.' for LoRA")
    return names


def apply_lora(model: nn.Module, rank: int = 256, alpha: float | None = None, dropout: float = 0.0) -> nn.Module:
    """Wrap ``model`` in a peft LoRA adapter as LongLive does (returns a ``peft.PeftModel``).

    Args:
        model: The base network (weights already loaded).
        rank: LoRA rank r (LongLive: 256).
        alpha: LoRA alpha; ``None`` means ``alpha = rank`` (scaling 1, as LongLive).
        dropout: LoRA dropout (LongLive: 0).
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=lora_target_modules(model),
    )
    return get_peft_model(model, config)


def _normalize_lora_key(key: str) -> str:
    key = key.replace(".default.weight", ".weight")  # adapter name, if saved via .state_dict()
    for token in WRAPPER_TOKENS:
        key = key.replace(token, "")
    bare = key[len(_PEFT_PREFIX) :] if key.startswith(_PEFT_PREFIX) else key
    return _PEFT_PREFIX + normalize_key(bare)


def read_lora_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a LoRA file (``{"generator_lora": ...}`` or a bare adapter dict) with peft key names."""
    payload = read_checkpoint(path)
    raw = payload.get("generator_lora", payload)
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: 'generator_lora' is a {type(raw).__name__}, expected a dict")
    odd = sorted(k for k in raw if ".lora_A." not in k and ".lora_B." not in k)
    if not raw or odd:
        raise CheckpointError(
            f"{path} is not a LoRA adapter: {key_listing('non-LoRA keys', odd or ['<empty>'])}. "
            "Pass the base generator checkpoint as ckpt and the adapter as lora."
        )
    return {_normalize_lora_key(k): v for k, v in normalize_state_dict(raw, str(path)).items()}


def lora_rank(lora_state: Mapping[str, Tensor]) -> int:
    """The rank r of an adapter state dict (rows of any ``lora_A`` weight); ranks must agree."""
    ranks = {v.shape[0] for k, v in lora_state.items() if ".lora_A." in k}
    if len(ranks) != 1:
        raise CheckpointError(f"LoRA adapter has inconsistent ranks {sorted(ranks)}")
    return ranks.pop()


def load_lora_state_dict(peft_model: nn.Module, lora_state: Mapping[str, Tensor], source: str) -> nn.Module:
    """Load adapter weights strictly into a model returned by :func:`apply_lora`."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft_model).items()}
    check_state_dict(expected, lora_state, source)
    result = set_peft_model_state_dict(peft_model, dict(lora_state))
    leftover = [k for k in result.missing_keys if ".lora_" in k] + list(result.unexpected_keys)
    if leftover:
        raise CheckpointError(f"{source}: peft did not load {key_listing('adapter keys', leftover)}")
    return peft_model


def merge_lora(peft_model: nn.Module) -> nn.Module:
    """Fold the adapter into the base weights and return the plain base network."""
    if not hasattr(peft_model, "merge_and_unload"):
        raise TypeError(f"merge_lora needs a peft model from apply_lora, got {type(peft_model).__name__}")
    return peft_model.merge_and_unload()

