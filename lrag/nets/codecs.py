"""Codecs: latents ``[B, F, C, H, W]`` <-> uint8 video ``[B, T, H', W', 3]``.

* :class:`LinearRGBCodec` is the tiny backbone's codec: a fixed seeded projection of the latent
  channels to RGB plus spatial upsampling. It has no trained weights; it exists so that the CPU
  demo writes a watchable mp4 whose colours follow the latents.
* :class:`WanVAECodec` is Wan2.1's causal 3D VAE through diffusers (imported lazily, so the tiny
  path never needs diffusers).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

log = logging.getLogger(__name__)


@runtime_checkable
class Codec(Protocol):
    """What the sampler/generator needs from a codec.

    ``decode`` is required; ``encode`` (pixels -> latents) is optional and only codecs that can
    invert (the Wan VAE) provide it; test with :func:`can_encode`.
    """

    def decode(self, latents: Tensor, check_finite: bool = True) -> Tensor:
        """Latents ``[B, F, C, H, W]`` -> uint8 video ``[B, T, H', W', 3]``.

        ``check_finite=False`` skips the NaN/Inf check, which waits for the GPU; the generator
        checks the latents on the host instead, so its block loop never syncs the device.
        """
        ...


def can_encode(codec: object) -> bool:
    """Whether ``codec`` also maps pixels to latents (has a callable ``encode``)."""
    return callable(getattr(codec, "encode", None))


def check_latents(latents: Tensor, channels: int, name: str = "latents", finite: bool = True) -> None:
    """Raise a ValueError naming the problem unless ``latents`` is ``[B, F, channels, H, W]``
    (and finite, unless ``finite=False``: that check reads the values, a device sync on CUDA)."""
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
    if finite and not torch.isfinite(latents).all():
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
    def decode(self, latents: Tensor, check_finite: bool = True) -> Tensor:
        """Decode latents.

        Args:
            latents: ``[B, F, C, H, W]``, any float dtype.
            check_finite: Refuse NaN/Inf latents (reads them: a device sync on CUDA).

        Returns:
            uint8 ``[B, F, H*upscale, W*upscale, 3]`` on the latents' device.
        """
        check_latents(latents, self.channels, finite=check_finite)
        b = latents.shape[0]
        x = rearrange(latents.float(), "b f c h w -> (b f) c h w")
        rgb = torch.tanh(torch.einsum("oc,nchw->nohw", self.weight.to(x), x))  # fp32 even under bf16-true
        if self.upscale > 1:
            kwargs = {} if self.mode == "nearest" else {"align_corners": False}
            rgb = F.interpolate(rgb, scale_factor=self.upscale, mode=self.mode, **kwargs)
        return rearrange(to_uint8(rgb), "(b f) c h w -> b f h w c", b=b)

    def iter_decode(self, latents: Tensor, chunk_frames: int = 16) -> Iterator[Tensor]:
        """Decode ``chunk_frames`` latent frames at a time (frames are independent here)."""
        for start in range(0, latents.shape[1], chunk_frames):
            yield self.decode(latents[:, start : start + chunk_frames])


class WanVAECodec(nn.Module):
    """Wan2.1's causal 3D VAE (``diffusers.AutoencoderKLWan``) as a codec.

    Latents are stored normalised, ``z_n = (z - mean) / std`` per channel, like Wan; ``decode``
    undoes this with the VAE config's ``latents_mean`` / ``latents_std`` before decoding.

    Time: latent frame 0 decodes to 1 video frame and every later latent frame to
    ``scale_factor_temporal`` (4) frames, so ``T = 4 F - 3``. The decoder is causal in time and
    keeps a per-conv feature cache of the previous frames; diffusers already decodes one latent
    frame at a time with that cache, but it concatenates the whole float video in memory.
    :meth:`iter_decode` runs the same per-frame loop with the cache *carried across chunks* and
    yields each chunk as uint8 right away, so the output is identical to a one-shot decode while
    memory stays bounded by one chunk. (Decoding chunks independently would restart the cache and
    change the frames at every chunk border.)

    Args:
        folder: Root of a Diffusers-layout checkout of Wan2.1-T2V-1.3B (holding ``vae/``);
            read with ``local_files_only=True``.
        chunk_frames: Latent frames decoded per chunk by :meth:`decode` / :meth:`iter_decode`;
            bounds the float activations held at once.
        dtype: VAE weight dtype, ``"float32"`` (as Wan, best quality) or ``"bfloat16"``.
    """

    def __init__(self, folder: str, chunk_frames: int = 8, dtype: str = "float32") -> None:
        super().__init__()
        from diffusers import AutoencoderKLWan

        from lrag.nets.conditioning import parse_dtype, require_local_files

        if chunk_frames < 1:
            raise ValueError(f"WanVAECodec.chunk_frames must be >= 1, got {chunk_frames}")
        vae_dir = Path(folder) / "vae"
        require_local_files(vae_dir, ["config.json"], weights=True)
        torch_dtype = parse_dtype(dtype, "WanVAECodec.dtype")
        vae = AutoencoderKLWan.from_pretrained(vae_dir, torch_dtype=torch_dtype, local_files_only=True)
        log.info("loaded Wan VAE from %s (%s)", vae_dir, dtype)
        self.vae = vae.eval().requires_grad_(False)
        self.chunk_frames = chunk_frames
        cfg = vae.config
        self.channels = int(cfg.z_dim)
        self.register_buffer("mean", torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(cls, folder: str | Path, chunk_frames: int = 8, dtype: str = "float32") -> WanVAECodec:
        """Same as the constructor (the name used across the library for local weights).

        Raises:
            FileNotFoundError: naming the missing folder/files and how to get them.
        """
        return cls(str(folder), chunk_frames=chunk_frames, dtype=dtype)

    def _denormalize(self, latents: Tensor, check_finite: bool = True) -> Tensor:
        check_latents(latents, self.channels, finite=check_finite)
        dtype = next(self.vae.parameters()).dtype
        z = rearrange(latents.float(), "b f c h w -> b c f h w")
        return (z * self.std.to(z.device) + self.mean.to(z.device)).to(dtype)

    @torch.no_grad()
    def iter_decode(self, latents: Tensor, chunk_frames: int | None = None,
                    check_finite: bool = True) -> Iterator[Tensor]:
        """Yield uint8 video chunks ``[B, T_chunk, 8H, 8W, 3]`` of ``chunk_frames`` latent frames.

        The concatenation of all chunks equals :meth:`decode` (and a one-shot diffusers decode).
        ``check_finite=False`` skips the NaN/Inf check (a device sync).
        """
        vae, chunk = self.vae, chunk_frames or self.chunk_frames
        for attr in ("clear_cache", "post_quant_conv", "decoder"):
            if not hasattr(vae, attr):
                raise RuntimeError(f"this diffusers AutoencoderKLWan lacks {attr!r}; use diffusers>=0.32")
        z = self._denormalize(latents, check_finite)
        vae.clear_cache()
        try:
            for start in range(0, z.shape[2], chunk):
                # post_quant_conv is 1x1x1: no temporal context, so per-chunk is exact.
                x = vae.post_quant_conv(z[:, :, start : start + chunk])
                frames = []
                for i in range(x.shape[2]):
                    vae._conv_idx = [0]
                    frames.append(
                        vae.decoder(
                            x[:, :, i : i + 1],
                            feat_cache=vae._feat_map,
                            feat_idx=vae._conv_idx,
                            first_chunk=start + i == 0,
                        )
                    )
                yield rearrange(to_uint8(torch.cat(frames, dim=2)), "b c t h w -> b t h w c")
        finally:
            vae.clear_cache()  # the cache holds activations; never leave them alive

    def decode(self, latents: Tensor, check_finite: bool = True) -> Tensor:
        """Latents ``[B, F, C, H, W]`` (normalised) -> uint8 ``[B, 4F-3, 8H, 8W, 3]``."""
        return torch.cat(list(self.iter_decode(latents, check_finite=check_finite)), dim=1)

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """uint8 video ``[B, T, H, W, 3]`` (T = 4k+1) -> normalised latents ``[B, F, C, H/8, W/8]``.

        Uses the posterior mean, as Wan does when it encodes training videos.
        """
        if video.ndim != 5 or video.shape[-1] != 3 or video.dtype != torch.uint8:
            raise ValueError(
                f"video must be uint8 [B, T, H, W, 3], got {video.dtype} {tuple(video.shape)}"
            )
        dtype = next(self.vae.parameters()).dtype
        x = rearrange(video, "b t h w c -> b c t h w").to(dtype) / 127.5 - 1.0
        z = self.vae.encode(x).latent_dist.mode().float()
        z = (z - self.mean.to(z.device)) / self.std.to(z.device)
        return rearrange(z, "b c f h w -> b f c h w")
