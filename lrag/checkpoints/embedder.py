"""Frame-embedder files: the reference AE ``.pt``, ``EmbedderModule`` ``.ckpt`` and our safetensors."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lrag.checkpoints.io import KIND_KEY, CheckpointError, load_into, read_checkpoint, read_lrag_safetensors
from lrag.nets.autoencoder import AEConfig, LatentAE

__all__ = ["CKPT_CONFIG_KEY", "EMBEDDER_KIND", "embedder_from_checkpoint", "load_embedder", "save_embedder"]

_EMBEDDER_HINT = "Check that the file is a frame-embedder checkpoint written for this AEConfig."

#: safetensors metadata key holding the model kind, and the kind of an exported embedder.
EMBEDDER_KIND = "embedder"
#: Lightning checkpoint key where ``EmbedderModule`` records the net's ``AEConfig``.
CKPT_CONFIG_KEY = "embedder_config"


def _config(data: Any, source: str) -> AEConfig:
    """``AEConfig.from_dict`` with a bad config reported as the file's format error."""
    try:
        return AEConfig.from_dict(data, source)
    except ValueError as err:
        raise CheckpointError(str(err)) from None


def embedder_from_checkpoint(ckpt: dict[str, Any], source: str) -> LatentAE:
    """Build a ``LatentAE`` from an already-read checkpoint dict.

    Accepts the reference format ``{"model": state_dict, "config": dict}`` and Lightning
    checkpoints of ``EmbedderModule`` (``state_dict`` with ``net.`` prefix + ``embedder_config``).
    """
    if CKPT_CONFIG_KEY in ckpt and "state_dict" in ckpt:
        cfg = _config(ckpt[CKPT_CONFIG_KEY], f"{source}[{CKPT_CONFIG_KEY!r}]")
        prefix = "net."
        state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in ckpt["state_dict"].items()}
    elif "model" in ckpt and "config" in ckpt:
        cfg = _config(ckpt["config"], f"{source}['config']")
        state = ckpt["model"]
    else:
        raise CheckpointError(
            f"{source}: not an embedder checkpoint (top-level keys: {sorted(ckpt)[:10]}); expected "
            f"a reference AE .pt with 'model' and 'config', or a Lightning .ckpt written by "
            f"EmbedderModule (with '{CKPT_CONFIG_KEY}')"
        )
    model = LatentAE(cfg)
    load_into(model, state, source, hint=_EMBEDDER_HINT)
    return model.eval()


def save_embedder(model: LatentAE, path: str | Path) -> None:
    """Write weights + config JSON (safetensors metadata) so :func:`load_embedder` rebuilds it."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {KIND_KEY: EMBEDDER_KIND, "config": json.dumps(asdict(model.config))}
    save_file(state, str(path), metadata=meta)


def _load_safetensors(path: Path) -> LatentAE:
    state, meta = read_lrag_safetensors(path, EMBEDDER_KIND, "lrag export CKPT OUT.safetensors")
    cfg = _config(json.loads(meta["config"]), f"{path} metadata['config']")
    model = LatentAE(cfg)
    load_into(model, state, str(path), hint=_EMBEDDER_HINT)
    return model.eval()


def load_embedder(path: str | Path) -> LatentAE:
    """Load a frame embedder in eval mode on CPU.

    Args:
        path: A ``.safetensors`` written by ``lrag export``, a reference ``ae_latent_mem.pt``
            (``{"model", "config"}``) or a Lightning ``.ckpt`` of ``EmbedderModule``. Torch
            files are always read with ``weights_only=True``.

    Raises:
        CheckpointError: Pickle-only files, unknown layouts, missing/unexpected keys.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"embedder file {path} does not exist")
        return _load_safetensors(path)
    return embedder_from_checkpoint(read_checkpoint(path), str(path))
