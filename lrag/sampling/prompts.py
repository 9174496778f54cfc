"""Prompt switching within one video: the schedule on the block grid and its encoded contexts."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lrag.data.prompts import check_prompt_schedule, prompt_at

__all__ = ["context_schedule", "effective_schedule"]


def effective_schedule(prompt: str, schedule: list[dict] | None, frames_per_block: int,
                       num_frames: int) -> list[dict]:
    """A video's prompt schedule, checked against the block grid, starting at frame 0.

    Args:
        prompt: The video's prompt; it applies until the first switch (unless one is at 0).
        schedule: ``[{"frame", "prompt"}, ...]`` from the data module, or None (no switching).
        frames_per_block: Switches happen at block starts only.
        num_frames: Frames of the video; a switch at or after it would never apply.

    Returns:
        ``[]`` without a schedule, else the schedule with ``{"frame": 0, "prompt": prompt}``
        in front when its first switch is later than frame 0.

    Raises:
        ValueError: naming the entry whose frame is off the block grid or past the video.
    """
    if not schedule:
        return []
    schedule = check_prompt_schedule(schedule)
    for i, entry in enumerate(schedule):
        frame = entry["frame"]
        if frame % frames_per_block or frame >= num_frames:
            raise ValueError(
                f"prompt_schedule[{i}] = {entry!r}: frame must be a multiple of frames_per_block="
                f"{frames_per_block} below num_frames={num_frames} (switches happen at block starts)."
            )
    head = [] if schedule[0]["frame"] == 0 else [{"frame": 0, "prompt": prompt}]
    return head + schedule


def context_schedule(schedule: list[dict], text_encoder: Any, prefix: int, device: torch.device
                     ) -> tuple[Tensor, Any]:
    """Encode every prompt of ``schedule`` once: ``(context at frame 0, frame -> context | None)``.

    The sampler counts frames from the blank prefix on; prefix frames take the frame-0 prompt.
    The callable is None for a single prompt (no switch, no re-caching).
    """
    prompts = list(dict.fromkeys(e["prompt"] for e in schedule))
    contexts = {p: text_encoder([p]).to(device) for p in prompts}
    first = contexts[prompt_at(schedule, prompts[0], 0)]
    if len(prompts) == 1:
        return first, None
    return first, lambda frame: contexts[prompt_at(schedule, prompts[0], max(frame - prefix, 0))]
