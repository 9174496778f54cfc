"""Stream video frames through Wan's causal 3D VAE encoder (``diffusers.AutoencoderKLWan``).

The Wan encoder is causal in time: frame 0 is encoded alone and every later group of
``scale_factor_temporal`` (4) frames becomes one latent frame, with each causal convolution
keeping a small cache of the frames before the group. diffusers' ``encode`` runs exactly this loop
but needs the whole video as one tensor on the device. :meth:`WanVideoEncoder.iter_latents` runs
the same loop over an iterator of frames, carrying the cache from group to group, so it holds one
group of pixels at a time and its output equals a one-shot ``encode`` (a test checks this).

Latents come out as the posterior mean, normalised per channel with the VAE config's
``latents_mean`` / ``latents_std`` like Wan's training data (and like the latents
``lrag.nets.codecs.WanVAECodec.decode`` expects).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Private diffusers attributes the streaming loop relies on (present since diffusers 0.32).
_NEEDED = ("clear_cache", "encoder", "quant_conv", "_enc_feat_map", "_enc_conv_idx")


class VAELoadError(RuntimeError):
    """The VAE folder cannot be used; the message names the folder and the fix."""


def _vae_folder(path: Path) -> Path:
    """``path`` itself if it holds the VAE's ``config.json``, else its ``vae/`` subfolder."""
    if not path.is_dir():
        raise VAELoadError(f"--vae {path}: not a folder; pass a local diffusers AutoencoderKLWan "
                           "folder (holding config.json and the weights) or a Wan checkout "
                           "holding vae/.")
    for candidate in (path, path / "vae"):
        if (candidate / "config.json").is_file():
            return candidate
    raise VAELoadError(f"--vae {path}: no config.json in it or in {path / 'vae'}; download the "
                       "VAE of a Diffusers-format Wan2.1 checkout (its vae/ folder).")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> the first CUDA GPU when there is one, else the CPU.

    Raises:
        VAELoadError: an unknown device string, or a CUDA device that is not there.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise VAELoadError(f"--device {device!r}: not a device; use auto, cpu, cuda or "
                           "cuda:N.") from err
    if resolved.type == "cuda" and (not torch.cuda.is_available() or
                                    (resolved.index or 0) >= torch.cuda.device_count()):
        raise VAELoadError(f"--device {device}: no such CUDA GPU visible "
                           f"({torch.cuda.device_count()} found); use auto or cpu.")
    return resolved


class WanVideoEncoder:
    """Pixels -> normalised Wan latents, one causal group of frames at a time.

    Args:
        vae: A ``diffusers.AutoencoderKLWan`` (Wan2.1 layout: no ``patch_size``).
        device: Where to run it.
    """

    def __init__(self, vae: torch.nn.Module, device: torch.device) -> None:
        if callable(getattr(vae, "clear_cache", None)):
            vae.clear_cache()  # creates the encoder cache attributes checked next
        missing = [name for name in _NEEDED if not hasattr(vae, name)]
        if missing:
            raise VAELoadError(f"this diffusers AutoencoderKLWan lacks {missing}; install "
                               "diffusers>=0.32 (pip install 'lrag[wan]').")
        cfg = vae.config
        if getattr(cfg, "patch_size", None) is not None:
            raise VAELoadError(f"VAE config has patch_size={cfg.patch_size} (a Wan2.2 VAE); only "
                               "the Wan2.1 VAE layout is supported.")
        self.vae = vae.to(device).eval().requires_grad_(False)
        self.device = device
        self.dtype = next(vae.parameters()).dtype
        self.channels = int(cfg.z_dim)
        self.temporal = int(cfg.scale_factor_temporal or 4)
        self.spatial = int(cfg.scale_factor_spatial or 8)
        shape = (1, -1, 1, 1, 1)
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(shape).to(device)
        self.std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(shape).to(device)

    @classmethod
    def from_folder(cls, path: str | os.PathLike, device: str = "auto",
                    dtype: str = "float32") -> WanVideoEncoder:
        """Load the VAE from a local folder (never the network).

        Args:
            path: A diffusers ``AutoencoderKLWan`` folder, or a Wan checkout holding ``vae/``.
            device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
            dtype: Weight dtype: ``float32`` (Wan's choice for the VAE), ``bfloat16``, ``float16``.

        Raises:
            VAELoadError: naming the folder and what is missing.
        """
        folder = _vae_folder(Path(path))
        if dtype not in DTYPES:
            raise VAELoadError(f"--vae-dtype {dtype!r}: choose one of {', '.join(DTYPES)}.")
        try:
            from diffusers import AutoencoderKLWan
        except ImportError as err:
            raise VAELoadError("encoding videos needs diffusers: pip install 'lrag[wan]'.") \
                from err
        try:
            vae = AutoencoderKLWan.from_pretrained(folder, torch_dtype=DTYPES[dtype],
                                                   local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError) as err:
            first = (str(err).splitlines() or [type(err).__name__])[0][:200]
            raise VAELoadError(f"--vae {folder}: not a loadable AutoencoderKLWan folder "
                               f"({first}).") from err
        log.info("loaded Wan VAE from %s (%s)", folder, dtype)
        return cls(vae, resolve_device(device))

    def _group(self, pixels: Tensor) -> Tensor:
        """Encode one causal group ``[N, 3, H, W]`` (N = 1 first, then ``temporal``) -> ``[C, h, w]``."""
        vae = self.vae
        x = pixels.to(self.device, self.dtype).permute(1, 0, 2, 3).unsqueeze(0)  # (1, 3, N, H, W)
        vae._enc_conv_idx = [0]
        out = vae.encoder(x, feat_cache=vae._enc_feat_map, feat_idx=vae._enc_conv_idx)
        # quant_conv is 1x1x1: no temporal context, so applying it per group is exact.
        moments = vae.quant_conv(out).float()  # (1, 2C, 1, h, w)
        mu = moments[:, : self.channels]
        return ((mu - self.mean) / self.std)[0, :, 0].cpu()

    @torch.no_grad()
    def iter_latents(self, frames: Iterable[Tensor],
                     on_drop: Callable[[int], None] | None = None) -> Iterator[Tensor]:
        """Yield latent frames ``[C, H/8, W/8]`` (float32, CPU) as the frames stream in.

        Args:
            frames: Float ``[3, H, W]`` frames in ``[-1, 1]`` (``H, W`` multiples of the
                spatial factor). At most ``temporal`` of them are held at once.
            on_drop: Called with the number of trailing frames that do not fill a last group
                (they are not encoded, as in diffusers).
        """
        vae = self.vae
        vae.clear_cache()
        buffer: list[Tensor] = []
        first = True
        try:
            for frame in frames:
                buffer.append(frame)
                if first or len(buffer) == self.temporal:
                    yield self._group(torch.stack(buffer))
                    buffer, first = [], False
        finally:
            vae.clear_cache()  # the cache holds device activations; never leave them alive
        if on_drop is not None:
            on_drop(len(buffer))
