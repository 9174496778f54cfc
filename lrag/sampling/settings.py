"""The knobs of the AR block loop, declared and validated once.

``lrag predict`` (:class:`lrag.modules.generator.GeneratorModule`), ``lrag eval``
(:mod:`lrag.eval.runner`) and backbone training
(:class:`lrag.modules.backbone_fit.BackboneFitModule`) all inject one :class:`SamplerSettings`,
so a window, sink or block size means the same thing, with the same checks, everywhere.
The number of retrieved frames K is the memory's knob (``RetrievalMemory.memory_size``); the
settings turn it into an :class:`~lrag.nets.policy.AttentionPolicy` with :meth:`policy`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from lrag.nets.policy import AttentionPolicy

__all__ = ["SAMPLER_KNOBS", "SamplerSettings"]

Budget = Literal["replace", "add"]
Positions = Literal["auto", "absolute", "slot"]
MemoryPosition = Literal["zero", "slot"]
SinkMode = Literal["first", "blank"]


@dataclass(frozen=True)
class SamplerSettings:
    """Block size, attention window and position rules of the AR block loop.

    >>> s = SamplerSettings(frames_per_block=3, window=10, sink=1, sink_mode="blank")
    >>> s.prefix, s.policy(memory_size=2).local_frames
    (3, 7)

    Args:
        frames_per_block: Latent frames denoised together per AR step.
        window: Attention window in latent frames, sink included (reference ``local_attn_size``).
        sink: Leading frames kept in attention forever.
        budget: ``"replace"``: retrieved frames take K slots of the local window (constant
            attention length, the reference's rule); ``"add"``: they are attended on top of it.
        positions: Temporal RoPE rule of sink/local frames: ``"absolute"`` (global frame index,
            reference native model), ``"slot"`` (ring-buffer slot, reference memory model) or
            ``"auto"`` (absolute without memory, else slot). Use the backbone's training value.
        memory_position: RoPE time of retrieved frames: ``"zero"`` (reference: the sink's
            position) or ``"slot"`` (the slots the replace budget reserves for them).
        sink_mode: ``"first"``: the video's first frame is the sink; ``"blank"``: one block of
            zero frames precedes the video (never persisted), as backbone training does.
    """

    frames_per_block: int = 3
    window: int = 12
    sink: int = 1
    budget: Budget = "replace"
    positions: Positions = "auto"
    memory_position: MemoryPosition = "zero"
    sink_mode: SinkMode = "first"

    def __post_init__(self) -> None:
        if self.frames_per_block < 1:
            raise ValueError(f"sampling.frames_per_block={self.frames_per_block}: must be >= 1.")
        if not 0 <= self.sink < self.window:
            raise ValueError(f"sampling: need 0 <= sink ({self.sink}) < window ({self.window}).")
        for name, kind in (("budget", Budget), ("positions", Positions),
                           ("memory_position", MemoryPosition), ("sink_mode", SinkMode)):
            value, choices = getattr(self, name), typing.get_args(kind)
            if value not in choices:
                raise ValueError(f"sampling.{name}={value!r}: choose one of {', '.join(choices)}.")
        self.policy(0)

    @property
    def prefix(self) -> int:
        """Blank frames in front of every video: one block with ``sink_mode: blank``, else 0."""
        return self.frames_per_block if self.sink_mode == "blank" else 0

    def policy(self, memory_size: int) -> AttentionPolicy:
        """The attention policy for K = ``memory_size`` retrieved frames.

        Raises:
            ValueError: The local window cannot hold one block next to the sink and K frames.
        """
        policy = AttentionPolicy(self.window, self.sink, memory_size, self.budget, self.positions,
                                 self.memory_position)
        if policy.local_frames < self.frames_per_block:
            reserved = f" - memory_size {memory_size}" if self.budget == "replace" and memory_size else ""
            raise ValueError(
                f"sampling: the local window ({policy.local_frames} frames = window {self.window} - sink "
                f"{self.sink}{reserved}) must hold a block of {self.frames_per_block} frames; raise window."
            )
        return policy

    def check_length(self, num_frames: int, owner: str = "num_frames") -> None:
        """Raise ``ValueError`` unless ``num_frames`` is a positive multiple of the block size."""
        f = self.frames_per_block
        if num_frames < f or num_frames % f:
            raise ValueError(f"{owner}={num_frames} must be a positive multiple of "
                             f"sampling.frames_per_block={f}.")


#: Field names of :class:`SamplerSettings` (stored configs and checkpoints list them flat).
SAMPLER_KNOBS = tuple(SamplerSettings.__dataclass_fields__)
