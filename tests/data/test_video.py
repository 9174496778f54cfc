"""mp4 writing/reading round trips through PyAV (real encoder, no mocks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lrag.data.video import VideoWriter, probe_video, read_video, write_video


def _gradient_frames(t: int, h: int, w: int) -> np.ndarray:
    """Smooth frames that H.264 reproduces closely (noise would not survive the codec)."""
    ys, xs = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    frames = []
    for i in range(t):
        phase = i / max(t, 1)
        rgb = np.stack([xs, ys, (xs + ys + phase) % 1.0], axis=-1)
        frames.append((rgb * 255).astype(np.uint8))
    return np.stack(frames)


def test_round_trip_keeps_count_size_and_content(tmp_path):
    frames = _gradient_frames(10, 32, 48)
    path = write_video(tmp_path / "v.mp4", frames, fps=8)
    info = probe_video(path)
    assert (info.frames, info.height, info.width) == (10, 32, 48)
    assert info.codec == "h264" and info.pix_fmt == "yuv420p"
    assert info.fps == pytest.approx(8)
    back = read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    err = np.abs(back.astype(np.int16) - frames.astype(np.int16)).mean()
    assert err < 8, f"mean abs error {err} too large for a smooth gradient"


def test_chunked_writes_and_torch_input(tmp_path):
    frames = _gradient_frames(9, 16, 16)
    with VideoWriter(tmp_path / "c.mp4", fps=16) as writer:
        for start in range(0, 9, 3):
            writer.write(torch.from_numpy(frames[start : start + 3]))
    assert not (tmp_path / "c.mp4.tmp").exists()
    assert probe_video(tmp_path / "c.mp4").frames == 9


def test_odd_sizes_are_padded_to_even(tmp_path):
    path = write_video(tmp_path / "odd.mp4", _gradient_frames(3, 15, 21), fps=4)
    info = probe_video(path)
    assert (info.height, info.width) == (16, 22)


def test_bad_input_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "f.mp4", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        write_video(tmp_path / "s.mp4", np.zeros((2, 8, 8), np.uint8))
    with VideoWriter(tmp_path / "m.mp4") as writer:
        writer.write(np.zeros((1, 8, 8, 3), np.uint8))
        with pytest.raises(ValueError, match="size changed"):
            writer.write(np.zeros((1, 16, 8, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="junk.mp4"):
        read_video(tmp_path / "junk.mp4")


def test_failed_producer_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "x.mp4") as writer:
            writer.write(np.zeros((2, 8, 8, 3), np.uint8))
            raise RuntimeError("boom")
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "x.mp4.tmp").exists()
