"""`lrag data import VIDEO_DIR DST --vae PATH` end to end: PyAV videos, a tiny random Wan VAE."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import moving_frames, write_png, write_with_pyav

from lrag.cli import main
from lrag.commands.data import main as data_main
from lrag.data.shards import iter_clips
from lrag.data.vae_encode import WanVideoEncoder
from lrag.data.video import read_video
from lrag.data.video_sources import CoverCrop


@pytest.fixture
def video_dir(tmp_path):
    """a.mp4 (13 frames 48x64 @ 8 fps), b.webm (6 frames), shots/ (5 PNGs), bad.mp4 (garbage)."""
    src = tmp_path / "videos"
    (src / "shots").mkdir(parents=True)
    write_with_pyav(src / "a.mp4", moving_frames(13, 48, 64, seed=1), 8, "libx264")
    write_with_pyav(src / "b.webm", moving_frames(6, 40, 40, seed=2), 8, "libvpx-vp9")
    for i, frame in enumerate(moving_frames(5, 32, 32, seed=3)):
        write_png(src / "shots" / f"{i:04d}.png", frame)
    (src / "bad.mp4").write_bytes(os.urandom(3000))
    return src


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith("."))


@pytest.mark.slow
def test_video_import_encodes_every_good_video_and_names_the_bad_one(video_dir, tiny_vae_dir,
                                                                      tmp_path, capsys):
    dst = tmp_path / "dst"
    args = ["data", "import", str(video_dir), str(dst), "--vae", str(tiny_vae_dir),
            "--height", "32", "--width", "32", "--clip-frames", "2", "--device", "cpu"]
    with pytest.raises(SystemExit) as err:
        main(args)
    assert isinstance(err.value.code, str) and "bad.mp4" in err.value.code
    assert "--skip-bad" in err.value.code
    assert not dst.exists() and _siblings(dst) == []  # nothing written, nothing left behind

    report = data_main(args[1:] + ["--skip-bad", "--shard-size", "3"])
    out = capsys.readouterr().out
    assert report.skipped == [str(video_dir / "bad.mp4")] and "bad.mp4" in out
    assert "a.mp4: 13 frames @ 8 fps, 64x48 scaled to 43x32, crop 32x32" in out
    assert "shots: 5 frames @ 16 fps, 32x32 kept -> 2 latent frames" in out
    clips = {c.key: c for c in iter_clips(dst)}
    # a.mp4: 13 frames -> 4 latent frames -> clips [0, 2), [2, 4); b.webm: 6 frames -> 2 latent
    # frames (last frame dropped); shots: 5 frames -> 2 latent frames.
    assert sorted(clips) == ["a_mp4-f000000", "a_mp4-f000002", "b_webm-f000000",
                             "shots-f000000"]
    assert report.written == 4 and len(report.shards) == 2
    second = clips["a_mp4-f000002"].meta
    assert second["source"] == "a.mp4" and second["frame_offset"] == 2
    assert second["source_frames"] == [5, 13] and clips["a_mp4-f000000"].meta[
        "source_frames"] == [0, 5]
    assert second["fps"] == 2.0 and second["source_size"] == [48, 64]
    assert second["resize"] == {"scaled": [32, 43], "crop_offset": [0, 5], "size": [32, 32]}
    assert clips["b_webm-f000000"].meta["source_frames"] == [0, 5]
    for clip in clips.values():
        assert clip.latents.shape == (2, 16, 4, 4) and clip.latents.dtype == np.float16

    # The shards hold exactly what the encoder gives for the decoded, resized frames.
    encoder = WanVideoEncoder.from_folder(tiny_vae_dir, device="cpu")
    pixels = CoverCrop(48, 64, 32, 32)(read_video(video_dir / "a.mp4"))
    expected = torch.stack(list(encoder.iter_latents(iter(pixels)))).numpy()
    stored = np.concatenate([clips["a_mp4-f000000"].latents, clips["a_mp4-f000002"].latents])
    np.testing.assert_allclose(stored.astype(np.float32), expected, atol=2e-3, rtol=1e-3)


def test_video_flags_are_checked_before_any_work(video_dir, tiny_vae_dir, tmp_path):
    dst = tmp_path / "dst"
    base = ["data", "import", str(video_dir), str(dst)]
    cases = [
        (["--vae", str(tiny_vae_dir), "--height", "30"], "--height 30: must be a positive multiple"
                                                         " of 8 (the VAE's spatial factor); try 32"),
        (["--vae", str(tiny_vae_dir), "--frame-stride", "0"], "--frame-stride 0"),
        (["--vae", str(tiny_vae_dir), "--clip-frames", "-1"], "--clip-frames -1"),
        (["--height", "32"], "--height only apply to video import"),
        (["--vae", str(tiny_vae_dir), "--channels", "16"], "--channels applies to latent files"),
        (["--vae", str(tmp_path / "nowhere"), "--skip-bad"], "nowhere: not a folder"),
        (["--vae", str(tiny_vae_dir), "--device", "gpu"], "--device 'gpu': not a device"),
        (["--vae", str(tiny_vae_dir), "--device", "cuda:7"], "--device cuda:7: no such CUDA GPU"),
    ]
    for extra, needle in cases:
        with pytest.raises(SystemExit) as err:
            main(base + extra)
        assert needle in str(err.value.code), (extra, err.value.code)
    assert not dst.exists() and _siblings(dst) == []


def test_png_folder_at_the_top_is_one_video_and_existing_shards_survive_a_failure(
        tmp_path, tiny_vae_dir):
    src = tmp_path / "frames"
    src.mkdir()
    for i, frame in enumerate(moving_frames(5, 16, 16)):
        write_png(src / f"{i:03d}.png", frame)
    dst = tmp_path / "dst"
    main(["data", "synth", str(dst), "--clips", "2", "--frames", "3"])
    before = {p.name: p.read_bytes() for p in dst.iterdir()}
    write_png(src / "999.png", moving_frames(1, 8, 8)[0])  # a frame of another size
    with pytest.raises(SystemExit, match="one frame size"):
        main(["data", "import", str(src), str(dst), "--vae", str(tiny_vae_dir), "--overwrite",
              "--height", "16", "--width", "16"])
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == before
    (src / "999.png").unlink()
    report = data_main(["import", str(src), str(dst), "--vae", str(tiny_vae_dir),
                   "--overwrite", "--height", "16", "--width", "16", "--fps", "4"])
    (clip,) = iter_clips(dst)
    assert report.written == 1 and clip.key == "frames-f000000"
    assert clip.meta["source"] == "frames" and clip.meta["fps"] == 1.0
    assert clip.latents.shape == (2, 16, 2, 2)
