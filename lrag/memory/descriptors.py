"""The per-frame descriptors of one video: what retrieval compares.

:class:`FrameDescriptors` computes one descriptor per clean latent frame (``avg_pool``: the
spatial mean; ``ae``: the frame embedder's embedding; ``gen_keys``: the backbone's own pooled
keys, captured by the sampler) and keeps, beside them, the generator keys that re-ranking and
score fusion use. :class:`~lrag.memory.bank.RetrievalMemory` owns one and ranks its lists.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lrag.memory.key_descriptor import GeneratorKeys

__all__ = ["FrameDescriptors"]


class FrameDescriptors:
    """Descriptors of every frame of the current video, in frame order.

    Args:
        descriptor: ``"avg_pool"``, ``"ae"`` or ``"gen_keys"`` (see ``RetrievalMemory``).
        embedder_path: Embedder checkpoint for ``ae`` (loaded on first use).
        generator_keys: The sampler's key capture, when a rule needs the generator's keys.

    Attributes:
        frames: Per frame ``[B, D]``, the descriptor retrieval ranks by.
        keys: Per frame ``[B, D']`` pooled generator keys (``gen_keys``, re-ranking, fusion).
        key_queries: Per frame ``[B, D']`` their query side (keys or queries).
    """

    def __init__(self, descriptor: str, embedder_path: str | None, generator_keys: GeneratorKeys | None) -> None:
        self.descriptor = descriptor
        self.embedder_path = embedder_path
        self.generator_keys = generator_keys
        self.embedder: nn.Module | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the frames (start of a new video); the embedder stays loaded."""
        self.frames: list[Tensor] = []
        self.keys: list[Tensor] = []
        self.key_queries: list[Tensor] = []

    def __len__(self) -> int:
        return len(self.frames)

    def set_embedder(self, embedder: nn.Module) -> None:
        """Use an in-memory embedder (must have ``encode([N,C,H,W]) -> [N,D]``)."""
        self.embedder = embedder.eval()

    def _embedder(self) -> nn.Module:
        if self.embedder is None:
            if self.embedder_path is None:
                raise ValueError("RetrievalMemory(descriptor='ae') needs embedder_path (or set_embedder())")
            from lrag.checkpoints.embedder import load_embedder

            self.embedder = load_embedder(self.embedder_path).eval()
        return self.embedder

    @torch.no_grad()
    def describe(self, frames: Tensor) -> Tensor:
        """Compute and remember one descriptor per frame of ``frames [B, f, C, H, W]``; returns ``[B, f, D]``."""
        out = []
        keys = self.generator_keys.take(frames.shape[1]) if self.generator_keys is not None else None
        for j in range(frames.shape[1]):  # per frame, as the reference does (batch = B)
            frame = frames[:, j]
            if keys is not None:
                self.keys.append(keys[0][:, j].to(frame.device))
                self.key_queries.append(keys[1][:, j].to(frame.device))
            if self.descriptor == "gen_keys":
                desc = self.keys[-1]
            elif self.descriptor == "ae":
                emb = self._embedder()
                p = next(emb.parameters())
                desc = emb.encode(frame.to(device=p.device, dtype=p.dtype)).to(frame.device)
            else:
                desc = frame.mean(dim=(-2, -1))
            self.frames.append(desc)
            out.append(desc)
        return torch.stack(out, dim=1)

    def stacked(self) -> Tensor:
        """All descriptors so far, ``[B, frames, D]``."""
        return torch.stack(self.frames, dim=1)
