"""The host ring and the GPU frame cache of the host/int8 KV tiers (CPU: copies are synchronous)."""

import pytest
import torch

from lrag.memory.bank import RetrievalMemory
from lrag.memory.kv_store import HostRing, KVStoreError, OffloadedKV, dequantize_int8, quantize_int8
from lrag.nets.kv_cache import EvictedKV

SHAPE = (2, 3, 4, 2, 8)  # (B, layers, tokens, heads, head_dim)


def _frame(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g) * 3


def test_int8_error_is_bounded_per_token() -> None:
    scales = torch.logspace(-3, 2, 7)[None, :, None, None]  # tokens of very different magnitudes
    x = torch.randn(5, 7, 4, 16, generator=torch.Generator().manual_seed(0)) * scales
    q, scale = quantize_int8(x)
    assert q.dtype == torch.int8 and scale.shape == (5, 7)
    err = (dequantize_int8(q, scale, torch.float32) - x).abs().flatten(-2).amax(-1)
    # Round to nearest: at most half a step, i.e. 1/254 of each token's largest magnitude.
    assert torch.all(err <= x.abs().flatten(-2).amax(-1) / 254 * (1 + 1e-5))


@pytest.mark.parametrize("quantized", [False, True])
def test_reserved_bytes_are_linear_in_frames(quantized: bool) -> None:
    per = []
    for frames in (4, 9, 17):
        ring = HostRing(SHAPE, torch.float32, quantized, pin=False)
        ring.reserve(frames)
        per.append(ring.reserved_bytes / frames)
    logical = HostRing(SHAPE, torch.float32, quantized, pin=False).frame_bytes
    assert logical == (2 * 2 * 3 * 4 * 16 * 4 if not quantized else 2 * (2 * 3 * 4 * 16 + 4 * 2 * 3 * 4))
    assert all(p == logical for p in per)  # exactly the logical KV: no power-of-two rounding


def test_growth_in_chunks_stays_within_one_chunk() -> None:
    ring = HostRing(SHAPE, torch.float32, False, pin=False, chunk_frames=5)
    for i in range(40):
        ring.append(*_frame(i))
        assert ring.capacity - ring.size < 5
    assert ring.reserved_bytes == 40 * ring.frame_bytes and len(ring.chunks) == 8
    out_k, out_v = torch.empty(SHAPE[1:]), torch.empty(SHAPE[1:])
    ring.copy_to(37, 1, out_k, out_v)  # a row in a later chunk reads back exactly
    k, v = _frame(37)
    assert torch.equal(out_k, k[1]) and torch.equal(out_v, v[1])


def test_full_budget_names_the_knob_and_keeps_what_was_written() -> None:
    frame_bytes = 2 * 2 * 3 * 4 * 16 * 4
    ring = HostRing(SHAPE, torch.float32, False, pin=False, chunk_frames=2, budget_bytes=int(4.5 * frame_bytes))
    for i in range(4):
        ring.append(*_frame(i))
    with pytest.raises(KVStoreError, match="host_budget_gib"):
        ring.append(*_frame(4))
    assert ring.size == 4
    out_k, out_v = torch.empty(SHAPE[1:]), torch.empty(SHAPE[1:])
    ring.copy_to(2, 0, out_k, out_v)
    assert torch.equal(out_k, _frame(2)[0][0])


def test_gpu_cache_copies_only_new_frames() -> None:
    kv = OffloadedKV()
    for i in range(6):
        kv.append(*_frame(i))
    k, v, done = kv.fill([[0, 1, 2], [3, 4, 5]], 3, torch.device("cpu"), torch.float32)
    assert done is None and kv.copied_frames == 6 and kv.reused_frames == 0
    k2, v2, _ = kv.fill([[0, 1, 2], [3, 4, 5]], 3, torch.device("cpu"), torch.float32)
    assert k2 is k and kv.copied_frames == 6  # identical retrieval: the same buffer, nothing moves
    k3, v3, _ = kv.fill([[2, 5, 0], [3]], 3, torch.device("cpu"), torch.float32)
    assert k3 is not k and kv.copied_frames == 7 and kv.reused_frames == 6 + 3  # only frame 5 for b=0 is new
    for bi, rows in enumerate([[2, 5, 0], [3]]):
        for rank, row in enumerate(rows):
            fk, fv = _frame(row)
            assert torch.equal(k3[:, bi, rank], fk[bi]) and torch.equal(v3[:, bi, rank], fv[bi])
    with pytest.raises(KVStoreError, match="memory_size"):
        kv.fill([[0, 1, 2, 3], [0]], 3, torch.device("cpu"), torch.float32)


