import math

import pytest
import torch

from lrag.nets.attention import _rope_real, apply_rope, fused_rope, grid_positions, rope_freqs, rope_table
from lrag.nets.kv_cache import KVCache, MemoryKV
from lrag.nets.policy import AttentionPolicy


def test_grid_positions_frame_row_col_order() -> None:
    pos = grid_positions(torch.tensor([5, 7]), 2, 3)
    assert pos.shape == (12, 3)
    assert pos[0].tolist() == [5, 0, 0]
    assert pos[4].tolist() == [5, 1, 1]
    assert pos[6].tolist() == [7, 0, 0]


def test_rope_hand_computed_rotation() -> None:
    head_dim = 12  # split in complex pairs: time 2, row 2, col 2
    x = torch.zeros(1, 1, 1, head_dim)
    x[..., 0] = 1.0  # first temporal pair, frequency theta^0 = 1 rad per frame
    x[..., 2] = 1.0  # second temporal pair, frequency theta^(-2/4) = 0.01
    out = apply_rope(x, rope_freqs(torch.tensor([[3, 0, 0]]), head_dim))
    assert out[0, 0, 0, 0].item() == pytest.approx(math.cos(3.0), abs=1e-6)
    assert out[0, 0, 0, 1].item() == pytest.approx(math.sin(3.0), abs=1e-6)
    assert out[0, 0, 0, 2].item() == pytest.approx(math.cos(0.03), abs=1e-6)
    assert out[0, 0, 0, 3].item() == pytest.approx(math.sin(0.03), abs=1e-6)


def test_position_zero_is_identity_and_dot_products_are_relative() -> None:
    q, k = torch.randn(1, 1, 2, 16), torch.randn(1, 1, 2, 16)
    f0 = rope_freqs(torch.tensor([[0, 0, 0]]), 16)
    assert torch.allclose(apply_rope(q, f0), q)

    def dot(tq: int, tk: int) -> torch.Tensor:
        return (apply_rope(q, rope_freqs(torch.tensor([[tq, 1, 2]]), 16))
                * apply_rope(k, rope_freqs(torch.tensor([[tk, 1, 2]]), 16))).sum(-1)

    assert torch.allclose(dot(9, 4), dot(105, 100), atol=1e-5)
    assert not torch.allclose(dot(9, 4), dot(9, 0), atol=1e-3)


def test_rope_table_split_matches_wan() -> None:
    table = rope_table(4, 16)
    assert table.shape == (4, 8) and table.dtype == torch.complex128
    freqs = rope_freqs(torch.tensor([[2, 1, 3]]), 16)[:, 0]
    assert torch.equal(freqs[0, :4], table[2, :4])
    assert torch.equal(freqs[0, 4:6], table[1, 4:6])
    assert torch.equal(freqs[0, 6:], table[3, 6:])


def test_policy_budgets() -> None:
    assert AttentionPolicy(10, 1, 2).local_frames == 7
    assert AttentionPolicy(10, 1, 2, budget="add").local_frames == 9
    assert AttentionPolicy(10, 1, 0).resolved_positions == "absolute"
    assert AttentionPolicy(10, 1, 2).resolved_positions == "slot"
    with pytest.raises(ValueError, match="budget"):
        AttentionPolicy(10, 1, 2, budget="more")
    with pytest.raises(ValueError, match="no local frames"):
        AttentionPolicy(3, 1, 2)


def _cache(policy: AttentionPolicy, evicted: list) -> KVCache:
    return KVCache.empty(policy, num_layers=2, batch=1, grid_hw=(1, 2), num_heads=1, head_dim=6,
                         on_evict=evicted.append)


def _fill(cache: KVCache, start: int, n: int, value_of=float) -> None:
    plan = cache.begin(start, n, None)
    for layer in range(2):
        k = torch.cat([torch.full((1, 2, 1, 6), value_of(start + j)) for j in range(n)], dim=1)
        cache.attend(plan, layer, torch.zeros(1, 2 * n, 1, 6), k, k.clone(), None)
    cache.finish()


def test_eviction_keeps_sink_and_hands_over_the_oldest_frames() -> None:
    evicted: list = []
    cache = _cache(AttentionPolicy(window=5, sink=1, memory_size=1), evicted)
    for block in range(3):
        _fill(cache, 2 * block, 2)
    # 6 frames into a 5-frame buffer: frame 1 (oldest non-sink) is evicted.
    assert cache.slot_frames == [0, 2, 3, 4, 5]
    assert [e.frames for e in evicted] == [[1]]
    assert evicted[0].k[0].shape == (1, 1, 2, 1, 6)
    assert torch.all(evicted[0].k[1] == 1.0)  # the true frame 1, un-roped
    # A recompute pass of the newest block moves nothing.
    _fill(cache, 4, 2, value_of=lambda f: -f)
    assert cache.slot_frames == [0, 2, 3, 4, 5] and len(evicted) == 1
    assert torch.all(cache.layers[0].k[:, 6:8] == -4.0)


def test_attended_length_is_constant_native_vs_rag() -> None:
    lengths = {}
    for k_mem in (0, 2):
        cache = _cache(AttentionPolicy(window=8, sink=1, memory_size=k_mem), [])
        for block in range(4):
            _fill(cache, 2 * block, 2)
        memory = MemoryKV([torch.zeros(1, 2 * k_mem, 1, 6)] * 2, [torch.zeros(1, 2 * k_mem, 1, 6)] * 2, k_mem)
        plan = cache.begin(8, 2, memory if k_mem else None)
        out = cache.attend(plan, 0, torch.zeros(1, 4, 1, 6), torch.zeros(1, 4, 1, 6), torch.zeros(1, 4, 1, 6),
                           memory if k_mem else None)
        assert out.shape == (1, 4, 1, 6)
        lengths[k_mem] = plan.k_freqs.shape[0] + (0 if plan.mem_freqs is None else plan.mem_freqs.shape[0])
    # native: sink + 7 local; RAG: sink + 2 retrieved + 5 local; 2 tokens per frame.
    assert lengths == {0: 16, 2: 16}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_real_arithmetic_rope_has_the_complex_products_bits(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3 * 12, 4, 24, generator=gen).to(dtype)
    freqs = rope_freqs(grid_positions(torch.arange(5, 8), 3, 4), 24)
    assert torch.equal(_rope_real(x, torch.view_as_real(freqs)), apply_rope(x, freqs))


@pytest.mark.slow  # one Inductor compile on CPU (~10 s)
def test_fused_rope_equals_eager_for_changing_lengths() -> None:
    gen = torch.Generator().manual_seed(1)
    for frames in (2, 5):  # dynamic shapes: the second length must not need another kernel to be right
        x = torch.randn(1, frames * 12, 4, 24, generator=gen).to(torch.bfloat16)
        freqs = rope_freqs(grid_positions(torch.arange(frames), 3, 4), 24)
        assert torch.equal(fused_rope(x, freqs), apply_rope(x, freqs))
