"""Keys rotated once, when written: the RoPE cache of :class:`lrag.nets.kv_cache.KVCache`.

The ring buffer keeps keys un-roped (eviction hands them to the retrieval memory, which
ropes them at other positions). Without this cache every forward re-ropes the whole attended
window in float64, in every layer - five times per block for the same frames. With it, each
slot also holds its key rotated at the slot's current position, so a forward ropes only its
new tokens:

* ``"absolute"`` positions never change while a frame lives, so the roped keys shift along
  with the ring on eviction (a copy, like K and V);
* ``"slot"`` positions change when the ring shifts, so shifted slots are marked stale and the
  ones a forward attends are re-roped once, at its :meth:`KVCache.begin`, not per call;
* the retrieved frames' keys are roped once per :class:`~lrag.nets.kv_cache.MemoryKV` (one
  per block), at its first layer call.

RoPE is elementwise per token, so roping a slice gives the bits that roping the whole
concatenated window gives: the outputs are bit-identical to the uncached path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lrag.nets.attention import apply_rope

__all__ = ["RopedKeys"]


@dataclass
class RopedKeys:
    """Per layer, the ring's keys rotated at their slots' positions.

    Attributes:
        keys: Per layer ``[B, window * tokens, heads, head_dim]``, same layout as ``LayerKV.k``.
        tokens_per_frame: Tokens of one frame.
        valid: Per slot, whether ``keys`` holds that slot's key at its current position.
        rope: The rotation (:func:`~lrag.nets.attention.apply_rope` or its fused twin).
    """

    keys: list[Tensor]
    tokens_per_frame: int
    valid: list[bool]
    rope: Callable[[Tensor, Tensor], Tensor] = apply_rope
    _memory: object | None = field(default=None, repr=False)
    _memory_keys: list[Tensor | None] = field(default_factory=list, repr=False)

    @classmethod
    def like(cls, unroped: list[Tensor], tokens_per_frame: int,
             rope: Callable[[Tensor, Tensor], Tensor] = apply_rope) -> RopedKeys:
        """Empty roped buffers shaped like the ring's un-roped keys (all slots stale)."""
        slots = unroped[0].shape[1] // tokens_per_frame
        return cls([torch.zeros_like(k) for k in unroped], tokens_per_frame, [False] * slots, rope)

    def shift(self, first: int, count: int, keep: int, positions_move: bool) -> None:
        """Mirror the ring's eviction roll: slots ``first+count ..`` move down by ``count``.

        With ``positions_move`` (slot rule) the moved keys sit at new positions: they are only
        marked stale (re-roped lazily, only if attended); otherwise they are copied along.
        """
        t = self.tokens_per_frame
        if positions_move:
            self.valid[first:] = [False] * (len(self.valid) - first)
            return
        for buf in self.keys:
            buf[:, first * t : (first + keep) * t] = buf[:, (first + count) * t : (first + count + keep) * t].clone()
        self.valid[first : first + keep] = self.valid[first + count : first + count + keep]
        self.valid[first + keep :] = [False] * (len(self.valid) - first - keep)

    def stale_runs(self, slots: list[int]) -> list[tuple[int, int]]:
        """Contiguous runs ``[a, b)`` of ``slots`` (ascending) whose roped keys are stale."""
        runs: list[tuple[int, int]] = []
        for s in slots:
            if self.valid[s]:
                continue
            if runs and runs[-1][1] == s:
                runs[-1] = (runs[-1][0], s + 1)
            else:
                runs.append((s, s + 1))
        return runs

    def mark_valid(self, first: int, end: int) -> None:
        """Slots ``[first, end)`` will hold roped keys once this forward's layers have run."""
        self.valid[first:end] = [True] * (end - first)

    def write(self, layer: int, first_slot: int, k: Tensor, freqs: Tensor) -> None:
        """Rope un-roped ``k`` ``[B, n * tokens, heads, head_dim]`` into slots from ``first_slot``."""
        t = self.tokens_per_frame
        self.keys[layer][:, first_slot * t : first_slot * t + k.shape[1]] = self.rope(k, freqs)

    def memory_keys(self, layer: int, memory: object, k: Tensor, freqs: Tensor) -> Tensor:
        """The retrieved frames' keys of ``layer`` roped with ``freqs``, once per ``memory`` object.

        ``memory`` (a ``MemoryKV``, one per block, shared by its calls) is held, so identity
        comparison is safe; a new one drops the previous block's roped keys.
        """
        if memory is not self._memory:
            self._memory, self._memory_keys = memory, [None] * len(self.keys)
        if self._memory_keys[layer] is None:
            self._memory_keys[layer] = self.rope(k, freqs)
        return self._memory_keys[layer]
