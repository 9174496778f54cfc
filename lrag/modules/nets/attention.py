"""The attention rules shared by the DiTs: what a cached forward attends to, and how.

The attended sequence is ``[sink | retrieved memory | local window]``; see
:class:`AttentionPolicy` for the budget rules. Temporal RoPE positions follow one of the two
rules of the reference (README of ``tests/fixtures/wan_reference``):

* ``"absolute"``: every frame keeps its global frame index (reference native model,
  ``causal_model.py``, which ropes keys once when written - numerically identical).
* ``"slot"``: a frame's temporal position is its slot in the ring buffer
  (reference latent-memory model, ``causal_model_latentmem.py``).

RoPE lives in :mod:`lrag.modules.nets.rope` and the KV cache in
:mod:`lrag.modules.nets.kv_cache`; their names are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from lrag.modules.nets.rope import (
    apply_rope,
    grid_positions,
    offset_grid_positions,
    rope_freqs,
    rope_table,
)

if TYPE_CHECKING:  # loaded lazily at run time: kv_cache imports this module (see __getattr__)
    from lrag.modules.nets.kv_cache import AttendPlan, EvictedKV, KVCache, LayerKV, MemoryKV

__all__ = [
    "AttentionPolicy",
    "AttendPlan",
    "EvictedKV",
    "KVCache",
    "LayerKV",
    "MemoryKV",
    "apply_rope",
    "attention",
    "grid_positions",
    "offset_grid_positions",
    "rope_freqs",
    "rope_table",
]

_BUDGETS = ("replace", "add")
_POSITIONS = ("auto", "absolute", "slot")
_MEMORY_POSITIONS = ("zero", "slot")


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Plain full attention on ``[B, L, heads, head_dim]`` tensors (no mask, default scale)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


@dataclass(frozen=True)
class AttentionPolicy:
    """What a cached forward attends to, in frames.

    Args:
        window: Frames in the KV ring buffer, sink included (``local_attn_size``).
        sink: Frames at the start of the video that are never evicted.
        memory_size: K, the number of retrieved frames per block (0 = native).
        budget: ``"replace"``: retrieved frames take K slots out of the local window,
            reserved even before any memory exists (reference); ``"add"``: the local
            window is unchanged and up to K frames are attended on top of it.
        positions: Temporal RoPE rule for sink/local frames: ``"absolute"`` (global
            frame index, reference native model), ``"slot"`` (ring-buffer slot,
            reference latent-memory model) or ``"auto"`` (absolute when
            ``memory_size == 0``, else slot: each reproduces its reference class).
        memory_position: Temporal RoPE position of retrieved frames: ``"zero"``
            (reference: all share the sink's position 0) or ``"slot"`` (``sink + rank``,
            the slots that the replace budget reserves for them).
    """

    window: int
    sink: int
    memory_size: int = 0
    budget: str = "replace"
    positions: str = "auto"
    memory_position: str = "zero"

    def __post_init__(self) -> None:
        if self.budget not in _BUDGETS:
            raise ValueError(f"AttentionPolicy.budget must be one of {_BUDGETS}, got {self.budget!r}")
        if self.positions not in _POSITIONS:
            raise ValueError(f"AttentionPolicy.positions must be one of {_POSITIONS}, got {self.positions!r}")
        if self.memory_position not in _MEMORY_POSITIONS:
            raise ValueError(
                f"AttentionPolicy.memory_position must be one of {_MEMORY_POSITIONS}, got {self.memory_position!r}"
            )
        if self.sink < 0 or self.memory_size < 0:
            raise ValueError(f"AttentionPolicy: sink ({self.sink}) and memory_size ({self.memory_size}) must be >= 0")
        if self.local_frames < 1:
            raise ValueError(
                f"AttentionPolicy: window ({self.window}) leaves no local frames after sink ({self.sink}) "
                f"and memory_size ({self.memory_size}) in budget {self.budget!r}; raise window"
            )

    @property
    def local_frames(self) -> int:
        """Most recent buffer frames attended besides the sink (current block included)."""
        reserved = self.memory_size if self.budget == "replace" else 0
        return self.window - self.sink - reserved

    @property
    def resolved_positions(self) -> str:
        if self.positions == "auto":
            return "absolute" if self.memory_size == 0 else "slot"
        return self.positions

    @property
    def max_attended_frames(self) -> int:
        """Upper bound on attended frames per call (constant across native and RAG in replace mode)."""
        return self.sink + self.memory_size + self.local_frames



#: Re-exported on first use: :mod:`lrag.modules.nets.kv_cache` imports this module.
_KV_CACHE_NAMES = ("AttendPlan", "EvictedKV", "KVCache", "LayerKV", "MemoryKV")


def __getattr__(name: str) -> object:
    """The KV cache names of :data:`__all__` (PEP 562 module attribute hook)."""
    if name in _KV_CACHE_NAMES:
        from lrag.modules.nets import kv_cache

        return getattr(kv_cache, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
