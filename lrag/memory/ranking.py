"""How :class:`~lrag.memory.bank.RetrievalMemory` ranks its eligible pool against the newest frame.

One stage (cosine top-K, with maximal marginal relevance when ``diversity > 0``), a two-stage
search (shortlist by the descriptor, re-rank by the generator's keys), one stage on a fused score
of both, and sequence matching over the newest frames. The memory owns the per-frame descriptor
lists and the pool; a :class:`RankRule` only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lrag.memory.key_descriptor import fused_topk, shortlist_rerank
from lrag.memory.retrieval import mmr_topk, sequence_descriptors

__all__ = ["RankRule"]


@dataclass(frozen=True)
class RankRule:
    """The search knobs of ``RetrievalMemory`` (its docstring explains each), checked together.

    Attributes:
        descriptor: ``avg_pool``, ``ae`` or ``gen_keys``.
        memory_size: K (a shortlist must hold at least K).
        diversity: MMR weight, in ``[0, 1]``.
        rerank: Shortlist size of the two-stage search, or None.
        key_fusion: Weight of the generator keys' cosine in a fused score (0 = off).
        sequence: Frames matched per candidate (1 = single frames).
    """

    descriptor: str
    memory_size: int
    diversity: float = 0.0
    rerank: int | None = None
    key_fusion: float = 0.0
    sequence: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.diversity <= 1.0:
            raise ValueError(f"RetrievalMemory.diversity must be in [0, 1] (0 = plain top-K), got {self.diversity}")
        if self.rerank is not None and (self.descriptor == "gen_keys" or self.rerank < max(self.memory_size, 1)):
            raise ValueError(f"RetrievalMemory.rerank={self.rerank}: must be >= memory_size ({self.memory_size}) "
                             "and needs a first-stage descriptor other than gen_keys (or null: one stage).")
        if not 0.0 <= self.key_fusion <= 1.0 or (
                self.key_fusion and (self.descriptor == "gen_keys" or self.rerank is not None)):
            raise ValueError(f"RetrievalMemory.key_fusion={self.key_fusion}: use a weight in [0, 1] (0 = off), "
                             "with descriptor avg_pool or ae and without rerank.")
        if self.sequence < 1:
            raise ValueError(f"RetrievalMemory.sequence must be >= 1 (1 = match single frames), got {self.sequence}")

    @property
    def uses_keys(self) -> bool:
        """Whether ranking reads the generator's keys (so the sampler must capture them)."""
        return self.descriptor == "gen_keys" or self.rerank is not None or self.key_fusion > 0

    def rank(self, frames: list[int], k: int, descriptors: list[Tensor], key_desc: list[Tensor],
             key_query: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Scores and indices ``[B, k]`` into ``frames``, best first.

        Args:
            frames: The eligible pool's frame indices, in pool order.
            k: Frames to keep.
            descriptors: ``[B, D]`` per frame so far (the newest is the query).
            key_desc: Per frame the generator-key descriptor (empty unless :attr:`uses_keys`).
            key_query: Per frame the generator-key query side (same).
        """
        if self.descriptor == "gen_keys":
            return mmr_topk(self._query(key_query), self._stack(key_desc, frames), k, self.diversity)
        query, candidates = self._query(descriptors), self._stack(descriptors, frames)
        if self.rerank is None and not self.key_fusion:
            return mmr_topk(query, candidates, k, self.diversity)
        keys = torch.stack([key_desc[f] for f in frames], dim=1)
        if self.key_fusion:
            return fused_topk(query, candidates, key_query[-1], keys, k, self.key_fusion, self.diversity)
        return shortlist_rerank(query, candidates, key_query[-1], keys, k, self.rerank, self.diversity)

    def _stack(self, per_frame: list[Tensor], frames: list[int]) -> Tensor:
        """``[B, N, D]`` candidate descriptors of ``frames`` (sequences when ``sequence > 1``)."""
        if self.sequence == 1:
            return torch.stack([per_frame[f] for f in frames], dim=1)
        return sequence_descriptors(per_frame, frames, self.sequence)

    def _query(self, per_frame: list[Tensor]) -> Tensor:
        """``[B, D]`` descriptor of the newest frame (of its sequence when ``sequence > 1``)."""
        return per_frame[-1] if self.sequence == 1 else self._stack(per_frame, [len(per_frame) - 1])[:, 0]
