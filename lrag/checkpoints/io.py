"""Safe reading of checkpoint files and strict loading of state dicts.

Everything here reads local files only, with ``torch.load(weights_only=True)`` or safetensors,
and loads strictly: a missing, unexpected or wrongly shaped key is an error that lists them.
Key normalisation strips the wrappers that FSDP, activation checkpointing, DDP, ``torch.compile``
and training wrappers add to parameter names.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "BACKBONE_HINT", "KIND_KEY", "MAX_LISTED", "WRAPPER_TOKENS", "CheckpointError", "check_state_dict",
    "checkpoint_hash", "key_listing", "load_into", "normalize_key", "normalize_state_dict", "read_checkpoint",
    "read_lrag_safetensors",
]

#: Wrapper tokens that FSDP, activation checkpointing, DDP and ``torch.compile`` insert in keys.
WRAPPER_TOKENS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
#: Leading attribute names of training wrappers (DDP ``module``, WanDiffusionWrapper ``model``).
_LEADING_PREFIXES = ("module.", "model.")
#: Most keys an error message lists before "(+N more)".
MAX_LISTED = 10


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
    for token in WRAPPER_TOKENS:
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



def key_listing(kind: str, keys: Sequence[str]) -> str:
    """``"<n> <kind>: k1, k2, ..."`` for error messages, at most :data:`MAX_LISTED` keys shown."""
    shown = ", ".join(keys[:MAX_LISTED])
    more = f" (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
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
        key_listing(kind, keys)
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

