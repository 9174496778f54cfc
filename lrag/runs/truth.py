"""A run's ground truth (``world.json``): cut to the video's length, and read back on resume."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from lrag.data.prompts import WorldSpec

__all__ = ["PER_FRAME_META", "check_world", "truth_digest", "truth_json", "truncate_meta", "world_from_meta"]

#: Ground-truth fields of a world clip's meta that hold one entry per latent frame.
PER_FRAME_META = ("positions", "camera", "visible_landmarks", "objects", "revisits")


def truncate_meta(meta: dict[str, Any], frames: int) -> dict[str, Any]:
    """The ground truth of the first ``frames`` frames (per-frame lists cut, the rest kept)."""
    out = dict(meta)
    for key in PER_FRAME_META:
        if isinstance(out.get(key), list):
            out[key] = out[key][:frames]
    if isinstance(out.get("revisits"), list):
        out["revisits"] = [[j for j in r if j < frames] for r in out["revisits"]]
    return out


def world_from_meta(meta: dict[str, Any]) -> WorldSpec:
    """Rebuild a :class:`WorldSpec` from the ``world.json`` of a run directory (resume)."""
    return WorldSpec(int(meta["world"]["world_id"]),
                     torch.tensor(meta["positions"], dtype=torch.float32),
                     torch.tensor(meta["camera"], dtype=torch.float32), meta)


def truth_json(truth: dict[str, Any]) -> str:
    """The exact text of a run's ``world.json`` (what :func:`truth_digest` hashes)."""
    return json.dumps(truth)


def truth_digest(truth: dict[str, Any]) -> str:
    """SHA-256 of ``world.json``; the store records it so a resume can verify the file."""
    return hashlib.sha256(truth_json(truth).encode("utf-8")).hexdigest()


def check_world(world: WorldSpec | None, camera: str, num_frames: int) -> None:
    """Refuse a video whose camera path does not fit the backbone (``camera``) or the length."""
    if world is None:
        if camera != "none":
            raise ValueError(
                f"the backbone is camera-conditioned (camera={camera!r}) and needs a camera path per "
                "video: use data: class_path: lrag.data.prompts.WorldPromptDataModule."
            )
        return
    if world.positions.shape[0] < num_frames:
        raise ValueError(f"world {world.world_seed}: trajectory of {world.positions.shape[0]} frames, "
                         f"the video has {num_frames}; raise data.init_args.num_frames.")
