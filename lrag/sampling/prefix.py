"""The blank sink block and the per-frame camera of a video, built one way for every caller.

With ``sink_mode: blank`` one block of zero latents precedes the video: its frames have no
place (NaN viewport position) and no motion, every later frame has the world's camera.
Backbone training (:class:`lrag.modules.backbone_fit.BackboneFitModule`), sampling
(:class:`lrag.modules.generator.GeneratorModule`) and ``lrag eval`` must see exactly the same
sequence, so they all build it here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["blank_block", "condition_on_camera", "prefixed_camera", "with_blank_prefix"]


def blank_block(batch: int, frames: int, channels: int, height: int, width: int,
                device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Zero latents ``[batch, frames, C, H, W]`` of the blank sink block.

    >>> blank_block(1, 3, 16, 8, 8).shape
    torch.Size([1, 3, 16, 8, 8])
    """
    return torch.zeros(batch, frames, channels, height, width, device=device, dtype=dtype)


def with_blank_prefix(latents: Tensor, prefix: int) -> Tensor:
    """``latents [B, F, C, H, W]`` with ``prefix`` zero frames in front (unchanged if 0)."""
    if not prefix:
        return latents
    b, _, c, h, w = latents.shape
    return torch.cat([blank_block(b, prefix, c, h, w, latents.device, latents.dtype), latents], dim=1)


def prefixed_camera(positions: Tensor, camera: Tensor, prefix: int) -> tuple[Tensor, Tensor]:
    """Viewport positions and camera motion ``[B, F, 2]`` with the prefix frames in front.

    Prefix frames get NaN positions (no place: never a revisit, no RoPE offset) and zero motion.

    >>> pos, cam = prefixed_camera(torch.ones(1, 2, 2), torch.ones(1, 2, 2), 1)
    >>> pos[0, :, 0].tolist(), cam[0, :, 0].tolist()
    ([nan, 1.0, 1.0], [0.0, 1.0, 1.0])
    """
    if not prefix:
        return positions, camera
    b = positions.shape[0]
    pos = torch.cat([positions.new_full((b, prefix, 2), math.nan), positions], dim=1)
    cam = torch.cat([camera.new_zeros(b, prefix, 2), camera], dim=1)
    return pos, cam


def condition_on_camera(backbone: nn.Module, memory: object, positions: Tensor, camera: Tensor,
                        prefix: int, device: torch.device | str) -> None:
    """Give a camera-conditioned backbone, and a ground-truth memory, the video's camera.

    Args:
        backbone: Backbone with ``set_camera(path, positions)`` (``CameraConditioned``); a plain
            backbone is left alone.
        memory: The retrieval memory; one with ``set_positions`` (``GroundTruthMemory``) gets
            the viewport positions of every global frame.
        positions: ``[B, F, 2]`` viewport positions of the video's frames (no prefix).
        camera: ``[B, F, 2]`` camera motion of the video's frames.
        prefix: Blank frames in front of the video.
        device: Sampling device.
    """
    pos, cam = prefixed_camera(positions.float(), camera.float(), prefix)
    if hasattr(backbone, "set_camera"):
        backbone.set_camera(cam.to(device), pos.to(device))
    if hasattr(memory, "set_positions"):
        memory.set_positions(pos.to(device))
