"""torchmetrics Metrics that measure what retrieval is for: remembering places.

Each metric keeps summable states (``add_state(..., dist_reduce_fx="sum")``), so it works
unchanged under DDP; the classes are thin wrappers over :mod:`lrag.eval.functional`.
Ground truth (revisit pairs, landmark sightings, relevant frames) comes from
:mod:`lrag.data.ground_truth`; see ``docs/world.md`` for the definitions.

Latents are ``[B, F, C, H, W]`` (one video ``[F, C, H, W]`` is accepted too). ``compute()``
returns a dict whose scalar keys match :data:`lrag.eval.report.COLUMNS`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from lrag.eval.functional import (
    landmark_distances,
    linear_slope,
    retrieval_scores,
    revisit_errors,
    window_stats,
)

__all__ = [
    "LandmarkIdentityDrift",
    "QualityDrift",
    "RetrievalPrecisionRecall",
    "RevisitConsistency",
]


# ---------------------------------------------------------------- input handling


def _as_videos(latents: Tensor, name: str) -> Tensor:
    """``[F,C,H,W]`` or ``[B,F,C,H,W]`` -> ``[B,F,C,H,W]`` float."""
    if latents.ndim == 4:
        latents = latents.unsqueeze(0)
    if latents.ndim != 5:
        raise ValueError(f"{name}: latents must be [B, F, C, H, W] or [F, C, H, W], got {tuple(latents.shape)}.")
    return latents.float()


def _depth(x: Any) -> int:
    """Nesting depth of a tensor or (possibly empty) nested sequence of numbers."""
    if isinstance(x, Tensor):
        return x.ndim
    if isinstance(x, (list, tuple)):
        return 1 + (_depth(x[0]) if len(x) else 1)
    return 0


def _rows(table: Any, width: int, name: str) -> Tensor:
    """A table of rows with at least ``width`` numbers (tensor or list of tuples) as int64 ``[N, width]``."""
    if not isinstance(table, Tensor):
        if len(table) == 0:
            return torch.zeros(0, width, dtype=torch.long)
        table = torch.as_tensor([list(row)[:width] for row in table], dtype=torch.float64)
    if table.ndim != 2 or table.shape[1] < width:
        raise ValueError(f"{name}: expected rows of at least {width} numbers, got shape {tuple(table.shape)}.")
    return table[:, :width].round().long().cpu()


def _per_video(table: Any, batch: int, width: int, name: str) -> list[Tensor]:
    """One table shared by all videos (depth 2) or one table per video (depth 3)."""
    if _depth(table) == 3:
        if len(table) != batch:
            raise ValueError(f"{name}: got {len(table)} per-video tables for a batch of {batch} videos.")
        return [_rows(t, width, name) for t in table]
    rows = _rows(table, width, name)
    return [rows] * batch


# ---------------------------------------------------------------- Metrics


class RevisitConsistency(Metric):
    """How well a revisited place matches what was generated there before (lower is better).

    For each ground-truth revisit pair, the MSE (and mean per-cell cosine) between the region
    both viewports share, aligned by their offset. ``frame_variance`` (mean per-channel spatial
    variance of all frames seen) is reported alongside, and ``revisit_relative`` = MSE /
    (2 · variance): about 1 for unrelated frames, so a blurrier model cannot look consistent.

    Example:
        >>> import torch
        >>> video = torch.arange(1.0, 17.0).reshape(4, 1, 2, 2)
        >>> video[3] = video[0]
        >>> metric = RevisitConsistency()
        >>> metric.update(video, [(0, 3, 0, 0), (0, 1, 0, 0)])
        >>> {k: round(float(v), 3) for k, v in metric.compute().items()}
        {'revisit_inconsistency': 8.0, 'revisit_cosine': 1.0, 'frame_variance': 1.25, 'revisit_relative': 3.2}
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("sum_mse", "sum_cosine", "num_pairs", "sum_variance", "num_frames"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, latents: Tensor, pairs: Any) -> None:
        """Add videos and their revisit pairs.

        Args:
            latents: ``[B, F, C, H, W]`` or ``[F, C, H, W]``.
            pairs: Rows ``(earlier, later, dx, dy, ...)`` (e.g. :class:`~lrag.data.ground_truth.RevisitPair`)
                shared by all videos, or one such table per video.
        """
        videos = _as_videos(latents, "RevisitConsistency")
        for video, table in zip(videos, _per_video(pairs, len(videos), 4, "RevisitConsistency pairs")):
            mse, cos = revisit_errors(video, table)
            self.sum_mse += mse.double().sum()
            self.sum_cosine += cos.double().sum()
            self.num_pairs += mse.numel()
            self.sum_variance += video.var(dim=(-2, -1), unbiased=False).mean(dim=1).double().sum()
            self.num_frames += video.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """``revisit_inconsistency`` (MSE), ``revisit_cosine``, ``frame_variance``, ``revisit_relative``."""
        mse = self.sum_mse / self.num_pairs
        variance = self.sum_variance / self.num_frames
        return {"revisit_inconsistency": mse.float(), "revisit_cosine": (self.sum_cosine / self.num_pairs).float(),
                "frame_variance": variance.float(), "revisit_relative": (mse / (2 * variance)).float()}


