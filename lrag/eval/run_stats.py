"""Consistency-over-time numbers of one generated video that need no ground truth.

Used by ``lrag eval run RUN_ID`` (:mod:`lrag.eval.run_report`) on any stored run, real
backbones included. Latents are ``[F, C, H, W]`` (one video), descriptor embeddings ``[F, D]``.
Pure tensor functions; reading the run is the report module's job.

Expected values, for checking: a video that repeats one frame has flicker 0, self-similarity 1
at every gap and no drift; a video of i.i.d. frames with per-value variance ``σ²`` has flicker
``2σ²`` (the MSE of two independent draws) and, for zero-mean frames, self-similarity ≈ 0.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lrag.eval.functional import linear_slope

__all__ = ["flicker", "frame_stats", "retrieval_summary", "self_similarity_by_gap", "video_summary"]


def _video(latents: Tensor) -> Tensor:
    if latents.ndim != 4 or latents.shape[0] == 0:
        raise ValueError(f"run stats: latents must be one non-empty video [F, C, H, W], got {tuple(latents.shape)}.")
    return latents.double()


def flicker(latents: Tensor) -> Tensor:
    """Mean squared change from each frame to the next, ``[F - 1]`` (MSE over ``C, H, W``)."""
    x = _video(latents)
    return ((x[1:] - x[:-1]) ** 2).mean(dim=(1, 2, 3))


def frame_stats(latents: Tensor) -> tuple[Tensor, Tensor]:
    """Per-frame mean and (population) std over ``C, H, W``: ``([F], [F])``."""
    x = _video(latents).flatten(1)  # (F, C*H*W)
    return x.mean(dim=1), x.std(dim=1, unbiased=False)


def self_similarity_by_gap(embeddings: Tensor, max_gap: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mean cosine of the descriptors of frames ``Δt`` apart, for ``Δt = 1 .. max_gap``.

    Args:
        embeddings: ``[F, D]`` in frame order.
        max_gap: Largest gap (clipped to ``F - 1``).

    Returns:
        ``(gaps [G], mean cosine [G], frame pairs per gap [G])``.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"self-similarity: embeddings must be [F, D], got {tuple(embeddings.shape)}.")
    e = F.normalize(embeddings.double(), dim=1, eps=1e-12)
    sim = e @ e.T  # (F, F)
    frames = e.shape[0]
    gaps = torch.arange(1, min(max_gap, frames - 1) + 1)
    means = [torch.diagonal(sim, offset=int(g)).mean() for g in gaps]
    mean = torch.stack(means) if means else torch.zeros(0, dtype=torch.float64)
    return gaps, mean, frames - gaps


def _window(frames: int) -> int:
    # An eighth of the video (at least one frame) averages away frame-to-frame noise at the ends.
    return max(1, frames // 8)


def video_summary(latents: Tensor, blocks: Tensor | None = None) -> dict[str, float]:
    """Scalar flicker and drift numbers of one video.

    Args:
        latents: ``[F, C, H, W]``.
        blocks: ``[F]`` block index per frame; adds flicker within a block vs across a block
            boundary (where autoregressive generation can seam).

    Returns:
        ``flicker`` (mean of :func:`flicker`), ``flicker_within_block``,
        ``flicker_across_blocks``, ``frame_mean_slope`` / ``frame_std_slope`` (least-squares
        change per frame), ``frame_std_first`` / ``frame_std_last`` (mean std of the first /
        last eighth) and ``frame_std_change_pct``.
    """
    flick = flicker(latents)
    mean, std = frame_stats(latents)
    t = torch.arange(latents.shape[0], dtype=torch.float64)
    w = _window(latents.shape[0])
    first, last = float(std[:w].mean()), float(std[-w:].mean())
    out = {"frames": float(latents.shape[0]),
           "flicker": float(flick.mean()) if flick.numel() else math.nan,
           "frame_mean_slope": float(linear_slope(t, mean)), "frame_std_slope": float(linear_slope(t, std)),
           "frame_std_first": first, "frame_std_last": last,
           "frame_std_change_pct": 100.0 * (last - first) / first if first > 0 else math.nan}
    if blocks is not None:
        if blocks.shape != (latents.shape[0],):
            raise ValueError(f"run stats: {tuple(blocks.shape)} block indices for {latents.shape[0]} frames.")
        seam = blocks[1:] != blocks[:-1]
        out["flicker_within_block"] = float(flick[~seam].mean()) if (~seam).any() else math.nan
        out["flicker_across_blocks"] = float(flick[seam].mean()) if seam.any() else math.nan
    return out


def retrieval_summary(query_frames: Sequence[int], retrieved: Sequence[int], scores: Sequence[float],
                      ranks: Sequence[int]) -> dict[str, float]:
    """What retrieval selected: age of the retrieved frames (query − retrieved) and scores.

    One entry per retrieved frame (the store's ``retrievals`` rows). NaN values without rows.
    """
    q = torch.as_tensor(list(query_frames), dtype=torch.float64)
    r = torch.as_tensor(list(retrieved), dtype=torch.float64)
    s = torch.as_tensor(list(scores), dtype=torch.float64)
    rank = torch.as_tensor(list(ranks), dtype=torch.long)
    if not (len(q) == len(r) == len(s) == len(rank)):
        raise ValueError("retrieval summary: query, retrieved, score and rank columns differ in length.")
    if len(q) == 0:
        return {"retrievals": 0.0, "age_mean": math.nan, "age_median": math.nan, "age_min": math.nan,
                "age_max": math.nan, "score_mean": math.nan, "score_top_mean": math.nan,
                "distinct_frames": 0.0}
    age = q - r
    return {"retrievals": float(len(q)), "age_mean": float(age.mean()), "age_median": float(age.median()),
            "age_min": float(age.min()), "age_max": float(age.max()), "score_mean": float(s.mean()),
            "score_top_mean": float(s[rank == 0].mean()) if (rank == 0).any() else math.nan,
            "distinct_frames": float(len(set(r.long().tolist())))}