def _evicted(frames: list[int], seed: int) -> EvictedKV:
    g = torch.Generator().manual_seed(seed)
    return EvictedKV(frames, [torch.randn(1, len(frames), 4, 2, 8, generator=g) for _ in range(3)],
                     [torch.randn(1, len(frames), 4, 2, 8, generator=g) for _ in range(3)])


def _descriptors(mem: RetrievalMemory, n: int) -> None:
    mem.describe(torch.randn(1, n, 4, 2, 2, generator=torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("tier", ["host", "int8"])
def test_offloaded_tiers_match_the_device_tier(tier: str) -> None:
    mems = {t: RetrievalMemory(3, 1, kv_tier=t) for t in ("device", tier)}
    for mem in mems.values():
        _descriptors(mem, 12)
        for j in range(5):
            mem.store(_evicted([2 * j + 1, 2 * j + 2], seed=j))
    ref = mems["device"].gather(mems["device"].retrieve(12), "cpu")
    mem = mems[tier]
    mem.plan(12)  # the sampler's order: plan, prefetch, then take and gather
    mem.prefetch("cpu")
    record = mem.take(12)
    got = mem.gather(record, "cpu")
    assert record.frames.tolist() == mems["device"].records[0].frames.tolist() and mem.records == [record]
    for a, b in zip(got.k + got.v, ref.k + ref.v):
        if tier == "host":
            assert torch.equal(a, b)
        else:
            tok_max = b.abs().flatten(-2).amax(-1, keepdim=True)[..., None]
            assert torch.all((a - b).abs() <= tok_max / 254 * (1 + 1e-5))
    assert mem.stored_bytes() == 10 * mem._offload.ring.frame_bytes


def test_plan_is_dropped_when_the_pool_changes() -> None:
    mem = RetrievalMemory(2, 0, kv_tier="host")
    _descriptors(mem, 8)
    mem.store(_evicted([1, 2, 3], 0))
    mem.plan(8)
    mem.prefetch("cpu")
    mem.store(_evicted([4], 1))  # an eviction after planning: the plan is stale
    record = mem.take(8)
    assert len(mem.records) == 1 and mem.gather(record, "cpu").num_frames == 2
    assert mem.retrieve(8).frames.tolist() == record.frames.tolist()


def test_memory_budget_error_names_the_knob() -> None:
    mem = RetrievalMemory(2, 0, kv_tier="host", host_budget_gib=1e-9)
    with pytest.raises(KVStoreError, match="host_budget_gib"):
        mem.store(_evicted([1], 0))
    with pytest.raises(ValueError, match="host_chunk_frames"):
        RetrievalMemory(2, 0, kv_tier="host", host_chunk_frames=0)
    with pytest.raises(ValueError, match="host_budget_gib"):
        RetrievalMemory(2, 0, kv_tier="int8", host_budget_gib=0)
    mem = RetrievalMemory(2, 0, kv_tier="int8")
    mem.reserve(10, (1, 3, 4, 2, 8), torch.float32, "cpu")
    assert mem.host_reserved_bytes() == 10 * 2 * (3 * 4 * 16 + 4 * 3 * 4)
    mem.release_storage()
    assert mem.host_reserved_bytes() == 0


def test_offloaded_gather_carries_the_frames_offsets() -> None:
    mems = {t: RetrievalMemory(2, 0, kv_tier=t) for t in ("device", "host")}
    for mem in mems.values():
        _descriptors(mem, 6)
        ev = _evicted([1, 2, 3], 0)
        ev.offsets = torch.tensor([[[1.0, -1.0], [2.0, -2.0], [3.0, -3.0]]])
        mem.store(ev)
    ref = mems["device"].gather(mems["device"].retrieve(6), "cpu")
    got = mems["host"].gather(mems["host"].take(6), "cpu")  # unplanned: fetched on the spot
    assert torch.equal(got.offsets, ref.offsets) and got.offsets.shape == (1, 2, 2)
    assert all(torch.equal(a, b) for a, b in zip(got.k + got.v, ref.k + ref.v))


def test_a_video_of_another_size_re_reserves_the_ring() -> None:
    kv = OffloadedKV()
    kv.reserve(4, SHAPE, torch.float32, "cpu")
    other = (1, *SHAPE[1:])
    kv.append(torch.zeros(other), torch.zeros(other))  # empty ring of the wrong shape: replaced
    assert kv.ring.shape == other and kv.ring.size == 1
    with pytest.raises(KVStoreError, match="reset"):
        kv.append(*_frame(0))
