"""Upstream backbone checkpoints: Self-Forcing / Causal-Forcing / LongLive generators and LoRA.

Everything here reads local files only, with ``torch.load(weights_only=True)`` or safetensors,
and loads strictly: a missing, unexpected or wrongly shaped key is an error that lists them.

Formats understood by :func:`load_generator_state_dict`:

* Self-Forcing / Causal-Forcing / LongLive training checkpoints: a dict with ``generator``
  and/or ``generator_ema`` (or ``model``) holding the wrapper's state dict, whose keys start with
  ``model.`` (the wrapper's attribute) and, for FSDP-saved EMA weights, carry
  ``_fsdp_wrapped_module.`` / ``_checkpoint_wrapped_module.`` / ``module.`` wrappers.
* Lightning ``.ckpt`` (``state_dict``), a bare state dict, or our exported ``.safetensors``.

LongLive's LoRA (rank 256, alpha 256 on every ``nn.Linear`` inside each attention block) goes
through peft: :func:`apply_lora`, :func:`load_lora_state_dict`, :func:`merge_lora`.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

#: Wrapper tokens that FSDP, activation checkpointing, DDP and ``torch.compile`` insert in keys.
_WRAPPER_TOKENS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
#: Leading attribute names of training wrappers (DDP ``module``, WanDiffusionWrapper ``model``).
_LEADING_PREFIXES = ("module.", "model.")
_MAX_LISTED = 10


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or does not fit the model; the message says why."""


def checkpoint_hash(path: str | Path, chunk_bytes: int = 1 << 24) -> str:
    """SHA-256 of a file (hex), for the ``runs`` table's ``checkpoint_hashes``."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a ``.safetensors`` or torch-saved file safely into a dict (tensors on CPU).

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: the payload needs unsafe unpickling, or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass a local file path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(path, device="cpu"))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as err:
        if isinstance(err, RuntimeError) and "mmap" in str(err):
            payload = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
        else:
            raise CheckpointError(
                f"{path} cannot be loaded with torch.load(weights_only=True) "
                f"({_unpickling_reason(err)}). It holds "
                "pickled Python objects beyond tensors and plain containers, which lrag refuses "
                "to execute. Convert it once, in an environment you trust: load it with full "
                "unpickling (torch.load with weights_only turned off) and re-save only its tensors, "
                "e.g. torch.save(dict(sd['generator']), 'clean.pt') or safetensors.torch.save_file "
                "(recipe: docs/wan.md)."
            ) from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, expected a dict")
    return payload


def _unpickling_reason(err: BaseException) -> str:
    # torch's own message is a page of advice; keep the line that names the offending global.
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    hit = [ln for ln in lines if "Unsupported global" in ln or "GLOBAL" in ln]
    return (hit or lines or [type(err).__name__])[0][:300]


def normalize_key(key: str) -> str:
    """Strip FSDP/compile wrapper tokens anywhere and wrapper prefixes at the start of a key."""
    for token in _WRAPPER_TOKENS:
        key = key.replace(token, "")
    changed = True
    while changed:
        changed = False
        for prefix in _LEADING_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def normalize_state_dict(state_dict: Mapping[str, Any], source: str = "<state dict>") -> dict[str, Tensor]:
    """Apply :func:`normalize_key` to every key; non-tensor values or key collisions are errors."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        new = normalize_key(key)
        if new in out:
            raise CheckpointError(f"{source}: keys collide after stripping wrappers: {new!r}")
        out[new] = value
    return out


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
        f"{source}: no generator weights found; top-level keys are {sorted(payload)[:_MAX_LISTED]}. "
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


def _listing(kind: str, keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"{len(keys)} {kind}: {shown}{more}"


#: safetensors metadata key naming what kind of lrag model a file holds.
KIND_KEY = "lrag_kind"


def read_lrag_safetensors(path: str | Path, kind: str, how_to_write: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file that lrag exported as ``kind``.

    Args:
        path: The ``.safetensors`` file.
        kind: Expected ``metadata[KIND_KEY]`` (e.g. ``"embedder"``); the file must also carry
            a ``config`` entry.
        how_to_write: The command that writes such files, quoted in the error.

    Raises:
        CheckpointError: The file is not an lrag export of that kind.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    if meta.get(KIND_KEY) != kind or "config" not in meta:
        raise CheckpointError(
            f"{path}: safetensors metadata lacks {KIND_KEY}={kind!r} and 'config'; "
            f"write {kind} files with `{how_to_write}`."
        )
    return state, meta


#: What to check when a backbone checkpoint does not fit (the default hint of the errors).
BACKBONE_HINT = (
    "Check that the preset matches the checkpoint (e.g. wan_1_3b for Wan2.1-T2V-1.3B generators) "
    "and that a LoRA file is passed as --lora, not as the base checkpoint."
)


def check_state_dict(
    expected: Mapping[str, Sequence[int]], state_dict: Mapping[str, Tensor], source: str,
    hint: str = BACKBONE_HINT,
) -> None:
    """Raise :class:`CheckpointError` unless keys and shapes match exactly.

    Args:
        expected: Key -> shape the model needs (e.g. from ``model.state_dict()`` or a key map).
        state_dict: What the checkpoint provides.
        source: File name (or description) used in the error message.
        hint: What the user should check, appended to the error.
    """
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(
        f"{k} {list(state_dict[k].shape)} != {list(expected[k])}"
        for k in set(expected) & set(state_dict)
        if list(state_dict[k].shape) != list(expected[k])
    )
    problems = [
        _listing(kind, keys)
        for kind, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"{source} does not fit the model: " + "; ".join(problems) + ". " + hint
        )


def load_into(
    model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "<state dict>", assign: bool = False,
    hint: str = BACKBONE_HINT,
) -> nn.Module:
    """Load ``state_dict`` strictly into ``model`` (keys and shapes checked first).

    Args:
        model: Target network.
        state_dict: Clean state dict (see :func:`load_generator_state_dict`).
        source: Name used in error messages.
        assign: Replace the model's tensors instead of copying (use with meta-device models).
        hint: What the user should check when the weights do not fit.

    Returns:
        ``model``.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_state_dict(expected, state_dict, source, hint)
    model.load_state_dict(state_dict, strict=True, assign=assign)
    return model


# ----------------------------------------------------------------------------------------------
# LoRA (LongLive)
# ----------------------------------------------------------------------------------------------
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
    for token in _WRAPPER_TOKENS:
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
            f"{path} is not a LoRA adapter: {_listing('non-LoRA keys', odd or ['<empty>'])}. "
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
        raise CheckpointError(f"{source}: peft did not load {_listing('adapter keys', leftover)}")
    return peft_model


def merge_lora(peft_model: nn.Module) -> nn.Module:
    """Fold the adapter into the base weights and return the plain base network."""
    if not hasattr(peft_model, "merge_and_unload"):
        raise TypeError(f"merge_lora needs a peft model from apply_lora, got {type(peft_model).__name__}")
    return peft_model.merge_and_unload()


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
        preset: Name in ``lrag.modules.nets.wan.PRESETS`` describing the architecture.
        prefer_ema: Use EMA weights when the checkpoint has them.
        dtype: Stored dtype (bf16 halves the file; upstream runs in bf16).
        lora_alpha: LoRA alpha; ``None`` means alpha = rank (LongLive).

    Returns:
        The written path.
    """
    import dataclasses
    import json

    from safetensors.torch import save_file

    from lrag.modules.nets.wan import PRESETS, CausalWanModel

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
