"""What a cached forward attends to, in frames: :class:`AttentionPolicy`.

The attended sequence is ``[sink | retrieved memory | local window]``; the policy decides the
budget of each part and the RoPE position rules; :class:`lrag.nets.kv_cache.KVCache` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AttentionPolicy"]

_BUDGETS = ("replace", "add")
_POSITIONS = ("auto", "absolute", "slot")
_MEMORY_POSITIONS = ("zero", "slot")


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
