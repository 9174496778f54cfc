"""Frame-embedder losses: Window Temporal Delta, temporal smoothness, reconstruction and an
optional revisit-contrastive (InfoNCE) term.

All temporal terms work on **raw** (un-normalised) embeddings ``[B, T, D]``, as in the
reference ``ae/train.py::compute_losses``; ``EmbedderLoss`` combines them with weights. The
contrastive term is not in the reference: it is off by default (``contrastive_weight 0``).
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


def revisit_infonce_loss(
    emb: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """Multi-positive InfoNCE: each anchor's positives should out-score its negatives.

    For anchor i with positive set P(i) and candidate set A(i) = P(i) | N(i), the loss is
    ``-mean_{p in P(i)} log(exp(s_ip / tau) / sum_{a in A(i)} exp(s_ia / tau))`` with s the
    cosine similarity, averaged over anchors that have at least one positive. Pairs in neither
    mask (e.g. the same place seen a moment apart, which the WTD term wants apart) are ignored.

    Args:
        emb: Raw embeddings ``[N, D]``.
        positives: ``[N, N]`` bool, ``positives[i, j]``: j shows the place of anchor i (a revisit).
        negatives: ``[N, N]`` bool, j shows a different place (e.g. a temporally adjacent frame
            after the camera moved on, or a frame of another video).
        temperature: Softmax temperature tau (> 0).

    Returns:
        Scalar loss; zero (with a graph) when no anchor has a positive.
    """
    n = emb.shape[0]
    if emb.dim() != 2 or positives.shape != (n, n) or negatives.shape != (n, n):
        raise ValueError(f"revisit_infonce_loss: need emb [N, D] and masks [N, N], got {tuple(emb.shape)}, "
                         f"{tuple(positives.shape)}, {tuple(negatives.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    eye = torch.eye(n, dtype=torch.bool, device=emb.device)
    pos = positives.bool() & ~eye
    cand = (pos | negatives.bool()) & ~eye
    z = F.normalize(emb.float(), dim=-1)
    logits = (z @ z.T / temperature).masked_fill(~cand, float("-inf"))  # (N, N)
    log_prob = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    has_pos = pos.any(dim=-1)
    if not has_pos.any():
        return emb.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(-1)) / pos.sum(-1).clamp(min=1)
    return per_anchor[has_pos].mean()


@dataclass
class EmbedderLossOutput:
    """The weighted total and every term (terms already include their weight).

    Attributes:
        total: ``recon + wtd + smooth``, the value to backpropagate.
        recon: Weighted reconstruction MSE.
        wtd: Weighted Window Temporal Delta loss.
        smooth: Weighted temporal smoothness loss.
        contrastive: Weighted revisit InfoNCE (zero when off or without pairs).
        wtd_per_offset: Unweighted delta loss per offset ``[min(T-1, w)]``.
        cos_per_offset: Mean cosine similarity per offset ``[min(T-1, w)]`` (detached).
    """

    total: torch.Tensor
    recon: torch.Tensor
    wtd: torch.Tensor
    smooth: torch.Tensor
    wtd_per_offset: torch.Tensor
    cos_per_offset: torch.Tensor
    contrastive: torch.Tensor | None = None


class EmbedderLoss(nn.Module):
    """Weighted sum of reconstruction, Window Temporal Delta and smoothness losses.

    Args:
        recon_weight: Weight of the reconstruction MSE.
        delta_weight: Weight of the Window Temporal Delta loss.
        delta_margin: Cosine similarity margin of the delta loss.
        delta_window: Largest temporal offset of the delta loss.
        smooth_weight: Weight of the temporal smoothness loss.
        smooth_eps: Added under the square root so the gradient is finite at zero.
        contrastive_weight: Weight of the revisit InfoNCE term (0: off, the reference).
        temperature: Its softmax temperature.
    """

    def __init__(
        self,
        recon_weight: float = 1.0,
        delta_weight: float = 1.0,
        delta_margin: float = 0.85,
        delta_window: int = 3,
        smooth_weight: float = 1.0,
        smooth_eps: float = 1e-8,
        contrastive_weight: float = 0.0,
        temperature: float = 0.1,
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
        if contrastive_weight < 0 or temperature <= 0:
            raise ValueError(f"contrastive_weight must be >= 0 and temperature > 0, got "
                             f"{contrastive_weight} and {temperature}")
        self.contrastive_weight = contrastive_weight
        self.temperature = temperature

    def forward(
        self,
        recon: torch.Tensor,
        target: torch.Tensor,
        emb: torch.Tensor,
        pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> EmbedderLossOutput:
        """Compute all terms.

        Args:
            recon: Reconstruction ``[B*T, C, H, W]`` (batch-major).
            target: Input frames, same shape as ``recon``.
            emb: Raw embeddings ``[B, T, D]``.
            pairs: For the contrastive term: ``(embeddings [N, D], positives [N, N],
                negatives [N, N])`` (see :func:`revisit_infonce_loss`); required when
                ``contrastive_weight > 0``.
        """
        emb = emb.float()
        rec = self.recon_weight * reconstruction_loss(recon, target)
        wtd, per_offset = window_temporal_delta_loss(emb, self.delta_margin, self.delta_window)
        wtd = self.delta_weight * wtd
        smooth = self.smooth_weight * temporal_smoothness_loss(emb, self.smooth_eps)
        total = rec + wtd + smooth
        contrastive = None
        if self.contrastive_weight > 0:
            if pairs is None:
                raise ValueError("contrastive_weight > 0 needs revisit pairs: train on shards whose clips carry "
                                 "ground truth and set data.init_args.revisit_pairs: true")
            contrastive = self.contrastive_weight * revisit_infonce_loss(*pairs, temperature=self.temperature)
            total = total + contrastive
        with torch.no_grad():
            cos = mean_cosine_per_offset(emb, self.delta_window)
        return EmbedderLossOutput(total, rec, wtd, smooth, per_offset.detach(), cos, contrastive)
