"""Camera conditioning of a causal backbone: per-frame motion tokens and position RoPE offsets."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from lrag.nets.kv_cache import KVCache, MemoryKV

__all__ = ["CAMERA_MODES", "CameraConditioned"]

CAMERA_MODES = ("none", "motion", "position")


class CameraConditioned(nn.Module):
    """A causal backbone with camera conditioning per frame.

    ``"motion"``: the backbone has no camera input; its cross-attention context is recomputed
    for every forward, so the smallest adapter is ``context = [text | one token per frame of
    the block]`` with a token made from the frame's camera displacement (dx, dy) by a small
    MLP. ``"position"``: the motion tokens plus every frame's camera position as a spatial
    RoPE offset (``KVCache.begin`` offsets: world position / patch size, in token units), so
    q.k of the block against every cached sink / memory / local frame sees their relative
    world displacement (no new parameters). ``"none"`` passes the context through.

    Args:
        backbone: ``CausalWanModel`` (``forward(x, t, context, cache, start_frame, memory, offsets)``).
        camera: ``"none"``, ``"motion"`` or ``"position"``.
        text_dim: Context width (the backbone's ``text_dim``).
    """

    def __init__(self, backbone: nn.Module, camera: Literal["none", "motion", "position"] = "motion",
                 text_dim: int | None = None) -> None:
        super().__init__()
        if camera not in CAMERA_MODES:
            raise ValueError(f"camera must be one of {CAMERA_MODES}, got {camera!r}.")
        self.backbone, self.camera = backbone, camera
        dim = text_dim or backbone.config.text_dim
        self.camera_mlp = nn.Sequential(nn.Linear(2, dim), nn.SiLU(), nn.Linear(dim, dim)) if camera != "none" else None
        self.path: Tensor | None = None
        self.offsets: Tensor | None = None

    def set_camera(self, path: Tensor | None, positions: Tensor | None = None) -> None:
        """Camera of every global frame of the video.

        Args:
            path: Displacement ``[B, F_total, 2]`` (dx, dy) per frame.
            positions: Viewport position ``[B, F_total, 2]`` (x, y) in latent cells, NaN for
                frames with no place (blank sink); needed by ``camera="position"``.
        """
        self.path = path
        self.offsets = None
        if self.camera == "position" and positions is not None:
            _, ph, pw = self.backbone.config.patch_size
            # (x, y) cells -> (row, col) tokens; blank frames sit at the origin.
            pos = positions.float().nan_to_num(0.0)
            self.offsets = torch.stack([pos[..., 1] / ph, pos[..., 0] / pw], dim=-1)

    def new_cache(self, *args: Any, **kwargs: Any) -> KVCache:  # noqa: D102
        return self.backbone.new_cache(*args, **kwargs)

    def forward(self, x: Tensor, t: Tensor, context: Tensor, cache: KVCache, start_frame: int,
                memory: MemoryKV | None = None) -> Tensor:
        """Backbone forward with the camera of frames ``start_frame .. start_frame+F-1``."""
        end = start_frame + x.shape[1]
        if self.camera_mlp is not None:
            if self.path is None or self.path.shape[1] < end:
                raise RuntimeError(
                    f"CameraConditioned: no camera path for frames up to {end}; "
                    "call set_camera() with the video's displacements first."
                )
            cam = self.path[:, start_frame:end].to(context)
            context = torch.cat([context, self.camera_mlp(cam)], dim=1)
        offsets = None
        if self.camera == "position":
            if self.offsets is None or self.offsets.shape[1] < end:
                raise RuntimeError(
                    f"CameraConditioned(camera='position'): no positions for frames up to {end}; "
                    "call set_camera(path, positions) with the video's viewport positions first."
                )
            offsets = self.offsets[:, start_frame:end].to(x.device)
        return self.backbone(x, t, context, cache, start_frame, memory, offsets)
