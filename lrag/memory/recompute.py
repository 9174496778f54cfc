"""The ``recompute`` KV tier: retrieved frames' K/V rebuilt from their clean latents.

Nothing is stored per evicted frame. Each block, the frames that the previous block did not
retrieve are rebuilt in one batched forward by a hook that the sampler installs (each frame
attends only to itself, so this is an approximation of the K/V it had in its own window); the
frames that stay retrieved are kept on the device from the previous block.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch import Tensor

__all__ = ["RecomputeFn", "RecomputedKV"]

# (global frame indices) -> (per-layer K, per-layer V), each [B, n, tokens, heads, head_dim].
RecomputeFn = Callable[[list[int]], tuple[list[Tensor], list[Tensor]]]


class RecomputedKV:
    """The rebuild hook and the device cache of the frames the last block retrieved."""

    def __init__(self) -> None:
        self.fn: RecomputeFn | None = None
        self.rebuilt_frames = self.reused_frames = 0
        self.forget()

    def forget(self) -> None:
        """Drop the cached K/V (they depend on the prompt: call on a prompt switch)."""
        self._cache: dict[int, tuple[Tensor, Tensor]] = {}  # frame -> (layers, B, tokens, h, d) K, V

    def reset_counts(self) -> None:
        self.rebuilt_frames = self.reused_frames = 0

    def gather(self, rows: list[list[int]], device: torch.device | str) -> tuple[Tensor, Tensor]:
        """K and V ``[layers, B, k * tokens, heads, head_dim]`` of the frames ``rows`` (``[B][k]``)."""
        if self.fn is None:
            raise RuntimeError("kv_tier 'recompute' needs a hook: the sampler installs it via set_recompute()")
        wanted = {f for row in rows for f in row}  # a frame retrieved by several samples is built once
        new = sorted(wanted - self._cache.keys())
        if new:
            k_l, v_l = self.fn(new)  # per layer [B, n, tokens, h, d]
            for j, frame in enumerate(new):
                self._cache[frame] = (torch.stack([k[:, j] for k in k_l]), torch.stack([v[:, j] for v in v_l]))
        self.rebuilt_frames += len(new)
        self.reused_frames += len(wanted) - len(new)
        self._cache = {f: self._cache[f] for row in rows for f in row}  # this block's frames only
        ks = [torch.stack([self._cache[f][0][:, bi] for f in row], dim=1) for bi, row in enumerate(rows)]
        vs = [torch.stack([self._cache[f][1][:, bi] for f in row], dim=1) for bi, row in enumerate(rows)]
        k = rearrange(torch.stack(ks, dim=1), "l b k t h d -> l b (k t) h d").to(device)
        v = rearrange(torch.stack(vs, dim=1), "l b k t h d -> l b (k t) h d").to(device)
        return k, v
