"""The embedder losses against the reference fixture and on hand-checkable inputs."""

from __future__ import annotations

import copy

import pytest
import torch

from lrag.modules.losses import (
    EmbedderLoss,
    mean_cosine_per_offset,
    pair_cosine_sims,
    revisit_infonce_loss,
    temporal_smoothness_loss,
    window_temporal_delta_loss,
)


@pytest.fixture(scope="module")
def golden_terms(ae_golden, ae_golden_model):
    golden = ae_golden
    x = golden["input"].flatten(0, 1)
    with torch.no_grad():
        recon, z = ae_golden_model(x)
    b, t = golden["input"].shape[:2]
    return golden, recon, x, z.view(b, t, -1)


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def test_losses_match_golden(golden_terms) -> None:
    golden, recon, x, emb = golden_terms
    out = EmbedderLoss(delta_margin=0.85, delta_window=3)(recon, x, emb)
    ref = golden["losses"]
    assert rel(out.recon.item(), ref["recon_mse"]) <= 1e-5
    assert rel(out.wtd.item(), ref["temporal_delta"]) <= 1e-5
    assert rel(out.smooth.item(), ref["smooth"]) <= 1e-5
    assert rel(out.total.item(), ref["total"]) <= 1e-5
    assert torch.allclose(out.wtd_per_offset, torch.tensor(ref["temporal_delta_per_offset"]), rtol=1e-5, atol=1e-9)


def test_pair_cosine_sims_match_golden(golden_terms, ae_golden_model) -> None:
    golden, _, x, emb = golden_terms
    sims = pair_cosine_sims(emb, 3)
    with torch.no_grad():  # the same embeddings without float32 rounding (lrag.golden.within_bar)
        z = copy.deepcopy(ae_golden_model).double()(x.double())[1]
    exact = pair_cosine_sims(z.view(emb.shape), 3)
    assert len(sims) == 3
    for k, (s, e) in enumerate(zip(sims, exact), start=1):
        ref = golden["pair_cosine_sims"][f"offset_{k}"]
        err, own, theirs = ((a.double() - b.double()).abs().max().item() for a, b in ((s, ref), (s, e), (e, ref)))
        # 1e-5 on cosines; or: ours within 1e-5 of the exact value, which is within 2e-5 of the reference
        assert s.shape == ref.shape and (err <= 1e-5 or (own <= 1e-5 and theirs <= 2e-5)), (err, own, theirs)
    means = mean_cosine_per_offset(emb, 3)
    assert torch.allclose(means, torch.stack([s.mean() for s in sims]))


def test_delta_loss_on_known_angles() -> None:
    # Frames at angles 0, 10, 20 deg: cos(10) = 0.985 > 0.85 margin, cos(20) = 0.940.
    angles = torch.deg2rad(torch.tensor([0.0, 10.0, 20.0]))
    emb = torch.stack([angles.cos(), angles.sin()], dim=-1)[None]  # (1, 3, 2)
    loss, per_offset = window_temporal_delta_loss(emb, margin=0.85, window=5)
    c10, c20 = torch.cos(angles[1]).item(), torch.cos(angles[2]).item()
    assert per_offset.shape == (2,)  # offsets limited to T-1
    assert per_offset[0].item() == pytest.approx(c10 - 0.85, rel=1e-5)
    assert per_offset[1].item() == pytest.approx(c20 - 0.85, rel=1e-5)
    assert loss.item() == pytest.approx((c10 + c20) / 2 - 0.85, rel=1e-5)
    far, _ = window_temporal_delta_loss(emb, margin=0.99, window=2)
    assert far.item() == 0.0


def test_smoothness_is_zero_on_a_line_and_positive_on_a_bend() -> None:
    line = torch.arange(5.0)[None, :, None] * torch.tensor([1.0, 2.0])  # (1, 5, 2)
    assert temporal_smoothness_loss(line).item() == pytest.approx(1e-4, rel=1e-3)  # sqrt(eps)
    bend = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]])
    assert temporal_smoothness_loss(bend).item() == pytest.approx(2**0.5, rel=1e-6)


