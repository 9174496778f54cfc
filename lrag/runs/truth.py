"""A run's ground truth (``world.json``): cut to the video's length, and read back on resume."""

from __future__ import annotations

from typing import Any

import torch

from lrag.data.prompts import WorldSpec

__all__ = ["PER_FRAME_META", "truncate_meta", "world_from_meta"]

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
