"""Video inputs for ``lrag data import --vae``: find them, check them, stream resized frames.

A *source* is a video file (``.mp4``, ``.webm``, ``.mkv``, ``.mov``, ``.avi``) or a folder of
``.png`` frames (sorted by name; zero-pad the numbers). Decoding is PyAV's. :func:`probe_source`
decodes a source once without keeping frames, so a corrupt or truncated file is found before
anything is encoded; :func:`iter_frames` then streams frames one at a time, so memory does not
grow with the video's length.

Resizing covers the target and centre-crops: the frame is scaled by one factor (aspect kept) until
both sides reach the target, then the middle ``height x width`` is cut out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi")
FRAME_SUFFIX = ".png"


class VideoFormatError(ValueError):
    """A video source cannot be used; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class VideoSource:
    """One input video: a file, or a folder of PNG frames (``rel`` is relative to SRC)."""

    path: Path
    rel: str
    is_frame_folder: bool


@dataclass(frozen=True)
class SourceInfo:
    """What :func:`probe_source` found: decoded frame count, frame size and frame rate."""

    frames: int
    height: int
    width: int
    fps: float


def find_video_sources(src: Path) -> list[VideoSource]:
    """Video files and PNG-frame folders under ``src`` (recursive), sorted by relative path."""
    sources = []
    for path in sorted(src.rglob("*")):
        if path.suffix.lower() in VIDEO_SUFFIXES:
            sources.append(VideoSource(path, path.relative_to(src).as_posix(), False))
    folders = sorted({p.parent for p in src.rglob(f"*{FRAME_SUFFIX}") if p.is_file()})
    for folder in folders:
        rel = folder.relative_to(src).as_posix()
        sources.append(VideoSource(folder, src.name if rel == "." else rel, True))
    return sorted(sources, key=lambda s: s.rel)


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == FRAME_SUFFIX and p.is_file())


def _decode_file(path: Path) -> Iterator[np.ndarray]:
    """RGB uint8 ``[H, W, 3]`` frames of a file's first video stream, translating PyAV errors."""
    import av

    if path.is_dir():
        raise VideoFormatError(f"{path}: is a directory, not a video file; rename it or move it "
                               "out of SRC.")
    if path.is_file() and path.stat().st_size == 0:
        raise VideoFormatError(f"{path}: empty file (0 bytes); re-copy it or pass --skip-bad.")
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise VideoFormatError(f"{path}: has no video stream (audio only, or not a video); "
                                       "remove it from SRC or pass --skip-bad to leave it out.")
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except PermissionError as err:
        raise VideoFormatError(f"{path}: permission denied; make it readable (chmod +r) or move "
                               "it out of SRC.") from err
    except (av.error.FFmpegError, OSError, ValueError) as err:
        if isinstance(err, VideoFormatError):
            raise
        # FFmpeg's text repeats the path and an errno; its strerror alone says what failed.
        reason = getattr(err, "strerror", None) or str(err)
        raise VideoFormatError(f"{path}: not a readable video ({reason}); re-encode or re-copy "
                               "it, or pass --skip-bad to leave it out.") from err


def iter_frames(source: VideoSource, stride: int = 1) -> Iterator[np.ndarray]:
    """Stream every ``stride``-th RGB uint8 ``[H, W, 3]`` frame of ``source``.

    Raises:
        VideoFormatError: unreadable data, or a frame whose size differs from the first.
    """
    if source.is_frame_folder:
        frames = (frame for file in _frame_files(source.path) for frame in _decode_file(file))
    else:
        frames = _decode_file(source.path)
    size = None
    for index, frame in enumerate(frames):
        if size is None:
            size = frame.shape
        elif frame.shape != size:
            raise VideoFormatError(f"{source.path}: frame {index} is {frame.shape[1]}x"
                                   f"{frame.shape[0]}, the first is {size[1]}x{size[0]}; a source "
                                   "must keep one frame size.")
        if index % stride == 0:
            yield frame


def _stream_fps(path: Path) -> float:
    import av

    with av.open(str(path), mode="r") as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.base_rate or stream.guessed_rate
        return float(rate) if rate else 0.0


def probe_source(source: VideoSource, frame_folder_fps: float) -> SourceInfo:
    """Decode ``source`` once (frames are dropped as they come) and describe it.

    Args:
        source: The video.
        frame_folder_fps: Frame rate of PNG-frame folders (they carry none).

    Raises:
        VideoFormatError: naming the file: unreadable, no frames, or a changing frame size.
    """
    count, shape = 0, None
    for frame in iter_frames(source):
        count, shape = count + 1, frame.shape
    if count == 0 or shape is None:
        raise VideoFormatError(f"{source.path}: holds no decodable frames; re-encode it or pass "
                               "--skip-bad.")
    fps = frame_folder_fps if source.is_frame_folder else _stream_fps(source.path)
    if not math.isfinite(fps) or fps <= 0:
        raise VideoFormatError(f"{source.path}: the stream states no frame rate; re-mux it with "
                               "one (ffmpeg -r).")
    return SourceInfo(frames=count, height=shape[0], width=shape[1], fps=fps)


@dataclass(frozen=True)
class CoverCrop:
    """Scale ``src`` size by one factor to cover ``dst``, then cut the centre ``dst`` window."""

    src_height: int
    src_width: int
    height: int
    width: int

    @property
    def scaled(self) -> tuple[int, int]:
        """Size after scaling (``>= (height, width)``), aspect ratio kept up to rounding."""
        scale = max(self.height / self.src_height, self.width / self.src_width)
        return (max(self.height, round(self.src_height * scale)),
                max(self.width, round(self.src_width * scale)))

    @property
    def offset(self) -> tuple[int, int]:
        """Top-left corner of the crop in the scaled frame."""
        sh, sw = self.scaled
        return (sh - self.height) // 2, (sw - self.width) // 2

    def describe(self) -> str:
        """One line for the import report, e.g. ``1280x720 -> 1138x640, crop 832x480 at (153, 80)``."""
        (sh, sw), (top, left) = self.scaled, self.offset
        if (sh, sw) == (self.src_height, self.src_width) and (top, left) == (0, 0):
            return f"{self.src_width}x{self.src_height} kept"
        verb = "upscaled" if sh > self.src_height else "scaled"
        crop = f", crop {self.width}x{self.height} at x={left} y={top}" if (sh, sw) != (
            self.height, self.width) else ""
        return f"{self.src_width}x{self.src_height} {verb} to {sw}x{sh}{crop}"

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 ``[N, H, W, 3]`` -> float ``[N, 3, height, width]`` in ``[-1, 1]``."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        sh, sw = self.scaled
        if (sh, sw) != (self.src_height, self.src_width):
            # antialias keeps downscaled texture from aliasing, as a video scaler would.
            x = F.interpolate(x, size=(sh, sw), mode="bilinear", antialias=True,
                              align_corners=False).clamp(0, 255)
        top, left = self.offset
        x = x[:, :, top:top + self.height, left:left + self.width]
        return x / 127.5 - 1.0
