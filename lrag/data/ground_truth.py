"""Ground truth of procedural-world clips, computed from their JSON metadata alone.

Evaluation needs only a clip's ``meta`` (written by :mod:`lrag.data.world`): which frames
show the same place (viewport IoU), which frames a retrieval should have returned, and where
each landmark was seen. No world has to be rebuilt.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import numpy as np


class RevisitPair(NamedTuple):
    """Two frames that show the same place: ``later`` revisits what ``earlier`` showed.

    ``dx, dy`` = viewport offset of ``later`` relative to ``earlier`` in cells.
    """

    earlier: int
    later: int
    dx: int
    dy: int
    iou: float


def viewport_overlap(pos_a: Sequence[float], pos_b: Sequence[float], h: int, w: int) -> float:
    """IoU of two ``h × w`` viewports with top-left corners ``pos_a`` and ``pos_b`` (x, y)."""
    ix = max(0.0, w - abs(float(pos_a[0]) - float(pos_b[0])))
    iy = max(0.0, h - abs(float(pos_a[1]) - float(pos_b[1])))
    inter = ix * iy
    return inter / (2 * h * w - inter)


def overlap_matrix(positions: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pairwise viewport IoU ``[T, T]`` for positions ``[T, 2]`` (vectorised :func:`viewport_overlap`)."""
    pos = np.asarray(positions, dtype=np.float64)
    ix = np.clip(w - np.abs(pos[:, None, 0] - pos[None, :, 0]), 0, None)
    iy = np.clip(h - np.abs(pos[:, None, 1] - pos[None, :, 1]), 0, None)
    inter = ix * iy
    return inter / (2 * h * w - inter)


def _frame_size(meta: dict) -> tuple[int, int]:
    try:
        return int(meta["world"]["frame_height"]), int(meta["world"]["frame_width"])
    except KeyError as err:
        raise KeyError(f"clip meta lacks world.{err.args[0]}; it was not written by lrag.data.world") from err


def revisit_pairs(meta: dict, min_gap: int = 1, iou_threshold: float | None = None) -> list[RevisitPair]:
    """All frame pairs of a clip that show the same place at least ``min_gap`` frames apart.

    Args:
        meta: Clip metadata from :func:`generate_world_clip`.
        min_gap: Smallest ``later - earlier``; use more than the attention window to keep
            only the revisits that a sliding window cannot remember.
        iou_threshold: Viewport IoU needed; defaults to the one the clip was written with.

    Returns:
        Pairs sorted by ``(later, earlier)``.
    """
    h, w = _frame_size(meta)
    thr = meta["overlap"]["iou_threshold"] if iou_threshold is None else iou_threshold
    pos = np.asarray(meta["positions"], dtype=np.int64)
    iou = overlap_matrix(pos, h, w)
    later, earlier = np.nonzero(np.tril(iou >= thr, k=-max(min_gap, 1)))
    return [RevisitPair(int(i), int(j), int(pos[j, 0] - pos[i, 0]), int(pos[j, 1] - pos[i, 1]),
                        float(iou[j, i])) for j, i in zip(later, earlier)]


def relevant_frames(meta: dict, query_frames: Iterable[int], candidates: Iterable[int],
                    iou_threshold: float | None = None) -> list[int]:
    """Ground truth for retrieval: candidates whose viewport overlaps any query frame's.

    Args:
        meta: Clip metadata from :func:`generate_world_clip`.
        query_frames: Frames being generated (the next block) or the query frame.
        candidates: Frames the memory could return (evicted, minus the recency guard).
        iou_threshold: Viewport IoU needed; defaults to the clip's.
    """
    h, w = _frame_size(meta)
    thr = meta["overlap"]["iou_threshold"] if iou_threshold is None else iou_threshold
    pos = meta["positions"]
    queries = list(query_frames)
    return sorted(c for c in set(candidates)
                  if any(viewport_overlap(pos[c], pos[q], h, w) >= thr for q in queries))


class Sighting(NamedTuple):
    """A landmark seen in a frame; ``row, col`` = its centre in frame-local cells."""

    frame: int
    landmark: int
    row: int
    col: int


def landmark_sightings(meta: dict) -> list[Sighting]:
    """Every (frame, landmark) sighting of a clip, in frame order."""
    lms = {lm["id"]: lm for lm in meta["landmarks"]}
    out = []
    for t, (ids, (x, y)) in enumerate(zip(meta["visible_landmarks"], meta["positions"])):
        out += [Sighting(t, i, lms[i]["y"] - y, lms[i]["x"] - x) for i in ids]
    return out


def conditioning_arrays(meta: dict) -> dict[str, np.ndarray]:
    """Per-frame conditioning as arrays: ``camera [T,2]`` float32 (dx, dy), ``world_id [T]``, ``style_id [T]``."""
    cam = np.asarray(meta["camera"], dtype=np.float32)
    t = len(cam)
    return {"camera": cam, "world_id": np.full(t, meta["world"]["world_id"], dtype=np.int64),
            "style_id": np.full(t, meta["world"]["style_id"], dtype=np.int64)}