class LandmarkIdentityDrift(Metric):
    """How far a landmark's generated appearance drifts from its reference (lower is better).

    Args:
        radius: Footprint radius in cells (the world's ``landmark_sigma``).
        reference: ``"first"`` sighting in the video, or the identity ``"code"``.
        distance: ``"l2"`` (RMS over channels) or ``"cosine"`` (1 - cosine).
        bin_frames: Width in frames of the time bins of ``landmark_drift_by_time``.
        max_frames: Frames covered by the bins; later sightings fall into the last bin.

    Example:
        >>> import torch
        >>> video = torch.zeros(3, 2, 3, 3)
        >>> video[2, :, 1, 1] = torch.tensor([3.0, 4.0])
        >>> metric = LandmarkIdentityDrift(radius=0.5, bin_frames=2, max_frames=4)
        >>> metric.update(video, [(0, 7, 1, 1), (1, 7, 1, 1), (2, 7, 1, 1)])
        >>> out = metric.compute()
        >>> round(float(out["landmark_drift"]), 4), out["landmark_drift_by_time"].tolist()
        (1.7678, [0.0, 3.535533905029297])
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, radius: float = 1.0, reference: str = "first", distance: str = "l2",
                 bin_frames: int = 12, max_frames: int = 480, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if reference not in ("first", "code") or distance not in ("l2", "cosine"):
            raise ValueError(f"LandmarkIdentityDrift: reference={reference!r} must be 'first' or 'code', "
                             f"distance={distance!r} must be 'l2' or 'cosine'.")
        if bin_frames < 1 or max_frames < bin_frames:
            raise ValueError(f"LandmarkIdentityDrift: need 1 <= bin_frames ({bin_frames}) <= max_frames ({max_frames}).")
        self.radius, self.reference, self.distance, self.bin_frames = radius, reference, distance, bin_frames
        bins = math.ceil(max_frames / bin_frames)
        self.add_state("sum_by_bin", default=torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count_by_bin", default=torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, latents: Tensor, sightings: Any, codes: Tensor | None = None) -> None:
        """Add videos and their landmark sightings.

        Args:
            latents: ``[B, F, C, H, W]`` or ``[F, C, H, W]``.
            sightings: Rows ``(frame, landmark, row, col)`` (e.g. from
                :func:`~lrag.data.ground_truth.landmark_sightings`), shared or one table per video.
            codes: ``[L, C]`` identity codes, for ``reference="code"``.
        """
        videos = _as_videos(latents, "LandmarkIdentityDrift")
        for video, table in zip(videos, _per_video(sightings, len(videos), 4, "LandmarkIdentityDrift sightings")):
            dist, frames = landmark_distances(video, table, self.radius, self.reference, codes, self.distance)
            bins = (frames // self.bin_frames).clamp(max=self.sum_by_bin.numel() - 1)
            self.sum_by_bin.index_add_(0, bins, dist.double())
            self.count_by_bin.index_add_(0, bins, torch.ones_like(dist, dtype=torch.float64))

    def compute(self) -> dict[str, Tensor]:
        """``landmark_drift`` (mean over sightings) and ``landmark_drift_by_time`` (per bin, NaN if empty)."""
        by_time = self.sum_by_bin / self.count_by_bin
        return {"landmark_drift": (self.sum_by_bin.sum() / self.count_by_bin.sum()).float(),
                "landmark_drift_by_time": by_time.float()}


class QualityDrift(Metric):
    """Per time window, how far frame statistics stray from the world's own, and the trend.

    For each window of ``window`` frames: per-channel mean and std of the generated latents;
    ``quality_mean_error`` / ``quality_std_error`` = mean over channels of their absolute
    difference from the reference; ``quality_error`` = their sum; ``quality_drift_slope`` =
    least-squares slope of ``quality_error`` against the window's centre frame (per frame).

    Args:
        channels: Latent channels.
        window: Frames per window.
        max_frames: Frames covered; later frames fall into the last window.
        reference_mean: Per-channel reference mean (default 0: normalised latents).
        reference_std: Per-channel reference std (default 1).

    Example:
        >>> import torch
        >>> ramp = torch.arange(6.0).reshape(1, 6, 1, 1, 1).expand(1, 6, 2, 1, 1)
        >>> metric = QualityDrift(channels=2, window=2, max_frames=6, reference_std=[0.5, 0.5])
        >>> metric.update(0.1 * ramp)
        >>> out = metric.compute()
        >>> [round(v, 3) for v in out["quality_mean_error"].tolist()], round(float(out["quality_drift_slope"]), 3)
        ([0.05, 0.25, 0.45], 0.1)
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, channels: int = 16, window: int = 12, max_frames: int = 480,
                 reference_mean: Sequence[float] | None = None, reference_std: Sequence[float] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if window < 1 or max_frames < window:
            raise ValueError(f"QualityDrift: need 1 <= window ({window}) <= max_frames ({max_frames}).")
        for name, ref in (("reference_mean", reference_mean), ("reference_std", reference_std)):
            if ref is not None and len(ref) != channels:
                raise ValueError(f"QualityDrift: {name} has {len(ref)} values for {channels} channels.")
        self.window, self.channels = window, channels
        mean = torch.zeros(channels) if reference_mean is None else torch.as_tensor(reference_mean)
        std = torch.ones(channels) if reference_std is None else torch.as_tensor(reference_std)
        self.register_buffer("reference_mean", mean.double(), persistent=False)
        self.register_buffer("reference_std", std.double(), persistent=False)
        windows = math.ceil(max_frames / window)
        for name in ("total", "total_sq"):
            self.add_state(name, default=torch.zeros(windows, channels, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(windows, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, latents: Tensor, start_frame: int = 0) -> None:
        """Add latents ``[B, F, C, H, W]`` (or ``[F, C, H, W]``) whose first frame is ``start_frame``."""
        videos = _as_videos(latents, "QualityDrift").double()
        b, f, c, h, w = videos.shape
        if c != self.channels:
            raise ValueError(f"QualityDrift: latents have {c} channels, the metric was built for {self.channels}.")
        frames = torch.arange(start_frame, start_frame + f, device=videos.device)
        idx = (frames // self.window).clamp(max=self.count.numel() - 1)
        self.total.index_add_(0, idx, videos.sum(dim=(0, 3, 4)))
        self.total_sq.index_add_(0, idx, (videos**2).sum(dim=(0, 3, 4)))
        self.count.index_add_(0, idx, torch.full((f,), float(b * h * w), dtype=torch.float64, device=videos.device))

    def compute(self) -> dict[str, Tensor]:
        """Per-window errors ``[W]`` (NaN where empty) and ``quality_drift_slope`` (error per frame)."""
        mean, std = window_stats(self.total, self.total_sq, self.count)
        mean_err = (mean - self.reference_mean).abs().mean(dim=1)
        std_err = (std - self.reference_std).abs().mean(dim=1)
        error = mean_err + std_err
        centres = torch.arange(error.numel(), device=error.device) * self.window + (self.window - 1) / 2
        return {"quality_drift_slope": linear_slope(centres, error),
                "quality_mean_slope": linear_slope(centres, mean_err),
                "quality_std_slope": linear_slope(centres, std_err),
                "quality_error": error.float(), "quality_mean_error": mean_err.float(),
                "quality_std_error": std_err.float()}


class RetrievalPrecisionRecall(Metric):
    """Precision@K and recall@K of retrieved frames against ground-truth relevant frames.

    Relevant frames of a block are the memory's eligible frames whose viewport overlaps the
    query's (see :func:`~lrag.data.ground_truth.relevant_frames`). Recall divides by
    ``min(k, #relevant)`` so a perfect top-k retriever scores 1.

    Args:
        k: Cut-off (the memory's ``memory_size``).

    Example:
        >>> metric = RetrievalPrecisionRecall(k=2)
        >>> metric.update([[3, 5], [1, 2]], [{3, 5, 9}, {2, 8}])
        >>> {k: round(float(v), 3) for k, v in metric.compute().items()}
        {'retrieval_precision': 0.75, 'retrieval_recall': 0.75}
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, k: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"RetrievalPrecisionRecall: k={k} must be >= 1.")
        self.k = k
        for name in ("sum_precision", "num_precision", "sum_recall", "num_recall"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, retrieved: Sequence[Sequence[int]] | Tensor, relevant: Sequence[Iterable[int]]) -> None:
        """Add queries: ``retrieved`` ``[Q, K]`` frame indices (negative = padding), ``relevant`` per query."""
        precision, recall = retrieval_scores(retrieved, relevant, self.k)
        self.sum_precision += precision.sum().to(self.sum_precision)
        self.num_precision += precision.numel()
        self.sum_recall += recall.sum().to(self.sum_recall)
        self.num_recall += recall.numel()

    def compute(self) -> dict[str, Tensor]:
        """``retrieval_precision`` and ``retrieval_recall`` averaged over queries."""
        return {"retrieval_precision": (self.sum_precision / self.num_precision).float(),
                "retrieval_recall": (self.sum_recall / self.num_recall).float()}
