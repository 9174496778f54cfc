"""Tests of the block-wise training objective, memory exposure and the world DataModule."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lrag.data.world_datamodule import WorldDataModule
from lrag.memory.oracle import GroundTruthMemory
from lrag.sampling.settings import SAMPLER_KNOBS
from lrag.modules.backbone_fit import FIT_SAMPLING, BackboneFitModule
from lrag.nets.camera import CameraConditioned
from lrag.nets.conditioning import TinyTextEncoder
from lrag.nets.kv_cache import EvictedKV
from lrag.nets.wan import build_tiny
from lrag.sampling.schedule import FlowMatchSchedule


@pytest.fixture(scope="module")
def batch() -> dict:
    dm = WorldDataModule(num_worlds=2, clip_frames=40, window_frames=30, batch_size=2, steps_per_epoch=2,
                         revisit_min=12, revisit_max=16)
    dm.setup("fit")
    return dm.materialize(next(iter(dm.train_dataloader())))


def _module(**kwargs) -> BackboneFitModule:
    torch.manual_seed(0)
    sampling = dataclasses.replace(FIT_SAMPLING, **{k: kwargs.pop(k) for k in SAMPLER_KNOBS if k in kwargs})
    return BackboneFitModule(build_tiny(num_layers=1), TinyTextEncoder(8, 32), FlowMatchSchedule(),
                             sampling=sampling, **kwargs)


def _fake_evict(memory: GroundTruthMemory, frames: list[int], batch: int = 1) -> None:
    kv = [torch.zeros(batch, len(frames), 4, 2, 8)]
    memory.store(EvictedKV(frames, kv, kv))
    memory.describe(torch.randn(batch, len(frames), 4, 8, 8))


def test_datamodule_windows(batch) -> None:
    assert batch["latents"].shape == (2, 30, 16, 8, 8)
    assert batch["positions"].shape == batch["camera"].shape == (2, 30, 2)
    # camera is the displacement between consecutive viewport positions
    diff = batch["positions"][:, 1:] - batch["positions"][:, :-1]
    assert torch.equal(batch["camera"][:, 1:], diff)


def test_datamodule_rejects_short_clips() -> None:
    with pytest.raises(ValueError, match="window_frames"):
        WorldDataModule(clip_frames=10, window_frames=20)


def test_ground_truth_memory_picks_revisits() -> None:
    memory = GroundTruthMemory(2, recent_exclude=1, frames_per_block=2, frame_hw=(8, 8))
    # frames 0..7: frame 2 is the place the block [8, 9] revisits; others are far away
    pos = torch.tensor([[[100.0 * i, 0.0] for i in range(10)]])
    pos[0, 2] = pos[0, 8] = torch.tensor([0.0, 50.0])
    pos[0, 5] = torch.tensor([4.0, 50.0])  # half overlap with the block: second best
    memory.set_positions(pos)
    _fake_evict(memory, list(range(1, 8)))
    record = memory.retrieve(8)
    assert record.frames.tolist() == [[2, 5]]
    assert record.scores[0, 0] == pytest.approx(1.0)
    # the R = 1 newest evicted frame (7) is never a candidate
    pos[0, 7] = pos[0, 8]
    memory.set_positions(pos)
    assert 7 not in memory.retrieve(8).frames.tolist()[0]


def test_ground_truth_memory_random_slots_stay_eligible() -> None:
    gen = torch.Generator().manual_seed(1)
    memory = GroundTruthMemory(3, recent_exclude=2, frames_per_block=1, frame_hw=(8, 8),
                               revisit_fraction=0.0, generator=gen)
    memory.set_positions(torch.tensor([[[100.0 * i, 0.0] for i in range(12)]]))
    _fake_evict(memory, list(range(1, 9)))
    seen = set()
    for _ in range(20):
        frames = memory.retrieve(10).frames[0].tolist()
        assert len(set(frames)) == 3 and set(frames) <= set(range(1, 7))
        seen.update(frames)
    assert len(seen) > 3  # random, not a fixed choice


def test_blank_sink_prefix(batch) -> None:
    module = _module(sink_mode="blank")
    x, pos, cam = module._sequence(batch)
    assert x.shape[1] == 33 and torch.all(x[:, :3] == 0)
    assert torch.isnan(pos[:, :3]).all() and torch.equal(x[:, 3:], batch["latents"])
    x_first, _, _ = _module(sink_mode="first")._sequence(batch)
    assert torch.equal(x_first, batch["latents"])


@pytest.mark.parametrize("exposed", [False, True])
def test_block_loss_trains_backbone(batch, exposed) -> None:
    module = _module(window=6, memory_size=2, recent_exclude=1)
    loss = module.block_loss(batch, exposed, target=8)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    loss.backward()
    grads = {n: p.grad for n, p in module.net.named_parameters()}
    assert grads["backbone.patch_embedding.weight"].abs().sum() > 0
    assert grads["camera_mlp.0.weight"].abs().sum() > 0


def test_exposed_replay_retrieves_from_memory(batch, monkeypatch) -> None:
    module = _module(window=6, memory_size=2, recent_exclude=1, revisit_fraction=1.0)
    records = []
    original = GroundTruthMemory.retrieve

    def spy(self, query_frame):
        rec = original(self, query_frame)
        records.append((query_frame, rec))
        return rec

    monkeypatch.setattr(GroundTruthMemory, "retrieve", spy)
    module.block_loss(batch, True, target=8)
    retrieved = [(q, r) for q, r in records if r is not None]
    assert retrieved and retrieved[-1][0] == 24
    q, rec = retrieved[-1]
    # only frames evicted from the 6-frame window (minus R = 1) can be retrieved
    assert rec.frames.max() < q - 6 and rec.frames.shape == (2, 2)


def test_training_reduces_loss_on_a_fixed_batch(batch) -> None:
    module = _module(window=6, memory_size=2, memory_exposure=1.0, lr=3e-3)
    opt = module.configure_optimizers()
    losses = []
    for _ in range(10):
        module.generator.manual_seed(3)  # same target, noise and t every step
        loss = module.block_loss(batch, True, target=4)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_camera_conditioning_needs_a_path() -> None:
    net = CameraConditioned(build_tiny(num_layers=1))
    x = torch.zeros(1, 3, 16, 8, 8)
    with pytest.raises(RuntimeError, match="set_camera"):
        net(x, torch.zeros(1, 3), torch.zeros(1, 8, 32), None, 0)


def test_bad_knobs_raise() -> None:
    with pytest.raises(ValueError, match="memory_exposure"):
        _module(memory_exposure=1.5)
    with pytest.raises(ValueError, match="local window .* must hold a block"):
        _module(window=3, memory_size=2)
    with pytest.raises(ValueError, match="memory_size 2"):  # K does not fit next to a block
        _module(window=5, memory_size=2)


def test_index_batches_materialize_contiguous_clip_windows() -> None:
    dm = WorldDataModule(num_worlds=3, clip_frames=40, window_frames=30, batch_size=4, steps_per_epoch=3,
                         revisit_min=12, revisit_max=16)
    dm.setup("fit")
    loader = dm.train_dataloader()
    index = list(loader)
    assert len(index) == 3 and index[0]["clip"].shape == (4,)
    out = dm.materialize(index[0])
    for b, (c, s) in enumerate(zip(index[0]["clip"].tolist(), index[0]["start"].tolist())):
        clip = dm.clips[c]
        assert torch.equal(out["latents"][b], clip["latents"][s : s + 30])
        assert torch.equal(out["positions"][b], clip["positions"][s : s + 30])
        assert out["prompt"][b] == clip["prompt"]


def test_oracle_memory_ranks_by_overlap_batched() -> None:
    memory = GroundTruthMemory(2, recent_exclude=0, frames_per_block=1, frame_hw=(4, 4))
    # sample 0 revisits frame 2 exactly, sample 1 overlaps frame 1 by half
    pos = torch.tensor([[[0, 0], [8, 0], [16, 0], [24, 0], [16, 0]],
                        [[0, 0], [8, 0], [16, 0], [24, 0], [10, 0]]], dtype=torch.float32)
    memory.set_positions(pos)
    _fake_evict(memory, [0, 1, 2, 3], batch=2)
    record = memory.retrieve(4)
    assert record.frames[:, 0].tolist() == [2, 1]
    assert record.scores[0, 0] == pytest.approx(1.0)
    assert record.scores[1, 0] == pytest.approx(8 / 24)


@pytest.mark.parametrize("exposed", [True, False])
def test_position_camera_trains_and_uses_offsets(batch, exposed) -> None:
    module = _module(camera="position", memory_size=2, window=6, recent_exclude=1)
    loss = module.block_loss(batch, exposed=exposed, target=9)
    loss.backward()
    assert torch.isfinite(loss)
    offsets = module.net.offsets
    assert offsets is not None and offsets.shape == (2, 33, 2)
    # viewport (x, y) cells -> (row, col) tokens at patch 2
    assert torch.equal(offsets[:, 3:, 0], batch["positions"][..., 1] / 2)
    assert torch.equal(offsets[:, 3:, 1], batch["positions"][..., 0] / 2)
    plain = _module(camera="motion", memory_size=2, window=6, recent_exclude=1)
    plain.load_state_dict(module.state_dict())
    for m in (plain, module):  # same noise, timesteps and memory picks for both
        m.generator.manual_seed(0)
        m._device_gens.clear()
    assert not torch.allclose(plain.block_loss(batch, exposed, target=9), module.block_loss(batch, exposed, target=9))
