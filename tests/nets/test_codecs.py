"""Tests for lrag.nets.codecs (linear RGB codec, Wan VAE through diffusers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lrag.nets.codecs import Codec, LinearRGBCodec, WanVAECodec, can_encode, to_uint8


def test_linear_rgb_codec_shape_dtype_and_protocol() -> None:
    codec = LinearRGBCodec(channels=16, upscale=4, seed=0)
    lat = torch.randn(2, 3, 16, 5, 7)
    video = codec.decode(lat)
    assert isinstance(codec, Codec)
    assert not can_encode(codec)
    assert video.shape == (2, 3, 20, 28, 3)
    assert video.dtype == torch.uint8
    # Unit-variance latents should use a good part of the colour range, not collapse to grey.
    assert int(video.max()) - int(video.min()) > 100


def test_linear_rgb_codec_is_seeded_and_nearest_is_blockwise() -> None:
    lat = torch.randn(1, 2, 4, 3, 3)
    a = LinearRGBCodec(channels=4, upscale=2, seed=5).decode(lat)
    b = LinearRGBCodec(channels=4, upscale=2, seed=5).decode(lat)
    c = LinearRGBCodec(channels=4, upscale=2, seed=6).decode(lat)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Nearest upsampling: each 2x2 block repeats the latent pixel's colour.
    assert torch.equal(a[:, :, 0::2, 0::2], a[:, :, 1::2, 1::2])
    # Frame f of the video depends on latent frame f only.
    lat2 = lat.clone()
    lat2[:, 1] += 1.0
    d = LinearRGBCodec(channels=4, upscale=2, seed=5).decode(lat2)
    assert torch.equal(a[:, 0], d[:, 0]) and not torch.equal(a[:, 1], d[:, 1])


def test_linear_rgb_codec_iter_decode_matches_decode() -> None:
    codec = LinearRGBCodec(channels=4, upscale=2, mode="bilinear")
    lat = torch.randn(1, 7, 4, 3, 3)
    chunks = list(codec.iter_decode(lat, chunk_frames=3))
    assert [c.shape[1] for c in chunks] == [3, 3, 1]
    assert torch.equal(torch.cat(chunks, dim=1), codec.decode(lat))


@pytest.mark.parametrize(
    ("shape", "match"),
    [((3, 16, 4, 4), r"\[B, F, C, H, W\]"), ((1, 16, 3, 4, 4), "channels")],
)
def test_linear_rgb_codec_rejects_bad_layout(shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LinearRGBCodec(channels=16).decode(torch.randn(*shape))


def test_linear_rgb_codec_rejects_nan() -> None:
    lat = torch.randn(1, 1, 16, 2, 2)
    lat[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        LinearRGBCodec(channels=16).decode(lat)


def _save_tiny_wan_vae(root: Path, z_dim: int = 4) -> None:
    """A randomly initialised tiny AutoencoderKLWan saved in the Diffusers layout."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.5 * i for i in range(z_dim)],
        latents_std=[1.0 + i for i in range(z_dim)],
    )
    vae.save_pretrained(root / "vae")


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wan_vae")
    _save_tiny_wan_vae(root)
    return root


def test_wan_vae_chunked_decode_equals_one_shot_diffusers_decode(tiny_vae_dir: Path) -> None:
    codec = WanVAECodec.from_pretrained(tiny_vae_dir, chunk_frames=2)
    assert isinstance(codec, Codec) and can_encode(codec)
    torch.manual_seed(1)
    lat = torch.randn(1, 5, 4, 2, 3)
    video = codec.decode(lat)
    assert video.shape == (1, 4 * 5 - 3, 16, 24, 3) and video.dtype == torch.uint8
    # Reference: diffusers' own decode of the whole clip, de-normalised as Wan does.
    vae = codec.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        ref = vae.decode(lat.permute(0, 2, 1, 3, 4) * std + mean).sample
    assert torch.equal(video, to_uint8(ref).permute(0, 2, 3, 4, 1))
    chunks = list(codec.iter_decode(lat, chunk_frames=2))
    assert [c.shape[1] for c in chunks] == [1 + 4, 8, 4]


def test_wan_vae_independent_chunks_would_differ(tiny_vae_dir: Path) -> None:
    """Why the cache is carried: restarting it at a chunk border changes the frames."""
    codec = WanVAECodec.from_pretrained(tiny_vae_dir)
    torch.manual_seed(2)
    lat = torch.randn(1, 4, 4, 2, 2)
    carried = codec.decode(lat).int()
    restarted = torch.cat([codec.decode(lat[:, :2]), codec.decode(lat[:, 2:])], dim=1).int()
    # Before the border both are the same causal computation (up to 1 level of rounding noise).
    assert (carried[:, :5] - restarted[:, :5]).abs().max() <= 1
    # After it, a restarted cache treats latent frame 2 as a first frame (1 video frame, not 4):
    # the clip loses 3 frames and the rest no longer lines up.
    assert carried.shape[1] == 13 and restarted.shape[1] == 10


def test_wan_vae_encode_roundtrip_shapes(tiny_vae_dir: Path) -> None:
    codec = WanVAECodec.from_pretrained(tiny_vae_dir)
    video = torch.randint(0, 256, (1, 9, 16, 16, 3), dtype=torch.uint8)
    lat = codec.encode(video)
    assert lat.shape == (1, 3, 4, 2, 2)
    assert codec.decode(lat).shape == video.shape
    with pytest.raises(ValueError, match="uint8"):
        codec.encode(video.float())


def test_wan_vae_missing_folder_names_files_and_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"vae.*config\.json.*huggingface-cli download"):
        WanVAECodec.from_pretrained(tmp_path)
