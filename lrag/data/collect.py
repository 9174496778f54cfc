"""Gather the consolidated clips of finished predict runs into one training shard set.

Every finished ``lrag predict`` run leaves ``<out_dir>/<run_id>/latents-000000.tar``: the whole
video's latents with its prompt, seed and (for procedural worlds) ground truth. A run that was
killed has no such file (only its per-block shards) and is left out. Run ids are unique across
ranks (``<name>-r<rank>-<i>`` under DDP), so they serve as the clips' keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lrag.data.shards import Clip, LatentFormatError, iter_clips

__all__ = ["CollectReport", "collect_clips", "find_run_clips"]

#: File name of a finished run's consolidated clip (``RunOutputs.finish``).
RUN_CLIP = "latents-000000.tar"


@dataclass
class CollectReport:
    """What :func:`collect_clips` gathered."""

    runs: int = 0
    frames: int = 0
    unfinished: list[str] = field(default_factory=list)  # run folders without a clip


def find_run_clips(sources: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """Consolidated clips under ``sources`` and run folders that have none.

    Args:
        sources: Predict ``out_dir`` folders (their sub-folders are runs) or single run folders.

    Returns:
        ``(clips, unfinished)``: sorted ``latents-000000.tar`` paths; folders with a ``blocks/``
        sub-folder but no clip (runs that did not finish).

    Raises:
        FileNotFoundError: a source is not a folder.
    """
    clips, unfinished = [], []
    for source in sources:
        root = Path(source)
        if not root.is_dir():
            raise FileNotFoundError(f"{source} is not a folder; pass the out_dir of `lrag predict` "
                                    "(runs/ by default) or a run folder.")
        runs = [root] if (root / "blocks").is_dir() else sorted(p for p in root.iterdir() if p.is_dir())
        for run in runs:
            if (run / RUN_CLIP).is_file():
                clips.append(run / RUN_CLIP)
            elif (run / "blocks").is_dir():
                unfinished.append(run)
    return sorted(clips), sorted(unfinished)


def collect_clips(clip_files: list[Path], write: Callable[[str, object, dict], object],
                  min_frames: int = 1) -> Iterator[Clip]:
    """Copy each run's clip through ``write(key, latents, meta)``; yields the clips written.

    Args:
        clip_files: ``latents-000000.tar`` files (:func:`find_run_clips`).
        write: A :class:`~lrag.data.shards.ShardWriter`'s ``write``.
        min_frames: Runs with fewer latent frames are skipped (too short to train on).

    Raises:
        LatentFormatError: two runs share a key (the same run gathered twice) or a clip is bad;
            the message names both files.
    """
    seen: dict[str, Path] = {}
    for path in clip_files:
        for clip in iter_clips(str(path)):
            if clip.key in seen:
                raise LatentFormatError(f"run {clip.key!r} is in both {seen[clip.key]} and {path}; "
                                        "gather each run folder once.")
            seen[clip.key] = path
            if clip.latents.shape[0] < min_frames:
                continue
            # The clip's own meta (prompt, seed, run_id, ground truth) travels with it.
            write(clip.key, clip.latents, clip.meta)
            yield clip
