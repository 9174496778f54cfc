"""Ground-truth ("oracle") retrieval: frames chosen by camera-path overlap, not by descriptors.

:class:`GroundTruthMemory` serves two jobs: memory exposure while a small backbone trains
(:class:`lrag.modules.backbone_fit.BackboneFitModule`, some slots random) and the
pose/field-of-view upper bound of ``lrag eval`` (every slot the best overlap).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lrag.memory.bank import RetrievalMemory, RetrievalRecord

__all__ = ["GroundTruthMemory"]


class GroundTruthMemory(RetrievalMemory):
    """A :class:`RetrievalMemory` whose selection comes from the camera path, not descriptors.

    Used for memory exposure in training (``revisit_fraction < 1``: some slots random) and as
    the pose/field-of-view *oracle* in evaluation (``revisit_fraction = 1``). A candidate's
    relevance is its best viewport IoU with any frame of the block being generated.

    Args:
        memory_size: K.
        recent_exclude: R, newest evicted frames that are never candidates.
        frames_per_block: Frames of the block a retrieval serves.
        frame_hw: ``(height, width)`` of a viewport in map cells (the latent frame size).
        revisit_fraction: Chance per slot of taking the next most-overlapping frame instead
            of a random eligible one.
        generator: Random source for the random slots (seeded for reproducible training).
        **kwargs: Passed to :class:`RetrievalMemory` (``descriptor``, ``kv_tier``, ...).
    """

    def __init__(self, memory_size: int, recent_exclude: int, frames_per_block: int,
                 frame_hw: tuple[int, int], revisit_fraction: float = 1.0,
                 generator: torch.Generator | None = None, **kwargs: Any) -> None:
        super().__init__(memory_size, recent_exclude, **kwargs)
        if not 0.0 <= revisit_fraction <= 1.0:
            raise ValueError(f"GroundTruthMemory.revisit_fraction={revisit_fraction} must be in [0, 1].")
        self.frames_per_block, self.frame_hw = frames_per_block, tuple(frame_hw)
        self.revisit_fraction, self.generator = revisit_fraction, generator
        self.iou: Tensor | None = None

    def set_positions(self, positions: Tensor) -> None:
        """Viewport positions ``[B, F, 2]`` (x, y) of every global frame; NaN = no place (blank).

        The IoU matrix is built on the positions' device (no host round trip).
        """
        h, w = self.frame_hw
        p = positions.to(torch.float64)
        ix = (w - (p[:, :, None, 0] - p[:, None, :, 0]).abs()).clamp(min=0)
        iy = (h - (p[:, :, None, 1] - p[:, None, :, 1]).abs()).clamp(min=0)
        inter = ix * iy
        self.iou = (inter / (2 * h * w - inter)).float().nan_to_num(0.0)  # (B, F, F)

    def _rand(self, *shape: int) -> Tensor:
        gen = self.generator
        if gen is not None and gen.device != self.iou.device:
            raise ValueError(f"GroundTruthMemory.generator is on {gen.device} but positions are on "
                             f"{self.iou.device}; pass a generator of the positions' device.")
        return torch.rand(shape, generator=gen, device=self.iou.device)

    def _pick(self, best: Tensor, k: int) -> Tensor:
        """Slot-by-slot choice over candidates ``best [B, E]`` -> indices ``[B, k]``, batched."""
        if self.revisit_fraction >= 1.0:  # oracle: best overlaps first, ties by age
            return torch.sort(best, dim=1, descending=True, stable=True).indices[:, :k]
        b, e = best.shape
        u, r = self._rand(b, k), self._rand(b, k, e)
        taken = torch.zeros(b, e, dtype=torch.bool, device=best.device)
        picks = []
        for j in range(k):
            rel = best.masked_fill(taken, -1.0)
            top = rel.argmax(dim=1)  # first maximum: oldest among equal overlaps
            revisit = (rel.gather(1, top[:, None])[:, 0] > 0) & (u[:, j] < self.revisit_fraction)
            pick = torch.where(revisit, top, r[:, j].masked_fill(taken, -1.0).argmax(dim=1))
            taken[torch.arange(b, device=best.device), pick] = True
            picks.append(pick)
        return torch.stack(picks, dim=1)

    def retrieve(self, query_frame: int) -> RetrievalRecord | None:  # noqa: D102
        if self.memory_size == 0:
            return None
        if self.iou is None:
            raise RuntimeError("GroundTruthMemory: call set_positions() before sampling.")
        eligible = self._pool_frames[: self._num_eligible()]
        if not eligible:
            return None
        cand = torch.tensor(eligible, dtype=torch.long, device=self.iou.device)
        block = self.iou[:, query_frame : min(query_frame + self.frames_per_block, self.iou.shape[1])]
        best = block.index_select(2, cand).amax(dim=1)  # (B, E): relevance of each candidate
        idx = self._pick(best, min(self.memory_size, len(eligible)))
        record = RetrievalRecord(query_frame, cand[idx], best.gather(1, idx))
        self.records.append(record)
        return record
