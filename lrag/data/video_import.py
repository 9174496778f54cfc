"""``lrag data import SRC DST --vae PATH``: videos -> Wan latents -> latent shards.

Two passes. :func:`plan_videos` decodes every source once (frames are dropped as they come) and
works out its resize, latent length and clips, so a corrupt file is named before anything is
encoded. :func:`encode_video` then streams each source's frames through the VAE and cuts the
latent sequence into clips of ``clip_frames`` latent frames.

Clips of one source are consecutive slices of one continuous causal encoding, the way a long
generated video's latents are; latent frame ``j`` of a source covers its (strided) pixel frames
``0`` for ``j = 0`` and ``4j-3 .. 4j`` after that. Each clip's JSON records the source file and
the pixel frame range, so every clip can be traced back to its footage.
"""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from lrag.data.vae_encode import WanVideoEncoder
from lrag.data.video_sources import (
    CoverCrop,
    SourceInfo,
    VideoFormatError,
    VideoSource,
    iter_frames,
    probe_source,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoImportSettings:
    """Knobs of a video import (flags of ``lrag data import``).

    Attributes:
        height, width: Pixel size the VAE sees (multiples of its spatial factor, 8).
        clip_frames: Latent frames per clip; 0 keeps each source as one clip.
        frame_stride: Keep every ``frame_stride``-th source frame (e.g. 2 turns 30 fps into 15).
        frame_folder_fps: Frame rate of PNG-frame folders, which state none.
        temporal: The VAE's temporal factor (pixel frames per latent frame after the first).
    """

    height: int = 480
    width: int = 832
    clip_frames: int = 0
    frame_stride: int = 1
    frame_folder_fps: float = 16.0
    temporal: int = 4


@dataclass(frozen=True)
class VideoPlan:
    """What will happen to one source: its probe, resize, latent length and dropped frames."""

    source: VideoSource
    info: SourceInfo
    resize: CoverCrop
    used_frames: int  # after the stride
    latent_frames: int
    dropped: int  # trailing strided frames that do not fill a causal group

    def clip_ranges(self, clip_frames: int) -> list[tuple[int, int]]:
        """Latent ``[start, stop)`` of each clip."""
        step = clip_frames or self.latent_frames
        return [(a, min(a + step, self.latent_frames)) for a in range(0, self.latent_frames, step)]

    def describe(self, settings: VideoImportSettings) -> str:
        """One line for the import report."""
        stride = f", every {settings.frame_stride}th frame" if settings.frame_stride > 1 else ""
        drop = f", last {self.dropped} frame(s) dropped" if self.dropped else ""
        clips = len(self.clip_ranges(settings.clip_frames))
        return (f"{self.source.rel}: {self.info.frames} frames @ {self.info.fps:g} fps{stride}, "
                f"{self.resize.describe()} -> {self.latent_frames} latent frames in {clips} "
                f"clip(s){drop}")


def plan_video(source: VideoSource, settings: VideoImportSettings) -> VideoPlan:
    """Probe ``source`` and plan its import.

    Raises:
        VideoFormatError: unreadable, empty, or no frame left after the stride.
    """
    info = probe_source(source, settings.frame_folder_fps)
    used = len(range(0, info.frames, settings.frame_stride))
    latent_frames = 1 + (used - 1) // settings.temporal
    dropped = (used - 1) % settings.temporal
    resize = CoverCrop(info.height, info.width, settings.height, settings.width)
    return VideoPlan(source, info, resize, used, latent_frames, dropped)


def plan_videos(sources: list[VideoSource], settings: VideoImportSettings,
                skip_bad: bool) -> tuple[list[VideoPlan], list[tuple[str, str]]]:
    """Plan every source; returns ``(plans, skipped)`` with ``(path, reason)`` per skipped one.

    Raises:
        VideoFormatError: the first bad source, unless ``skip_bad``.
    """
    plans, skipped = [], []
    for source in sources:
        try:
            plans.append(plan_video(source, settings))
        except VideoFormatError as err:
            if not skip_bad:
                raise
            log.warning("skipping %s", err)
            skipped.append((str(source.path), str(err)))
    return plans, skipped


def clip_key(rel: str, start: int) -> str:
    """Sample key of the clip starting at latent frame ``start`` (dots are not allowed)."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", rel) + f"-f{start:06d}"


def _pixel_range(start: int, stop: int, temporal: int, stride: int) -> list[int]:
    """Source frames ``[first, last + 1)`` that latent frames ``[start, stop)`` encode."""
    first = 0 if start == 0 else temporal * start - temporal + 1
    last = temporal * (stop - 1)
    return [first * stride, last * stride + 1]


def encode_video(encoder: WanVideoEncoder, plan: VideoPlan, settings: VideoImportSettings,
                 vae_name: str) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
    """Stream one source through the VAE; yield ``(key, latents [F, C, h, w], meta)`` per clip.

    Memory holds one causal group of pixels and one clip of latents at a time.
    """
    if encoder.temporal != settings.temporal:
        raise ValueError(f"settings.temporal={settings.temporal} but the VAE's is "
                         f"{encoder.temporal}.")
    resize = plan.resize
    pixels = (resize(frame[None])[0] for frame in iter_frames(plan.source, settings.frame_stride))
    latents = encoder.iter_latents(pixels)
    latent_fps = plan.info.fps / settings.frame_stride / settings.temporal
    for start, stop in plan.clip_ranges(settings.clip_frames):
        clip = list(itertools.islice(latents, stop - start))
        if len(clip) != stop - start:
            raise VideoFormatError(f"{plan.source.path}: decoded to fewer frames than when it "
                                   "was checked (changed during the import?); re-run.")
        meta = {
            "source": plan.source.rel,
            "prompt": "",
            "frame_offset": start,
            "fps": latent_fps,
            "source_frames": _pixel_range(start, stop, settings.temporal, settings.frame_stride),
            "source_fps": plan.info.fps,
            "source_size": [plan.info.height, plan.info.width],
            "frame_stride": settings.frame_stride,
            "resize": {"scaled": list(resize.scaled), "crop_offset": list(resize.offset),
                       "size": [settings.height, settings.width]},
            "vae": vae_name,
            "encoding": "continuous",
        }
        yield clip_key(plan.source.rel, start), torch.stack(clip).numpy(), meta
    latents.close()


def check_settings(settings: VideoImportSettings, spatial: int = 8) -> None:
    """Refuse sizes the VAE cannot take and nonsense counts, naming the flag.

    Raises:
        ValueError: with the flag and the nearest valid value.
    """
    for flag, value in (("--height", settings.height), ("--width", settings.width)):
        if value < spatial or value % spatial:
            near = max(spatial, round(value / spatial) * spatial)
            raise ValueError(f"{flag} {value}: must be a positive multiple of {spatial} (the "
                             f"VAE's spatial factor); try {near}.")
    if settings.clip_frames < 0:
        raise ValueError(f"--clip-frames {settings.clip_frames}: must be >= 0 (0 = one clip per "
                         "video).")
    if settings.frame_stride < 1:
        raise ValueError(f"--frame-stride {settings.frame_stride}: must be >= 1.")


def import_videos(plans: list[VideoPlan], encoder: WanVideoEncoder,
                  settings: VideoImportSettings, vae_name: str,
                  write: Callable[[str, np.ndarray, dict[str, Any]], object]) -> int:
    """Encode every planned source and hand each clip to ``write``; returns the clip count."""
    count = 0
    for plan in plans:
        for key, latents, meta in encode_video(encoder, plan, settings, vae_name):
            write(key, latents, meta)
            count += 1
        log.info("encoded %s", plan.source.rel)
    return count
