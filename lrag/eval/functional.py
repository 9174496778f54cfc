"""Functional maths of :mod:`lrag.eval.metrics`: plain tensor functions, no state.

Definitions are in ``docs/world.md``. Frames are ``[F, C, H, W]``; ground-truth tables are
int64 ``[N, 4]`` rows as produced by :mod:`lrag.data.ground_truth`.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _overlap_slices(dx: int, dy: int, h: int, w: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices of the shared region in the earlier and the later frame (later = earlier + (dx, dy))."""
    earlier = (slice(max(0, dy), h + min(0, dy)), slice(max(0, dx), w + min(0, dx)))
    later = (slice(max(0, -dy), h + min(0, -dy)), slice(max(0, -dx), w + min(0, -dx)))
    return earlier, later


def revisit_errors(video: Tensor, pairs: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pair MSE and mean per-cell cosine between the regions two frames share.

    Args:
        video: ``[F, C, H, W]``.
        pairs: ``[P, 4]`` int rows ``(earlier, later, dx, dy)``; the later viewport is the
            earlier one shifted by ``(dx, dy)`` cells (x = column).

    Returns:
        ``(mse [P], cosine [P])``.
    """
    frames, _, h, w = video.shape
    mse, cos = [], []
    for i, j, dx, dy in pairs.tolist():
        if not (0 <= i < frames and 0 <= j < frames):
            raise ValueError(f"revisit pair ({i}, {j}) is outside a video of {frames} frames.")
        (ri, ci), (rj, cj) = _overlap_slices(dx, dy, h, w)
        a, b = video[i, :, ri, ci], video[j, :, rj, cj]
        if a.numel() == 0:
            raise ValueError(f"revisit pair ({i}, {j}) offset ({dx}, {dy}) shares no cell of a {h}x{w} frame.")
        mse.append(((a - b) ** 2).mean())
        cos.append(F.cosine_similarity(a, b, dim=0, eps=1e-8).mean())
    empty = video.new_zeros(0)
    return (torch.stack(mse), torch.stack(cos)) if mse else (empty, empty)


def landmark_distances(video: Tensor, sightings: Tensor, radius: float, reference: str = "first",
                       codes: Tensor | None = None, distance: str = "l2") -> tuple[Tensor, Tensor]:
    """Distance of each landmark sighting's appearance from its reference appearance.

    Appearance = mean latent vector over the cells within ``radius`` of the landmark centre.

    Args:
        video: ``[F, C, H, W]``.
        sightings: ``[S, 4]`` int rows ``(frame, landmark, row, col)``, frame-local centre.
        radius: Footprint radius in cells.
        reference: ``"first"`` (the landmark's first sighting in this video; that sighting is
            not scored) or ``"code"`` (its identity code, ``codes[landmark]``).
        codes: ``[L, C]`` identity codes, needed for ``reference="code"``.
        distance: ``"l2"`` (root-mean-square over channels) or ``"cosine"`` (1 - cosine).

    Returns:
        ``(distances [S'], frames [S'])`` of the scored sightings.
    """
    frames, _, h, w = video.shape
    rows, cols = torch.meshgrid(torch.arange(h, device=video.device), torch.arange(w, device=video.device),
                                indexing="ij")
    refs: dict[int, Tensor] = {}
    dists, times = [], []
    for f, lm, r, c in sorted(sightings.tolist()):
        if not 0 <= f < frames:
            raise ValueError(f"landmark sighting at frame {f} is outside a video of {frames} frames.")
        mask = (rows - r) ** 2 + (cols - c) ** 2 <= radius**2
        if not mask.any():
            raise ValueError(f"landmark {lm} at (row={r}, col={c}) has no cell inside a {h}x{w} frame.")
        look = video[f][:, mask].mean(dim=1)
        if reference == "code":
            if codes is None:
                raise ValueError("LandmarkIdentityDrift(reference='code') needs codes [L, C] in update().")
            ref = codes[lm].to(look)
        elif lm not in refs:
            refs[lm] = look
            continue
        else:
            ref = refs[lm]
        if distance == "cosine":
            dists.append(1 - F.cosine_similarity(look, ref, dim=0, eps=1e-8))
        else:
            dists.append(((look - ref) ** 2).mean().sqrt())
        times.append(f)
    if not dists:
        return video.new_zeros(0), torch.zeros(0, dtype=torch.long, device=video.device)
    return torch.stack(dists), torch.tensor(times, dtype=torch.long, device=video.device)


def window_stats(total: Tensor, total_sq: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (population) std ``[W, C]`` from summed values, squares and counts ``[W]``."""
    n = count.clamp(min=1).unsqueeze(-1)
    mean = total / n
    std = (total_sq / n - mean**2).clamp(min=0).sqrt()
    empty = (count == 0).unsqueeze(-1)
    return mean.masked_fill(empty, math.nan), std.masked_fill(empty, math.nan)


def linear_slope(x: Tensor, y: Tensor) -> Tensor:
    """Least-squares slope of ``y`` against ``x`` over finite points; NaN with fewer than two."""
    keep = torch.isfinite(y)
    x, y = x[keep].double(), y[keep].double()
    if x.numel() < 2:
        return torch.tensor(math.nan)
    xc = x - x.mean()
    return ((xc * (y - y.mean())).sum() / (xc**2).sum()).float()


def retrieval_scores(retrieved: Sequence[Sequence[int]] | Tensor, relevant: Sequence[Iterable[int]],
                     k: int) -> tuple[Tensor, Tensor]:
    """Precision@k and recall@k per query.

    Args:
        retrieved: Per query the retrieved frame indices, best first (``[Q, K]`` tensor or
            lists); negative entries are padding.
        relevant: Per query the ground-truth relevant frame indices.
        k: Cut-off.

    Returns:
        ``(precision [Q'], recall [Q''])``. Precision = hits / frames retrieved (at most k),
        over queries that retrieved something; recall = hits / min(k, #relevant), over
        queries with at least one relevant frame (so a perfect retriever scores 1).
    """
    if len(retrieved) != len(relevant):
        raise ValueError(f"retrieval: {len(retrieved)} retrieved lists but {len(relevant)} relevant lists.")
    precision, recall = [], []
    for got, truth in zip(retrieved, relevant):
        got_list = got.tolist() if isinstance(got, Tensor) else list(got)
        top = list(dict.fromkeys(int(g) for g in got_list[:k] if int(g) >= 0))
        truth = {int(t) for t in truth}
        hits = sum(g in truth for g in top)
        if top:
            precision.append(hits / len(top))
        if truth:
            recall.append(hits / min(k, len(truth)))
    return torch.tensor(precision, dtype=torch.float64), torch.tensor(recall, dtype=torch.float64)


def revisit_errors_by_gap(video: Tensor, pairs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean revisit MSE per gap ``Δt = later - earlier`` between the two views of a place.

    Kept per integer gap (not per bin) so that any later binning is exact: the pair-weighted
    mean of a bin is ``sum(mse * pairs) / sum(pairs)`` over its gaps.

    Args:
        video: ``[F, C, H, W]``.
        pairs: ``[P, 4]`` revisit pairs as in :func:`revisit_errors`.

    Returns:
        ``(gaps [G] int64 ascending, mean mse [G], pairs per gap [G] int64)``; empty without pairs.
    """
    if pairs.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, video.new_zeros(0), empty
    mse, _ = revisit_errors(video, pairs)
    gaps, inverse, counts = torch.unique((pairs[:, 1] - pairs[:, 0]).cpu(), return_inverse=True,
                                         return_counts=True)
    sums = torch.zeros(len(gaps), dtype=torch.float64).index_add_(0, inverse, mse.double().cpu())
    return gaps, (sums / counts).to(mse.dtype), counts
