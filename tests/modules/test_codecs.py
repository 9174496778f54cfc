"""Tests for lrag.modules.codecs (linear RGB codec, Wan VAE through diffusers)."""

from __future__ import annotations

import pytest
import torch

from lrag.modules.codecs import Codec, LinearRGBCodec, can_encode


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
