"""Codecs: latents ``[B, F, C, H, W]`` <-> uint8 video ``[B, T, H', W', 3]``.

* :class:`LinearRGBCodec` is the tiny backbone's codec: a fixed seeded projection of the latent
  channels to RGB plus spatial upsampling. It has no trained weights; it exists so that the CPU
  demo writes a watchable mp4 whose colours follow the latents.
* :class:`WanVAECodec` is Wan2.1's causal 3D VAE through diffusers (imported lazily, so the tiny
  path never needs diffusers).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


@runtime_checkable
class Codec(Protocol):
    """What the sampler/generator needs from a codec.

    ``decode`` is required; ``encode`` (pixels -> latents) is optional and only codecs that can
    invert (the Wan VAE) provide it; test with :func:`can_encode`.
    """

    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[B, F, C, H, W]`` -> uint8 video ``[B, T, H', W', 3]``."""
        ...


def can_encode(codec: object) -> bool:
    """Whether ``codec`` also maps pixels to latents (has a callable ``encode``)."""
    return callable(getattr(codec, "encode", None))


def check_latents(latents: Tensor, channels: int, name: str = "latents") -> None:
    """Raise a ValueError naming the problem unless ``latents`` is ``[B, F, channels, H, W]``."""
    if latents.ndim != 5:
        raise ValueError(
            f"{name} must be [B, F, C, H, W], got shape {tuple(latents.shape)}; add the batch "
            "axis with latents[None] if you have [F, C, H, W]"
        )
    if latents.shape[2] != channels:
        raise ValueError(
            f"{name} has {latents.shape[2]} channels (axis 2), the codec expects {channels}; "
            "is the layout [B, F, C, H, W] (not [B, C, F, H, W])?"
        )
    if not torch.isfinite(latents).all():
        raise ValueError(f"{name} contains NaN or Inf values; the sampler diverged upstream")


def to_uint8(video: Tensor) -> Tensor:
    """Map ``[-1, 1]`` floats to uint8 ``[0, 255]`` (clamped, rounded)."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class LinearRGBCodec(nn.Module):
    """Fixed linear latent -> RGB decoder for the tiny backbone (no trained weights).

    Each latent pixel ``z`` (C channels) becomes ``rgb = tanh(W z / sqrt(C))`` with
    ``W ~ N(0, 1)`` of shape ``[3, C]`` drawn from a generator seeded by ``seed``; the
    ``1/sqrt(C)`` keeps unit-variance latents in tanh's responsive range. The ``[-1, 1]`` image
    is then upsampled by ``upscale`` (like the Wan VAE's 8x spatial factor) and quantised to
    uint8. Time is not upsampled: T = F.

    Args:
        channels: Latent channels C.
        upscale: Spatial upsampling factor; output is ``H*upscale x W*upscale``.
        seed: Seed of the projection; the same seed always gives the same colours.
        mode: Upsampling filter, ``"nearest"`` (blocky, exact) or ``"bilinear"`` (smooth).
    """

    def __init__(
        self,
        channels: int = 16,
        upscale: int = 8,
        seed: int = 0,
        mode: Literal["nearest", "bilinear"] = "nearest",
    ) -> None:
        super().__init__()
        if channels < 1 or upscale < 1:
            raise ValueError(f"channels and upscale must be >= 1, got {channels}, {upscale}")
        if mode not in ("nearest", "bilinear"):
            raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
        self.channels = channels
        self.upscale = upscale
        self.mode = mode
        gen = torch.Generator().manual_seed(seed)
        weight = torch.randn(3, channels, generator=gen) / channels**0.5
        self.register_buffer("weight", weight, persistent=False)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Decode latents.

        Args:
            latents: ``[B, F, C, H, W]``, any float dtype.

        Returns:
            uint8 ``[B, F, H*upscale, W*upscale, 3]`` on the latents' device.
        """
        check_latents(latents, self.channels)
        b = latents.shape[0]
        x = rearrange(latents.float(), "b f c h w -> (b f) c h w")
        rgb = torch.tanh(torch.einsum("oc,nchw->nohw", self.weight.to(x.device), x))
        if self.upscale > 1:
            kwargs = {} if self.mode == "nearest" else {"align_corners": False}
            rgb = F.interpolate(rgb, scale_factor=self.upscale, mode=self.mode, **kwargs)
        return rearrange(to_uint8(rgb), "(b f) c h w -> b f h w c", b=b)

    def iter_decode(self, latents: Tensor, chunk_frames: int = 16) -> Iterator[Tensor]:
        """Decode ``chunk_frames`` latent frames at a time (frames are independent here)."""
        for start in range(0, latents.shape[1], chunk_frames):
            yield self.decode(latents[:, start : start + chunk_frames])
