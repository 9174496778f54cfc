"""WorldDataModule under DDP: per-rank batch share and one random stream per rank."""

from __future__ import annotations

import pytest
import torch

from lrag.data.world_datamodule import WorldDataModule, WorldIndexBatches


class _Trainer:
    def __init__(self, rank: int, world_size: int) -> None:
        self.global_rank, self.world_size = rank, world_size


def _batches(rank: int, world: int, batch_size: int = 8) -> list[dict]:
    dm = WorldDataModule(num_worlds=3, clip_frames=12, window_frames=4, batch_size=batch_size,
                         steps_per_epoch=3)
    dm.setup("fit")
    dm.trainer = _Trainer(rank, world)
    return list(dm.train_dataloader())


def test_ranks_draw_their_share_of_each_step_from_their_own_stream():
    one = _batches(0, 1)
    r0, r1 = _batches(0, 2), _batches(1, 2)
    assert len(one) == len(r0) == len(r1) == 3  # the same optimiser steps on any N
    assert all(b["clip"].shape == (4,) for b in r0 + r1)  # global batch 8 over 2 ranks
    windows = [[torch.stack([b["clip"], b["start"]], 1) for b in r] for r in (r0, r1)]
    assert not any(torch.equal(a, b) for a, b in zip(*windows)), "two ranks drew the same windows"


def test_stream_ids_differ_over_ranks():
    a = next(iter(WorldIndexBatches(12, ["p"] * 5, 4, 16, seed=0, rank=0)))
    b = next(iter(WorldIndexBatches(12, ["p"] * 5, 4, 16, seed=0, rank=1)))
    assert not torch.equal(a["start"], b["start"])


def test_a_batch_size_that_does_not_split_over_the_devices_is_refused():
    with pytest.raises(ValueError, match="not divisible by world_size=3"):
        _batches(0, 3, batch_size=8)
