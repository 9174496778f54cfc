"""Revisit partners and pair masks from a world's ground truth, and the shard pipeline that carries them."""

from __future__ import annotations

import numpy as np
import pytest

from lrag.data.datamodule import LatentShardDataModule, make_sample
from lrag.data.ground_truth import overlap_matrix
from lrag.data.revisits import clip_truth, revisit_partners
from lrag.data.shards import Clip, ShardWriter
from lrag.data.world import generate_world_clip
from lrag.data.world_config import WorldConfig


def _truth(positions: list[tuple[int, int]]) -> dict:
    return {"positions": positions, "world": {"frame_height": 4, "frame_width": 4},
            "overlap": {"iou_threshold": 0.5}}


def test_partner_is_a_far_revisit_when_one_exists() -> None:
    # out and back: frames 0..5 walk right, 6..11 walk back; frame t and 11 - t show one place
    xs = [0, 2, 4, 6, 8, 10, 10, 8, 6, 4, 2, 0]
    truth = _truth([(x, 0) for x in xs])
    partners, pos, neg = revisit_partners(truth, start=0, seq_len=3, min_gap=5, rng=np.random.default_rng(0))
    iou = overlap_matrix(np.array(truth["positions"]), 4, 4)
    for t, p in zip(range(3), partners):
        assert abs(p - t) >= 5 and iou[t, p] >= 0.5
    # window frames 0..2 then partners: each window frame is a positive of its own partner
    assert all(pos[i, 3 + i] and pos[3 + i, i] for i in range(3))
    # adjacent frames 0 and 1 overlap (IoU 1/3 < 0.5: a different place) -> a hard negative, never a positive
    assert neg[0, 1] and not pos[0, 1]
    assert not (pos & neg).any() and not pos.diagonal().any()


def test_same_place_a_moment_apart_is_neither_positive_nor_negative() -> None:
    truth = _truth([(0, 0)] * 12)  # a camera that never moves
    _, pos, neg = revisit_partners(truth, start=0, seq_len=4, min_gap=6, rng=np.random.default_rng(1))
    assert not neg.any()
    assert not pos[:4, :4].any()  # window neighbours are < min_gap apart: ignored


def test_clip_without_ground_truth_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="clip 'a'.*revisit_pairs"):
        clip_truth({"source": "x"}, 4, "clip 'a'")
    with pytest.raises(ValueError, match="3 positions for 4"):
        clip_truth({"ground_truth": _truth([(0, 0)] * 3)}, 4, "clip 'a'")


def test_world_shards_give_batches_with_revisit_pairs(tmp_path) -> None:
    cfg = WorldConfig()
    with ShardWriter(tmp_path, max_clips_per_shard=1) as w:
        for seed in (3, 4):
            latents, meta = generate_world_clip(seed, 48, cfg)
            w.write(f"w{seed}", latents, {"source": "t", "prompt": "", "frame_offset": 0, "fps": 1, "ground_truth": meta})
    dm = LatentShardDataModule(str(tmp_path), seq_len=6, batch_size=1, val_fraction=0.5, revisit_pairs=True)
    batch = next(iter(dm.train_dataloader()))
    assert batch["revisit_latents"].shape == batch["latents"].shape == (1, 6, 16, 8, 8)
    assert batch["positives"].shape == batch["negatives"].shape == (1, 12, 12)
    # the windows are reproducible: same seed, same epoch -> same partners
    clip = Clip("w4", latents, {"ground_truth": meta})
    a, b = make_sample(clip, 6, 0, 0, 10), make_sample(clip, 6, 0, 0, 10)
    assert np.array_equal(a["revisit_latents"], b["revisit_latents"])
    # a 48-frame world has loops of 16-40 frames: some windows find true revisits
    assert any(make_sample(clip, 6, 0, epoch, 10)["positives"].any() for epoch in range(10))
