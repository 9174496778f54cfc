"""Numerical faults of a run: a block with NaN/Inf latents stops the run before it is persisted."""

from __future__ import annotations

import torch

__all__ = ["NonFiniteLatentsError", "check_finite"]


class NonFiniteLatentsError(FloatingPointError):
    """A block's latents hold NaN or Inf (the run stops; earlier blocks stay resumable)."""


def check_finite(latents: torch.Tensor, run_id: str, block: int, start_frame: int) -> None:
    """Raise :class:`NonFiniteLatentsError` naming the run and block if ``latents`` is not finite.

    Args:
        latents: The block's clean latents ``[f, C, H, W]``.
        run_id: The run (for the message).
        block: Block index in video coordinates.
        start_frame: The block's first latent frame.
    """
    finite = torch.isfinite(latents)
    if bool(finite.all()):
        return
    bad = int((~finite).sum())
    frames = f"{start_frame}..{start_frame + latents.shape[0] - 1}"
    kept = f"blocks 0..{block - 1} are kept" if block else "no block was finished"
    raise NonFiniteLatentsError(
        f"run {run_id}: block {block} (latent frames {frames}) has {bad} non-finite values "
        f"(NaN/Inf), so the run was stopped and marked failed; {kept}. Check the backbone weights "
        "and the trainer precision (e.g. precision: 32-true instead of 16-mixed), then continue "
        f"with `lrag predict --config ... --resume {run_id}`."
    )