def test_short_sequences_give_zero_losses_that_backpropagate() -> None:
    emb = torch.randn(2, 1, 4, requires_grad=True)
    out = EmbedderLoss()(torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2), emb)
    assert out.wtd.item() == 0.0 and out.smooth.item() == 0.0 and out.cos_per_offset.numel() == 0
    out.total.backward()
    assert emb.grad is not None


def test_weights_scale_terms_and_bad_shapes_raise() -> None:
    emb = torch.randn(2, 6, 8)
    recon, target = torch.randn(12, 3, 2, 2), torch.randn(12, 3, 2, 2)
    base = EmbedderLoss(delta_margin=-1.0)(recon, target, emb)
    scaled = EmbedderLoss(recon_weight=2.0, delta_weight=3.0, delta_margin=-1.0, smooth_weight=0.5)(
        recon, target, emb
    )
    assert scaled.recon.item() == pytest.approx(2 * base.recon.item(), rel=1e-6)
    assert scaled.wtd.item() == pytest.approx(3 * base.wtd.item(), rel=1e-6)
    assert scaled.smooth.item() == pytest.approx(0.5 * base.smooth.item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"\[B, T, D\]"):
        pair_cosine_sims(torch.randn(4, 8), 3)
    with pytest.raises(ValueError, match="reconstruction"):
        EmbedderLoss()(recon, target[:, :2], emb)


def _pair_masks(n: int, pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.zeros(n, n, dtype=torch.bool)
    for i, j in pairs:
        pos[i, j] = pos[j, i] = True
    return pos, ~pos


def test_infonce_lower_when_positives_are_closer() -> None:
    pos, neg = _pair_masks(4, [(0, 2), (1, 3)])
    far = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [1.0, 0.1]])   # positives apart
    close = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])  # positives together
    assert revisit_infonce_loss(close, pos, neg, 0.1) < revisit_infonce_loss(far, pos, neg, 0.1)
    # perfectly separated places: the loss approaches its minimum, 0
    assert revisit_infonce_loss(close * 1.0, pos, neg, 0.01) < 1e-3


def test_infonce_known_value_and_ignored_pairs() -> None:
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    pos, neg = _pair_masks(3, [(0, 1)])
    # anchor 0: positive cos 1, negative cos 0 -> -log(e^{1/t} / (e^{1/t} + 1))
    t = 0.5
    expected = -torch.log(torch.exp(torch.tensor(1 / t)) / (torch.exp(torch.tensor(1 / t)) + 1))
    assert revisit_infonce_loss(emb, pos, neg, t).item() == pytest.approx(expected.item(), rel=1e-5)
    # a pair in neither mask does not enter the denominator: ignoring the negative leaves only the positive
    assert revisit_infonce_loss(emb, pos, torch.zeros(3, 3, dtype=torch.bool), t).item() == pytest.approx(0.0, abs=1e-6)
    # no positives at all: zero, and still differentiable
    x = emb.clone().requires_grad_()
    loss = revisit_infonce_loss(x, torch.zeros(3, 3, dtype=torch.bool), neg, t)
    loss.backward()
    assert loss.item() == 0.0 and x.grad is not None


def test_embedder_loss_adds_weighted_contrastive_term_only_when_on() -> None:
    emb = torch.randn(2, 4, 8)
    recon = target = torch.zeros(8, 1, 2, 2)
    pos, neg = _pair_masks(8, [(0, 5), (2, 7)])
    pairs = (emb.flatten(0, 1), pos, neg)
    off = EmbedderLoss()(recon, target, emb, pairs)
    on = EmbedderLoss(contrastive_weight=0.5, temperature=0.2)(recon, target, emb, pairs)
    assert off.contrastive is None
    expected = 0.5 * revisit_infonce_loss(*pairs, temperature=0.2)
    assert on.contrastive.item() == pytest.approx(expected.item())
    assert (on.total - off.total).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="revisit_pairs"):
        EmbedderLoss(contrastive_weight=0.5)(recon, target, emb)
