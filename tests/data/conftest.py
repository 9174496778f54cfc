"""Fixtures for the video-import tests: a tiny random Wan VAE on disk and PyAV-written videos."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory) -> Path:
    """A randomly initialised ``AutoencoderKLWan`` (~0.2 M parameters) saved with save_pretrained."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1)
    folder = tmp_path_factory.mktemp("tiny_wan_vae")
    vae.save_pretrained(folder)
    return folder


def moving_frames(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[T, H, W, 3]``: a smooth gradient that drifts, so frames differ but codecs agree."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0, 1, 3)
    out = []
    for t in range(frames):
        phase = (xs + 2 * t) / width + ys / height
        rgb = [127 + 100 * np.sin(2 * np.pi * (phase + base[c])) for c in range(3)]
        out.append(np.stack(rgb, -1))
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


def write_with_pyav(path: Path, frames: np.ndarray, fps: int, codec: str) -> Path:
    """Encode ``frames`` (uint8 ``[T, H, W, 3]``) with ``codec`` into ``path`` (mp4/webm by suffix)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """One PNG image written through PyAV's image2 muxer."""
    import av

    with av.open(str(path), mode="w", format="image2") as container:
        stream = container.add_stream("png")
        stream.height, stream.width = rgb.shape[:2]
        stream.pix_fmt = "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
