"""Revisit pairs for the embedder's contrastive term, from a clip's ground-truth camera path.

A training window is ``seq_len`` consecutive frames. For each of them we draw one *partner*
frame outside the temporal neighbourhood (``|partner - t| >= min_gap``), preferring a frame
that shows the same place (viewport IoU above the clip's threshold): a revisit. The masks
over the ``2 * seq_len`` frames (window, then partners) say which pairs are positives (same
place, at least ``min_gap`` apart: what retrieval must find) and which are negatives
(different places, including temporally adjacent frames after the camera moved on: the hard
negatives). Same place a moment apart is neither: the WTD term wants such neighbours apart,
and the contrastive term should not fight it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lrag.data.ground_truth import overlap_matrix


def clip_truth(meta: dict[str, Any], num_frames: int, source: str) -> dict[str, Any]:
    """The ground truth of a clip (``meta["ground_truth"]`` of a predict run, or the world meta itself).

    Raises:
        ValueError: The clip carries no camera path, or one of a different length than its latents.
    """
    truth = meta.get("ground_truth", meta)
    if not isinstance(truth, dict) or "positions" not in truth or "world" not in truth:
        raise ValueError(f"{source}: clip has no ground truth (positions); revisit_pairs needs shards "
                         "of procedural-world runs (`lrag predict` on world seeds, or `lrag data synth --kind world`)")
    if len(truth["positions"]) != num_frames:
        raise ValueError(f"{source}: ground truth has {len(truth['positions'])} positions for "
                         f"{num_frames} latent frames")
    return truth


def revisit_partners(truth: dict[str, Any], start: int, seq_len: int, min_gap: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Partner frames of window ``[start, start + seq_len)`` and the pair masks.

    Args:
        truth: Ground truth with ``positions [T, 2]``, ``world.frame_height/width`` and
            ``overlap.iou_threshold``.
        start: First frame of the window.
        seq_len: Window length (frames past the clip's end repeat its last frame).
        min_gap: Fewest frames between a positive pair (use the attention window: retrieval
            only matters for what the window has forgotten).
        rng: Random source (seeded by the caller, so windows are reproducible).

    Returns:
        ``(partners [seq_len] int64, positives [2S, 2S] bool, negatives [2S, 2S] bool)``.
    """
    pos = np.asarray(truth["positions"], dtype=np.float64)
    n = pos.shape[0]
    h, w = int(truth["world"]["frame_height"]), int(truth["world"]["frame_width"])
    thr = float(truth["overlap"]["iou_threshold"])
    iou = overlap_matrix(pos, h, w)  # (T, T)
    window = np.minimum(np.arange(start, start + seq_len), n - 1)
    frames = np.arange(n)
    partners = np.empty(seq_len, dtype=np.int64)
    for i, t in enumerate(window):
        far = np.abs(frames - t) >= min_gap
        same = far & (iou[t] >= thr)
        pool = frames[same] if same.any() else frames[far] if far.any() else frames
        partners[i] = rng.choice(pool)
    idx = np.concatenate([window, partners])
    sub = iou[np.ix_(idx, idx)] >= thr
    far = np.abs(idx[:, None] - idx[None, :]) >= min_gap
    return partners, sub & far, ~sub
