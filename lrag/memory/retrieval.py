"""Pure retrieval rules: candidate set, recency guard, cosine top-K.

The memory pool holds frames evicted from the KV window in chronological order, so
pool index ``i`` is global frame ``sink + i``. These functions follow the reference
rule exactly (README of ``tests/fixtures/wan_reference``, "Retrieval rule").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cosine_similarity", "cosine_topk", "mmr_topk", "num_eligible", "sequence_descriptors", "unit_concat"]

_EPS = 1e-8  # the reference adds it to the norms (not clamps), so keep that form


def num_eligible(num_evicted: int, recent_exclude: int) -> int:
    """Pool entries that may be retrieved: all but the ``recent_exclude`` newest.

    The newest evicted frames sit right next to the local window, so retrieving
    them adds little; the reference excludes them.

    >>> num_eligible(5, 1), num_eligible(1, 3)
    (4, 0)
    """
    if num_evicted < 0 or recent_exclude < 0:
        raise ValueError(f"num_evicted ({num_evicted}) and recent_exclude ({recent_exclude}) must be >= 0")
    return max(num_evicted - recent_exclude, 0)


def cosine_similarity(query: Tensor, candidates: Tensor) -> Tensor:
    """Reference cosine ``(q/(|q|+1e-8)) . (c/(|c|+1e-8))``.

    Args:
        query: ``[B, D]``.
        candidates: ``[B, N, D]``.

    Returns:
        ``[B, N]`` similarities.
    """
    if query.ndim != 2 or candidates.ndim != 3 or candidates.shape[::2] != query.shape:
        raise ValueError(
            f"cosine_similarity: need query [B, D] and candidates [B, N, D], got "
            f"{tuple(query.shape)} and {tuple(candidates.shape)}"
        )
    q = query.unsqueeze(1)
    q = q / (q.norm(dim=-1, keepdim=True) + _EPS)
    c = candidates / (candidates.norm(dim=-1, keepdim=True) + _EPS)
    return torch.bmm(c, q.transpose(1, 2)).squeeze(-1)


def cosine_topk(query: Tensor, candidates: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` candidates by cosine similarity, most similar first.

    Ties are broken towards the smaller index, i.e. the older frame (a stable
    descending sort), so the result never depends on the backend's top-k.

    Args:
        query: ``[B, D]`` descriptor of the query frame.
        candidates: ``[B, N, D]`` descriptors of the candidates, in pool order.
        k: Number to keep; must satisfy ``1 <= k <= N``.

    Returns:
        ``(scores [B, k], indices [B, k])`` with indices into ``candidates``.
    """
    n = candidates.shape[1] if candidates.ndim == 3 else -1
    if not 1 <= k <= n:
        raise ValueError(f"cosine_topk: k must be in [1, N={n}], got {k}")
    sims = cosine_similarity(query, candidates)
    scores, indices = torch.sort(sims, dim=-1, descending=True, stable=True)
    return scores[:, :k], indices[:, :k]


def mmr_topk(query: Tensor, candidates: Tensor, k: int, diversity: float) -> tuple[Tensor, Tensor]:
    """Top-``k`` by maximal marginal relevance: relevant to the query, unlike those already picked.

    Greedy: the next pick maximises ``(1 - diversity) * cos(q, c) - diversity * max_s cos(c, s)``
    over the picked set s. ``diversity = 0`` is :func:`cosine_topk` exactly; with K > 1 and a
    slowly moving camera, plain top-K tends to return K neighbouring frames of one moment, and
    MMR spends the later slots on other candidates instead.

    Args:
        query: ``[B, D]``.
        candidates: ``[B, N, D]``, in pool order.
        k: Number to keep, ``1 <= k <= N``.
        diversity: Weight of the redundancy penalty, in ``[0, 1]``.

    Returns:
        ``(scores [B, k], indices [B, k])``: each pick's cosine to the query (not the MMR value),
        in pick order. Ties go to the smaller index (the older frame).
    """
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"mmr_topk: diversity must be in [0, 1], got {diversity}")
    if diversity == 0.0:
        return cosine_topk(query, candidates, k)
    n = candidates.shape[1] if candidates.ndim == 3 else -1
    if not 1 <= k <= n:
        raise ValueError(f"mmr_topk: k must be in [1, N={n}], got {k}")
    rel = cosine_similarity(query, candidates)  # (B, N)
    c = candidates / (candidates.norm(dim=-1, keepdim=True) + _EPS)
    pair = torch.bmm(c, c.transpose(1, 2))  # (B, N, N)
    redundancy = torch.full_like(rel, float("-inf"))
    taken = torch.zeros_like(rel, dtype=torch.bool)
    picks = []
    for _ in range(k):
        penalty = torch.where(torch.isinf(redundancy), torch.zeros_like(rel), redundancy)
        score = ((1.0 - diversity) * rel - diversity * penalty).masked_fill(taken, float("-inf"))
        # argmax returns the first maximum, i.e. the older frame on ties
        pick = score.argmax(dim=-1)  # (B,)
        picks.append(pick)
        taken.scatter_(1, pick[:, None], True)
        redundancy = torch.maximum(redundancy, pair.gather(1, pick[:, None, None].expand(-1, 1, n)).squeeze(1))
    indices = torch.stack(picks, dim=1)
    return rel.gather(1, indices), indices


def unit_concat(parts: list[Tensor], weights: list[float]) -> Tensor:
    """Concatenate L2-normalised ``parts`` (last dim), each scaled by the square root of its weight.

    With weights summing to 1 the result is a unit vector, and the dot product of two such vectors
    is the weighted sum of the parts' cosines: one cosine top-K then ranks by a mixed score.
    """
    return torch.cat([math.sqrt(w) * F.normalize(p, dim=-1) for p, w in zip(parts, weights, strict=True)], dim=-1)


def sequence_descriptors(per_frame: list[Tensor], frames: list[int], length: int) -> Tensor:
    """Each frame's descriptor followed by its ``length - 1`` predecessors', as one vector.

    A :func:`unit_concat` with equal weights, so the cosine of two of them is the mean cosine of
    the aligned frames: sequence matching (as in SeqSLAM), which asks that a candidate's recent
    past also resembles the query's. Predecessors before frame 0 repeat frame 0.

    Args:
        per_frame: ``[B, D]`` descriptor of every frame so far, indexed by frame.
        frames: The frames to describe.
        length: Frames per sequence (1 = the frame alone, normalised).

    Returns:
        ``[B, len(frames), length * D]``.
    """
    parts = [torch.stack([per_frame[max(f - j, 0)] for f in frames], dim=1) for j in range(length)]
    return unit_concat(parts, [1.0 / length] * length)
