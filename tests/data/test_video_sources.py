"""Video sources: discovery, probing (PyAV decoding of real files), cover-and-crop resizing."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import moving_frames, write_png, write_with_pyav

from lrag.data.video_sources import (
    CoverCrop,
    VideoFormatError,
    find_video_sources,
    iter_frames,
    probe_source,
)


def test_finds_files_and_png_folders_and_probes_them(tmp_path):
    frames = moving_frames(9, 24, 32)
    (tmp_path / "nested" / "shots").mkdir(parents=True)
    write_with_pyav(tmp_path / "a.mp4", frames, 8, "libx264")
    write_with_pyav(tmp_path / "nested" / "b.webm", frames[:5], 12, "libvpx-vp9")
    for i in range(3):
        write_png(tmp_path / "nested" / "shots" / f"{i:03d}.png", frames[i])
    (tmp_path / "notes.txt").write_text("not a video")
    sources = find_video_sources(tmp_path)
    assert [(s.rel, s.is_frame_folder) for s in sources] == [
        ("a.mp4", False), ("nested/b.webm", False), ("nested/shots", True)]
    infos = [probe_source(s, frame_folder_fps=5.0) for s in sources]
    assert [(i.frames, i.height, i.width, i.fps) for i in infos] == [
        (9, 24, 32, 8.0), (5, 24, 32, 12.0), (3, 24, 32, 5.0)]
    png = np.stack(list(iter_frames(sources[2])))
    np.testing.assert_array_equal(png, frames[:3])  # PNG is lossless
    assert len(list(iter_frames(sources[0], stride=4))) == 3  # frames 0, 4, 8


def _write_audio_only(path) -> None:
    """A valid mp4 with one AAC audio stream and no video (random bytes sometimes parse as such)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "directory", "audio_only"])
def test_bad_sources_are_named(tmp_path, damage):
    path = tmp_path / "clip.mp4"
    if damage == "directory":
        path.mkdir()
    elif damage == "audio_only":
        _write_audio_only(path)
    else:
        write_with_pyav(path, moving_frames(9, 24, 32), 8, "libx264")
        data = path.read_bytes()
        path.write_bytes({"garbage": os.urandom(2000), "truncated": data[: len(data) // 2],
                          "empty": b""}[damage])
    (source,) = [s for s in find_video_sources(tmp_path) if s.rel == "clip.mp4"]
    with pytest.raises(VideoFormatError) as err:
        probe_source(source, 16.0)
    assert str(path) in str(err.value)
    # every message says what to do: the directory is moved away, a file skipped with --skip-bad
    assert ("move it" in str(err.value)) if damage == "directory" else ("--skip-bad" in str(err.value))
    if damage == "audio_only":
        assert "no video stream" in str(err.value)


def test_png_folder_with_two_frame_sizes_is_refused(tmp_path):
    write_png(tmp_path / "000.png", moving_frames(1, 8, 8)[0])
    write_png(tmp_path / "001.png", moving_frames(1, 8, 10)[0])
    (source,) = find_video_sources(tmp_path)
    with pytest.raises(VideoFormatError, match="one frame size"):
        probe_source(source, 16.0)


def test_cover_crop_keeps_aspect_and_takes_the_centre():
    crop = CoverCrop(src_height=96, src_width=128, height=64, width=64)
    assert crop.scaled == (64, 85) and crop.offset == (0, 10)
    assert "scaled to 85x64, crop 64x64" in crop.describe()
    # A bright band at source columns 60..67 (centre 64) lands at 64 * 85/128 - 10 = 32.5.
    frame = np.zeros((1, 96, 128, 3), np.uint8)
    frame[:, :, 60:68] = 255
    out = crop(frame)
    assert out.shape == (1, 3, 64, 64) and out.min() >= -1 and out.max() <= 1
    weight = (out[0, 0].mean(0) + 1).numpy()
    assert np.average(np.arange(64), weights=weight) == pytest.approx(32.5, abs=0.5)
    assert weight[:25].max() < 1e-3 and weight[40:].max() < 1e-3
    up = CoverCrop(10, 20, 32, 32)
    assert up.scaled == (32, 64) and "upscaled" in up.describe()
    same = CoverCrop(32, 32, 32, 32)
    assert same.describe() == "32x32 kept"
    grey = np.full((2, 32, 32, 3), 51, np.uint8)
    np.testing.assert_allclose(same(grey).numpy(), 51 / 127.5 - 1, atol=1e-6)
