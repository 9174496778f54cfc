"""Evaluation metrics: hand-computed cases, then the real ground truth of a world clip."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

import lrag.eval.metrics as metrics_module
from lrag.data.ground_truth import landmark_sightings, relevant_frames, revisit_pairs
from lrag.data.world import World, generate_world_clip
from lrag.data.world_config import WorldConfig
from lrag.eval.functional import linear_slope, revisit_errors
from lrag.eval.metrics import (
    LandmarkIdentityDrift,
    QualityDrift,
    RetrievalPrecisionRecall,
    RevisitConsistency,
)


def test_docstring_examples_run() -> None:
    result = doctest.testmod(metrics_module)
    assert result.attempted >= 4 and result.failed == 0


# ---------------------------------------------------------------- RevisitConsistency


def test_identical_revisit_is_perfectly_consistent() -> None:
    video = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    video[4] = video[1]
    out = RevisitConsistency()
    out.update(video, [(1, 4, 0, 0)])
    result = out.compute()
    assert result["revisit_inconsistency"] == 0.0
    assert result["revisit_cosine"] == pytest.approx(1.0)


def test_shifted_region_is_aligned_by_the_viewport_offset() -> None:
    world = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(4))
    earlier, later = world[:, 0:4, 0:4], world[:, 2:6, 1:5]  # later viewport moved dx=1, dy=2
    video = torch.stack([earlier, later])
    mse, cos = revisit_errors(video, torch.tensor([[0, 1, 1, 2]]))
    assert mse.item() == 0.0 and cos.item() == pytest.approx(1.0)
    wrong, _ = revisit_errors(video, torch.tensor([[0, 1, -1, -2]]))
    assert wrong.item() > 0.1
    # A constant error of 0.5 on the later frame: MSE 0.25 over the shared 2x3 region.
    video[1] += 0.5
    mse, _ = revisit_errors(video, torch.tensor([[0, 1, 1, 2]]))
    assert mse.item() == pytest.approx(0.25)


def test_frame_variance_and_relative_inconsistency_by_hand() -> None:
    # Frame values in one channel: [0, 2, 0, 2] -> variance 1; the revisit differs by 1 everywhere.
    frame = torch.tensor([[0.0, 2.0], [0.0, 2.0]]).reshape(1, 2, 2)
    video = torch.stack([frame, frame + 1.0])
    metric = RevisitConsistency()
    metric.update(video, [(0, 1, 0, 0)])
    result = metric.compute()
    assert result["frame_variance"] == pytest.approx(1.0)
    assert result["revisit_inconsistency"] == pytest.approx(1.0)
    assert result["revisit_relative"] == pytest.approx(0.5)


def test_batches_with_shared_or_per_video_pairs_accumulate() -> None:
    videos = torch.randn(2, 4, 2, 3, 3, generator=torch.Generator().manual_seed(5))
    videos[0, 3] = videos[0, 0]
    shared = RevisitConsistency()
    shared.update(videos, [(0, 3, 0, 0)])
    per_video = RevisitConsistency()
    per_video.update(videos, [[(0, 3, 0, 0)], [(0, 3, 0, 0), (1, 2, 1, 0)]])
    one_by_one = RevisitConsistency()
    one_by_one.update(videos[0], [(0, 3, 0, 0)])
    one_by_one.update(videos[1], torch.tensor([[0, 3, 0, 0], [1, 2, 1, 0]]))
    expect = (revisit_errors(videos[1], torch.tensor([[0, 3, 0, 0]]))[0].item()) / 2
    assert shared.compute()["revisit_inconsistency"].item() == pytest.approx(expect, rel=1e-5)
    for key, value in per_video.compute().items():
        assert value.item() == pytest.approx(one_by_one.compute()[key].item(), rel=1e-6)
    assert int(per_video.num_pairs) == 3


def test_bad_pairs_and_shapes_raise_clear_errors() -> None:
    metric = RevisitConsistency()
    with pytest.raises(ValueError, match="shares no cell"):
        metric.update(torch.zeros(3, 1, 4, 4), [(0, 1, 4, 0)])
    with pytest.raises(ValueError, match="outside a video of 3 frames"):
        metric.update(torch.zeros(3, 1, 4, 4), [(0, 5, 0, 0)])
    with pytest.raises(ValueError, match=r"\[B, F, C, H, W\]"):
        metric.update(torch.zeros(4, 4), [(0, 1, 0, 0)])
    with pytest.raises(ValueError, match="per-video tables for a batch of 2"):
        metric.update(torch.zeros(2, 3, 1, 4, 4), [[(0, 1, 0, 0)]])


def test_world_clip_is_consistent_and_shuffled_frames_are_not() -> None:
    latents, meta = generate_world_clip(2, 96)
    pairs = revisit_pairs(meta, min_gap=13)
    assert pairs
    truth = RevisitConsistency()
    truth.update(torch.from_numpy(latents), pairs)
    shuffled = RevisitConsistency()
    shuffled.update(torch.from_numpy(latents[np.random.default_rng(0).permutation(len(latents))]), pairs)
    # Only moving objects differ between true revisits.
    assert truth.compute()["revisit_relative"] < 0.1
    assert shuffled.compute()["revisit_relative"] > 0.4


# ---------------------------------------------------------------- LandmarkIdentityDrift


def test_landmark_drift_by_hand() -> None:
    video = torch.zeros(4, 2, 3, 3)
    video[3, :, 0, 2] = torch.tensor([3.0, 4.0])  # drifted by (3, 4): RMS = sqrt(25 / 2)
    metric = LandmarkIdentityDrift(radius=0.0, bin_frames=2, max_frames=4)
    metric.update(video, [(0, 1, 1, 1), (1, 1, 1, 1), (0, 2, 0, 2), (3, 2, 0, 2)])
    out = metric.compute()
    assert out["landmark_drift"].item() == pytest.approx(np.sqrt(12.5) / 2)
    assert out["landmark_drift_by_time"].tolist() == pytest.approx([0.0, np.sqrt(12.5)])
    # A footprint of radius 1 averages the centre with its 4 neighbours (clipped at the edge).
    wide = LandmarkIdentityDrift(radius=1.0)
    wide.update(video, [(0, 2, 0, 2), (3, 2, 0, 2)])
    assert wide.compute()["landmark_drift"].item() == pytest.approx(np.sqrt(12.5) / 3)


def test_landmark_drift_cosine_and_empty_bins() -> None:
    video = torch.zeros(2, 2, 1, 1)
    video[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    video[1, :, 0, 0] = torch.tensor([0.0, 2.0])
    metric = LandmarkIdentityDrift(radius=0.0, distance="cosine", bin_frames=1, max_frames=3)
    metric.update(video, [(0, 0, 0, 0), (1, 0, 0, 0)])
    out = metric.compute()
    assert out["landmark_drift"].item() == pytest.approx(1.0)
    by_time = out["landmark_drift_by_time"]
    assert torch.isnan(by_time[0]) and by_time[1].item() == pytest.approx(1.0) and torch.isnan(by_time[2])


def test_landmark_drift_against_identity_codes_of_a_world() -> None:
    cfg = WorldConfig(num_objects=0)
    latents, meta = generate_world_clip(4, 80, cfg)
    world = World.from_seed(4, cfg)
    sightings = landmark_sightings(meta)
    assert sightings
    codes = torch.from_numpy(np.stack([lm.code for lm in world.landmarks]))
    exact = LandmarkIdentityDrift(radius=0.0, reference="code")
    exact.update(torch.from_numpy(latents), sightings, codes=codes)
    assert exact.compute()["landmark_drift"].item() == pytest.approx(0.0, abs=1e-5)
    noisy = LandmarkIdentityDrift(radius=0.0, reference="code")
    noisy.update(torch.from_numpy(latents) + 0.3 * torch.randn(latents.shape, generator=torch.Generator().manual_seed(2)), sightings, codes=codes)
    assert noisy.compute()["landmark_drift"].item() > 0.1
    with pytest.raises(ValueError, match="needs codes"):
        LandmarkIdentityDrift(reference="code").update(torch.from_numpy(latents), sightings)


# ---------------------------------------------------------------- QualityDrift


def test_quality_drift_slope_of_a_linear_ramp() -> None:
    a = 0.05
    frames = torch.arange(48.0).reshape(1, 48, 1, 1, 1)
    latents = torch.randn(2, 48, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    latents = (latents - latents.mean(dim=(0, 1, 3, 4), keepdim=True)) + a * frames
    metric = QualityDrift(channels=3, window=8, max_frames=48)
    metric.update(latents)
    out = metric.compute()
    centres = torch.arange(6) * 8 + 3.5
    # Window means follow the ramp; per-window noise means are small at this size.
    assert out["quality_mean_slope"].item() == pytest.approx(a, abs=0.01)
    assert out["quality_mean_error"].tolist() == pytest.approx((a * centres).tolist(), abs=0.12)
    assert out["quality_drift_slope"].item() == pytest.approx(a, abs=0.02)


def test_quality_drift_is_flat_for_stationary_latents_and_incremental() -> None:
    latents = torch.randn(1, 40, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    whole = QualityDrift(channels=2, window=10, max_frames=60)
    whole.update(latents)
    blocks = QualityDrift(channels=2, window=10, max_frames=60)
    for start in range(0, 40, 4):
        blocks.update(latents[:, start : start + 4], start_frame=start)
    a, b = whole.compute(), blocks.compute()
    assert abs(a["quality_drift_slope"].item()) < 0.01
    assert torch.allclose(a["quality_error"][:4], b["quality_error"][:4])
    assert torch.isnan(a["quality_error"][4:]).all()  # windows past frame 40 saw nothing


def test_linear_slope_and_quality_drift_errors() -> None:
    assert linear_slope(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 3.0, 5.0])).item() == pytest.approx(2.0)
    assert torch.isnan(linear_slope(torch.tensor([0.0, 1.0]), torch.tensor([1.0, float("nan")])))
    with pytest.raises(ValueError, match="reference_std has 2 values for 3 channels"):
        QualityDrift(channels=3, reference_std=[1.0, 1.0])
    with pytest.raises(ValueError, match="4 channels"):
        QualityDrift(channels=16).update(torch.zeros(1, 2, 4, 2, 2))


# ---------------------------------------------------------------- RetrievalPrecisionRecall


def test_perfect_and_half_correct_retrieval() -> None:
    perfect = RetrievalPrecisionRecall(k=2)
    perfect.update(torch.tensor([[3, 7], [1, 2]]), [{3, 7}, {1, 2, 9}])
    assert {k: v.item() for k, v in perfect.compute().items()} == {"retrieval_precision": 1.0,
                                                                   "retrieval_recall": 1.0}
    half = RetrievalPrecisionRecall(k=2)
    half.update([[3, 8], [5, 2]], [{3, 7}, {2, 6}])
    assert {k: v.item() for k, v in half.compute().items()} == {"retrieval_precision": 0.5,
                                                                "retrieval_recall": 0.5}


def test_retrieval_padding_cutoff_and_queries_without_truth() -> None:
    metric = RetrievalPrecisionRecall(k=2)
    # Query 0: one real retrieval (padding -1), hit; query 1: retrieved beyond k ignored;
    # query 2: no relevant frame -> precision 0, no recall term.
    metric.update([[4, -1, -1], [9, 1, 5], [2, 3, 0]], [[4, 6], [5], []])
    out = metric.compute()
    assert out["retrieval_precision"].item() == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    assert out["retrieval_recall"].item() == pytest.approx((0.5 + 0.0) / 2)
    with pytest.raises(ValueError, match="2 retrieved lists but 1 relevant"):
        metric.update([[1], [2]], [[1]])


def test_retrieval_against_world_ground_truth() -> None:
    _, meta = generate_world_clip(2, 96)
    pair = revisit_pairs(meta, min_gap=13)[-1]
    candidates = range(pair.later - 12)
    truth = relevant_frames(meta, [pair.later], candidates)
    assert pair.earlier in truth
    oracle = RetrievalPrecisionRecall(k=4)
    oracle.update([truth[:4]], [truth])
    wrong = RetrievalPrecisionRecall(k=4)
    wrong.update([[c for c in candidates if c not in truth][:4]], [truth])
    assert oracle.compute()["retrieval_recall"].item() == 1.0
    assert wrong.compute()["retrieval_precision"].item() == 0.0
