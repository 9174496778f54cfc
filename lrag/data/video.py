"""Writing and reading mp4 files with PyAV.

Videos are stored as H.264 in yuv420p, the pixel format every player decodes. yuv420p
subsamples chroma by two in both directions, so frame sizes must be even: odd sizes are padded
by one edge row/column (replicated) rather than rejected, because decoded latents of odd size
are a legitimate output of small codecs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

__all__ = ["VideoWriter", "VideoInfo", "read_video", "probe_video", "write_video"]


def _as_uint8_frames(frames: np.ndarray | torch.Tensor, source: str) -> np.ndarray:
    """Check a ``[T, H, W, 3]`` uint8 array and return it as numpy."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"{source}: frames must be uint8 [T, H, W, 3] (or one [H, W, 3] frame), got shape "
            f"{tuple(frames.shape)}; decode latents with a codec first."
        )
    if frames.dtype != np.uint8:
        raise ValueError(
            f"{source}: frames must have dtype uint8, got {frames.dtype}; scale to 0..255 and "
            "cast with .astype(np.uint8)."
        )
    return frames


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """Replicate the last row/column so height and width are even (yuv420p needs it)."""
    _, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


class VideoWriter:
    """Appends RGB frames to an H.264 mp4, chunk by chunk.

    The file is written to ``<path>.tmp`` and renamed on :meth:`close`, so a crashed run never
    leaves a truncated ``video.mp4`` that looks finished.

    Args:
        path: Output ``.mp4`` file; its parent directory is created.
        fps: Frames per second of the stream.
        crf: H.264 constant rate factor (0 = lossless, 23 = default, 51 = worst).
    """

    def __init__(self, path: str | Path, fps: float = 16.0, crf: int = 18) -> None:
        if fps <= 0:
            raise ValueError(f"VideoWriter({path}): fps must be > 0, got {fps}.")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._fps = Fraction(fps).limit_denominator(1001)
        self._crf = crf
        self._container: av.container.OutputContainer | None = None
        self._stream = None
        self._size: tuple[int, int] | None = None
        self.frames_written = 0

    def _open(self, height: int, width: int) -> None:
        import av  # imported on first use: sampling without a video (write_video: false) needs no FFmpeg

        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=self._fps)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        # One encoder thread: x264's output depends on its thread count, which defaults to the
        # machine's cores; with one thread equal frames give equal bytes on every machine.
        self._stream.options = {"crf": str(self._crf), "threads": "1"}
        self._stream.codec_context.thread_count = 1
        self._size = (height, width)

    def write(self, frames: np.ndarray | torch.Tensor) -> None:
        """Append frames.

        Args:
            frames: uint8 ``[T, H, W, 3]`` (or ``[H, W, 3]``) RGB; every call must use the
                same ``H, W``.
        """
        frames = _pad_even(_as_uint8_frames(frames, str(self.path)))
        _, h, w, _ = frames.shape
        if self._container is None:
            self._open(h, w)
        elif self._size != (h, w):
            raise ValueError(
                f"{self.path}: frame size changed from {self._size} to {(h, w)} mid-video; "
                "decode every chunk at the same resolution."
            )
        for rgb in frames:
            frame = _av().VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        self.frames_written += len(frames)

    def close(self) -> Path:
        """Flush the encoder and move the finished file into place; returns its path."""
        if self._container is None:
            raise ValueError(f"{self.path}: no frames were written; nothing to close.")
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
        self._tmp.replace(self.path)
        log.info("wrote %s (%d frames)", self.path, self.frames_written)
        return self.path

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._container is not None:
            # Leave no half-written file behind when the producer failed.
            self._container.close()
            self._container = None
            self._tmp.unlink(missing_ok=True)


def write_video(
    path: str | Path, frames: np.ndarray | torch.Tensor | Iterable[np.ndarray], fps: float = 16.0
) -> Path:
    """Write RGB frames to an H.264/yuv420p mp4.

    Args:
        path: Output ``.mp4`` file.
        frames: uint8 ``[T, H, W, 3]`` or an iterable of such chunks.
        fps: Frames per second.

    Returns:
        The path written.
    """
    with VideoWriter(path, fps=fps) as writer:
        if isinstance(frames, (np.ndarray, torch.Tensor)):
            writer.write(frames)
        else:
            for chunk in frames:
                writer.write(chunk)
    return Path(path)


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds: ``frames`` decoded frames of ``height`` x ``width``."""

    frames: int
    height: int
    width: int
    fps: float
    codec: str
    pix_fmt: str


def _av():
    import av

    return av


def _open_for_read(path: str | Path) -> av.container.InputContainer:
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist; check the run directory.")
    try:
        return av.open(str(path), mode="r")
    except av.error.FFmpegError as err:
        raise ValueError(f"{path}: not a readable video ({err}); re-run to regenerate it.") from err


def read_video(path: str | Path) -> np.ndarray:
    """Decode every frame of a video.

    Args:
        path: The video file.

    Returns:
        uint8 ``[T, H, W, 3]`` RGB frames.
    """
    with _open_for_read(path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path}: the video stream holds no frames.")
    return np.stack(frames)


def probe_video(path: str | Path) -> VideoInfo:
    """Count frames and read the stream parameters by decoding the whole file."""
    with _open_for_read(path) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(video=0))
        return VideoInfo(
            frames=count,
            height=stream.codec_context.height,
            width=stream.codec_context.width,
            fps=float(stream.average_rate or stream.base_rate or 0),
            codec=stream.codec_context.name,
            pix_fmt=str(stream.codec_context.pix_fmt),
        )
