"""Per-frame spatial RoPE offsets: relative world displacement through the KV cache and memory."""

from __future__ import annotations

import pytest
import torch

from lrag.memory.bank import RetrievalMemory
from lrag.nets.attention import offset_grid_positions
from lrag.nets.policy import AttentionPolicy
from lrag.nets.wan import build_tiny


def _rollout(offsets: torch.Tensor | None, blocks: int = 6, f: int = 2) -> tuple[torch.Tensor, RetrievalMemory]:
    """Blocks of a fixed clip through a RAG cache; returns all outputs and the memory."""
    torch.manual_seed(0)
    net = build_tiny(num_layers=1).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, blocks * f, 16, 4, 4, generator=gen, dtype=torch.float64)
    ctx = torch.randn(2, 4, 32, generator=gen, dtype=torch.float64)
    memory = RetrievalMemory(2, 0, kv_tier="device")
    cache = net.new_cache(AttentionPolicy(5, 1, 2, "replace", "slot", "zero"), 2, 4, 4, dtype=torch.float64,
                          on_evict=memory.store)
    outs = []
    for j in range(blocks):
        mem = memory.gather(memory.retrieve(j * f), "cpu")
        clean = x[:, j * f : (j + 1) * f]
        memory.describe(clean)
        off = None if offsets is None else offsets[:, j * f : (j + 1) * f]
        t = torch.full((2, f), 500.0, dtype=torch.float64)
        outs.append(net(clean, t, ctx, cache, j * f, mem, off))
    return torch.cat(outs, dim=1), memory


def test_zero_offsets_match_no_offsets() -> None:
    plain, _ = _rollout(None)
    zero, _ = _rollout(torch.zeros(2, 12, 2, dtype=torch.float64))
    torch.testing.assert_close(zero, plain, rtol=1e-10, atol=1e-10)


def test_only_relative_displacement_matters() -> None:
    gen = torch.Generator().manual_seed(3)
    off = torch.randint(-6, 6, (2, 12, 2), generator=gen).double() * 0.5  # half tokens: fractional
    base, memory = _rollout(off)
    assert any(r.frames.numel() for r in memory.records), "the rollout must exercise retrieved frames"
    shifted, _ = _rollout(off + torch.tensor([[[3.0, -2.5]], [[-1.0, 7.0]]], dtype=torch.float64))
    torch.testing.assert_close(shifted, base, rtol=1e-8, atol=1e-8)
    plain, _ = _rollout(None)
    assert (base - plain).abs().max() > 1e-3  # the displacement does reach q.k


def test_memory_hands_back_the_offsets_of_retrieved_frames() -> None:
    off = torch.arange(24, dtype=torch.float64).view(1, 12, 2).expand(2, 12, 2).clone()
    off[1] *= -1
    _, memory = _rollout(off)
    record = memory.records[-1]
    mem = memory.gather(record, "cpu")
    expected = torch.stack([off[b, record.frames[b]] for b in range(2)])
    torch.testing.assert_close(mem.offsets, expected)


def test_offsets_must_be_given_for_every_forward() -> None:
    net = build_tiny(num_layers=1)
    cache = net.new_cache(AttentionPolicy(4, 1), 1, 4, 4)
    x, t, ctx = torch.randn(1, 2, 16, 4, 4), torch.zeros(1, 2), torch.randn(1, 4, 32)
    net(x, t, ctx, cache, 0, None, torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="offsets must be given"):
        net(x, t, ctx, cache, 2, None)
    with pytest.raises(ValueError, match=r"offsets must be \[1, 2, 2\]"):
        net(x, t, ctx, cache, 2, None, torch.zeros(1, 3, 2))


def test_offset_grid_positions_shift_rows_and_cols() -> None:
    pos = offset_grid_positions(torch.tensor([4, 5]), torch.tensor([[[1.5, -2.0], [0.0, 3.0]]]), 2, 3)
    assert pos.shape == (1, 12, 3)
    assert pos[0, 0].tolist() == [4.0, 1.5, -2.0]
    assert pos[0, 11].tolist() == [5.0, 1.0, 5.0]  # last token of frame 1: row 1, col 2
