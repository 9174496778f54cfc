"""Frame-embedder losses: Window Temporal Delta, temporal smoothness and reconstruction.

All temporal terms work on **raw** (un-normalised) embeddings ``[B, T, D]``, as in the
reference ``ae/train.py::compute_losses``; ``EmbedderLoss`` combines them with weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _check_sequence(emb: torch.Tensor) -> None:
    if emb.dim() != 3:
        raise ValueError(f"embeddings must be [B, T, D], got shape {tuple(emb.shape)}")


def pair_cosine_sims(emb: torch.Tensor, window: int) -> list[torch.Tensor]:
    """Cosine similarity of frame pairs ``(t, t-k)`` for offsets ``k = 1..min(T-1, window)``.

    Args:
        emb: Raw embeddings ``[B, T, D]``.
        window: Largest offset w.

    Returns:
        One tensor ``[B, T-k]`` per offset k, in order of k.
    """
    _check_sequence(emb)
    num_offsets = min(emb.shape[1] - 1, window)
    return [F.cosine_similarity(emb[:, k:], emb[:, :-k], dim=-1) for k in range(1, num_offsets + 1)]


def mean_cosine_per_offset(emb: torch.Tensor, window: int) -> torch.Tensor:
    """Mean cosine similarity per temporal offset, ``[min(T-1, window)]`` (for logging)."""
    sims = pair_cosine_sims(emb, window)
    if not sims:
        return emb.new_zeros(0)
    return torch.stack([s.mean() for s in sims])


def window_temporal_delta_loss(
    emb: torch.Tensor, margin: float = 0.85, window: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Window Temporal Delta loss: push nearby frames' embeddings below a cosine margin.

    For each offset k, the mean over (b, t) of ``relu(cos(e_t, e_{t-k}) - margin)``; the loss is
    the mean over offsets. It keeps descriptors of consecutive frames from collapsing onto one
    direction, so retrieval can tell near-duplicate frames apart.

    Args:
        emb: Raw embeddings ``[B, T, D]``.
        margin: Similarity below which pairs cost nothing.
        window: Largest offset w.

    Returns:
        ``(loss scalar, per-offset losses [min(T-1, w)])``; zero when T < 2.
    """
    sims = pair_cosine_sims(emb, window)
    if not sims:
        zero = emb.sum() * 0.0  # keeps the graph so a weighted sum still backpropagates
        return zero, emb.new_zeros(0)
    per_offset = torch.stack([F.relu(s - margin).mean() for s in sims])
    return per_offset.mean(), per_offset


def temporal_smoothness_loss(emb: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over (b, t) of ``sqrt(||e_{t+2} - 2 e_{t+1} + e_t||^2 + eps)``; zero when T < 3.

    Penalising the second difference favours trajectories that move steadily through embedding
    space instead of jumping, which keeps retrieval scores stable over time.
    """
    _check_sequence(emb)
    if emb.shape[1] < 3:
        return emb.sum() * 0.0
    second = emb[:, 2:] - 2.0 * emb[:, 1:-1] + emb[:, :-2]  # (B, T-2, D)
    return torch.sqrt(second.pow(2).sum(dim=-1) + eps).mean()


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements, computed in float32 (safe under AMP)."""
    if recon.shape != target.shape:
        raise ValueError(f"reconstruction {tuple(recon.shape)} vs target {tuple(target.shape)}")
    return F.mse_loss(recon.float(), target.float(), reduction="mean")


@dataclass
class EmbedderLossOutput:
    """The weighted total and every term (terms already include their weight).

    Attributes:
        total: ``recon + wtd + smooth``, the value to backpropagate.
        recon: Weighted reconstruction MSE.
        wtd: Weighted Window Temporal Delta loss.
        smooth: Weighted temporal smoothness loss.
        wtd_per_offset: Unweighted delta loss per offset ``[min(T-1, w)]``.
        cos_per_offset: Mean cosine similarity per offset ``[min(T-1, w)]`` (detached).
    """

    total: torch.Tensor
    recon: torch.Tensor
    wtd: torch.Tensor
    smooth: torch.Tensor
    wtd_per_offset: torch.Tensor
    cos_per_offset: torch.Tensor


class EmbedderLoss(nn.Module):
    """Weighted sum of reconstruction, Window Temporal Delta and smoothness losses.

    Args:
        recon_weight: Weight of the reconstruction MSE.
        delta_weight: Weight of the Window Temporal Delta loss.
        delta_margin: Cosine similarity margin of the delta loss.
        delta_window: Largest temporal offset of the delta loss.
        smooth_weight: Weight of the temporal smoothness loss.
        smooth_eps: Added under the square root so the gradient is finite at zero.
    """

    def __init__(
        self,
        recon_weight: float = 1.0,
        delta_weight: float = 1.0,
        delta_margin: float = 0.85,
        delta_window: int = 3,
        smooth_weight: float = 1.0,
        smooth_eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if delta_window < 1:
            raise ValueError(f"delta_window must be >= 1, got {delta_window}")
        self.recon_weight = recon_weight
        self.delta_weight = delta_weight
        self.delta_margin = delta_margin
        self.delta_window = delta_window
        self.smooth_weight = smooth_weight
        self.smooth_eps = smooth_eps

    def forward(self, recon: torch.Tensor, target: torch.Tensor, emb: torch.Tensor) -> EmbedderLossOutput:
        """Compute all terms.

        Args:
            recon: Reconstruction ``[B*T, C, H, W]`` (batch-major).
            target: Input frames, same shape as ``recon``.
            emb: Raw embeddings ``[B, T, D]``.
        """
        emb = emb.float()
        rec = self.recon_weight * reconstruction_loss(recon, target)
        wtd, per_offset = window_temporal_delta_loss(emb, self.delta_margin, self.delta_window)
        wtd = self.delta_weight * wtd
        smooth = self.smooth_weight * temporal_smoothness_loss(emb, self.smooth_eps)
        with torch.no_grad():
            cos = mean_cosine_per_offset(emb, self.delta_window)
        return EmbedderLossOutput(rec + wtd + smooth, rec, wtd, smooth, per_offset.detach(), cos)
