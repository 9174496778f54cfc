"""The RoPE cache (keys roped once, when written) gives bit-identical outputs to re-roping per call."""

from __future__ import annotations

import pytest
import torch

from lrag.memory.bank import RetrievalMemory
from lrag.nets.policy import AttentionPolicy
from lrag.nets.wan import CausalWanModel, build_tiny
from lrag.sampling.sampler import ARSampler, SeededNoise
from lrag.sampling.schedule import FlowMatchSchedule
from lrag.sampling.settings import SamplerSettings

FRAMES = 20  # 10 blocks of 2 in a window of 6: the ring rolls many times, retrieval from block 4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_tiny(num_layers=2).eval()


def _sample(model, rope_cache: bool, memory_size: int, tier: str = "device", switch: bool = False,
            **settings: object) -> tuple[torch.Tensor, list]:
    model.rope_cache = rope_cache
    gen = torch.Generator().manual_seed(3)
    context = torch.randn(2, 4, model.config.text_dim, generator=gen)
    other = torch.randn(2, 4, model.config.text_dim, generator=gen)
    memory = RetrievalMemory(memory_size, 1, kv_tier=tier)
    knobs = {"frames_per_block": 2, "window": 6 + memory_size, "sink": 1, **settings}
    sampler = ARSampler(model, FlowMatchSchedule(denoising_steps=[1000, 500]), memory, SamplerSettings(**knobs))
    schedule = (lambda frame: context if frame < 10 else other) if switch else None
    out = sampler(SeededNoise(1, 2, model.config.in_dim, 4, 4, 2), context, FRAMES, context_schedule=schedule)
    return out, [r.frames.tolist() for r in memory.records]


CASES = {
    "native": dict(memory_size=0),
    "native-slot": dict(memory_size=0, positions="slot"),
    "rag-device": dict(memory_size=2),
    "rag-host": dict(memory_size=2, tier="host"),
    "rag-absolute": dict(memory_size=2, positions="absolute"),
    "rag-memory-slot": dict(memory_size=2, memory_position="slot"),
    "rag-add-budget": dict(memory_size=2, budget="add"),
    "rag-recompute": dict(memory_size=2, tier="recompute"),
    "native-prompt-switch": dict(memory_size=0, switch=True),
    "rag-prompt-switch": dict(memory_size=2, switch=True),
}


@pytest.mark.slow  # 20 short sampler runs (~1 min on 2 cores)
@pytest.mark.parametrize("case", list(CASES))
def test_sampler_latents_are_bit_identical(model, case: str) -> None:
    plain, frames_plain = _sample(model, False, **CASES[case])
    cached, frames_cached = _sample(model, True, **CASES[case])
    assert frames_cached == frames_plain
    if CASES[case]["memory_size"]:
        assert any(row[0] != row[1] for row in frames_plain), "the two samples should retrieve differently"
    assert torch.equal(cached, plain)


def _offset_rollout(rope_cache: bool, positions: str, blocks: int = 6, f: int = 2) -> torch.Tensor:
    """Blocks of a fixed clip with per-frame camera offsets through a RAG cache (as test_rope_offsets)."""
    torch.manual_seed(0)
    net = build_tiny(num_layers=1)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, blocks * f, 16, 4, 4, generator=gen)
    ctx = torch.randn(2, 4, 32, generator=gen)
    offsets = torch.randint(-6, 6, (2, blocks * f, 2), generator=gen).double() * 0.5
    memory = RetrievalMemory(2, 0, kv_tier="device")
    cache = net.new_cache(AttentionPolicy(5, 1, 2, "replace", positions, "zero"), 2, 4, 4, on_evict=memory.store,
                          rope_cache=rope_cache)
    assert (cache.roped is not None) == rope_cache
    outs = []
    for j in range(blocks):
        mem = memory.gather(memory.retrieve(j * f), "cpu")
        clean = x[:, j * f : (j + 1) * f]
        memory.describe(clean)
        for t in (1000.0, 0.0):  # a denoising call, then the context pass over the same slots
            outs.append(net(clean, torch.full((2, f), t), ctx, cache, j * f, mem, offsets[:, j * f : (j + 1) * f]))
    assert any(r.frames.numel() for r in memory.records)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("positions", ["slot", "absolute"])
def test_camera_offsets_are_bit_identical(positions: str) -> None:
    assert torch.equal(_offset_rollout(True, positions), _offset_rollout(False, positions))


def test_slot_rule_reropes_only_attended_stale_slots(model) -> None:
    # RAG replace budget: window 8, 2 retrieved, sink 1 -> only the newest 5 ring slots are attended.
    cache = model.new_cache(AttentionPolicy(8, 1, 2, "replace", "slot"), 1, 4, 4, rope_cache=True)
    x, ctx = torch.randn(1, 2, 16, 4, 4), torch.randn(1, 4, 32)
    for j in range(5):
        model(x, torch.zeros(1, 2), ctx, cache, 2 * j, None)
    plan = cache.begin(10, 2, None)  # evicts 2: every moved slot is stale
    assert [(a, b) for a, b, _ in plan.rerope] == [(3, 6)]  # attended, not rewritten by this forward
    assert cache.roped.valid == [True, False, False, True, True, True, True, True]
    cache.finish()
    assert cache.begin(10, 2, None).rerope == []  # the next call of the block re-ropes nothing


def test_absolute_memo_stays_bounded(model) -> None:
    cache = model.new_cache(AttentionPolicy(4, 1), 1, 4, 4, rope_cache=False)
    x, ctx = torch.randn(1, 2, 16, 4, 4), torch.randn(1, 4, 32)
    for j in range(12):
        model(x, torch.zeros(1, 2), ctx, cache, 2 * j, None)
    assert len(cache._freq_memo) <= 8  # absolute positions never repeat: an unbounded memo grows per block


def _causal_call(model) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    x, ctx = torch.randn(1, 2, 16, 4, 4, generator=gen), torch.randn(1, 4, 32, generator=gen)
    cache = model.new_cache(AttentionPolicy(4, 1), 1, 4, 4)
    return model(x, torch.full((1, 2), 500.0), ctx, cache, 0, None)


def test_attention_backend_is_applied(model) -> None:
    model.attention_backend = "auto"
    auto = _causal_call(model)
    model.attention_backend = "math"
    torch.testing.assert_close(_causal_call(model), auto, rtol=1e-5, atol=1e-5)
    model.attention_backend = "cudnn"  # no CPU kernel: the call fails instead of falling back
    with pytest.raises(ValueError, match="attention_backend='cudnn' cannot run.*attention_backend auto"):
        _causal_call(model)
    model.attention_backend = "auto"


def test_attention_backend_rejects_unknown_names(model) -> None:
    with pytest.raises(ValueError, match=r"attention_backend='fast': choose one of auto, flash, cudnn"):
        CausalWanModel(preset="tiny", attention_backend="fast")
    model.attention_backend = "fast"
    with pytest.raises(ValueError, match="attention_backend='fast'"):
        _causal_call(model)
    model.attention_backend = "auto"


def _gap_rollout(rope_cache: bool, blocks: int = 8, f: int = 2) -> tuple[list[bool], list, torch.Tensor]:
    """RAG blocks (replace budget, window 6 = sink 1 + 2 retrieved + 3 local) on a fixed clip."""
    torch.manual_seed(0)
    net = build_tiny(num_layers=2)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, blocks * f, 16, 4, 4, generator=gen)
    ctx = torch.randn(1, 4, 32, generator=gen)
    memory = RetrievalMemory(2, 0, kv_tier="device")
    cache = net.new_cache(AttentionPolicy(6, 1, 2, "replace"), 1, 4, 4, on_evict=memory.store, rope_cache=rope_cache)
    in_gap, outs = [], []
    for j in range(blocks):
        mem = memory.gather(memory.retrieve(j * f), "cpu")
        clean = x[:, j * f : (j + 1) * f]
        memory.describe(clean)
        for t in (1000.0, 0.0):
            plan_calls = []
            begin = cache.begin
            cache.begin = lambda *a, **kw: plan_calls.append(begin(*a, **kw)) or plan_calls[-1]
            outs.append(net(clean, torch.full((1, f), t), ctx, cache, j * f, mem))
            del cache.begin
            in_gap.append(plan_calls[0].memory_in_gap)
    return in_gap, memory._pool, torch.cat(outs, dim=1)


def test_full_memory_sits_in_the_gap_and_the_ring_keeps_its_own_values() -> None:
    gap_flags, pool_gap, out_gap = _gap_rollout(True)
    plain_flags, pool_plain, out_plain = _gap_rollout(False)
    assert not any(plain_flags)  # the path without the RoPE cache concatenates
    assert gap_flags[:4] == [False] * 4 and all(gap_flags[-6:])  # once 2 frames can be retrieved
    assert torch.equal(out_gap, out_plain)
    # Evicted frames hand over the ring's own values, not the retrieved frames put in their slots.
    assert len(pool_gap) == len(pool_plain) > 2
    for a, b in zip(pool_gap, pool_plain):
        assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)


def test_a_forward_without_memory_restores_the_gap(model) -> None:
    memory = RetrievalMemory(2, 0, kv_tier="device")
    cache = model.new_cache(AttentionPolicy(6, 1, 2, "replace"), 1, 4, 4, on_evict=memory.store, rope_cache=True)
    gen = torch.Generator().manual_seed(4)
    x, ctx = torch.randn(1, 2, 16, 4, 4, generator=gen), torch.randn(1, 4, 32, generator=gen)
    for j in range(5):
        memory.describe(x)
        model(x, torch.zeros(1, 2), ctx, cache, 2 * j, memory.gather(memory.retrieve(2 * j), "cpu"))
    before = [layer.v.clone() for layer in cache.layers]
    mem = memory.gather(memory.retrieve(10), "cpu")
    model(x, torch.zeros(1, 2), ctx, cache, 10, mem)
    t = cache.tokens_per_frame
    assert cache._gap is not None  # the retrieved values sit in slots 1-2 now
    assert not torch.equal(cache.layers[0].v[:, t : 3 * t], before[0][:, 3 * t : 5 * t])
    model(x, torch.zeros(1, 2), ctx, cache, 10, None)  # e.g. a re-cache pass after a prompt switch
    assert cache._gap is None
    for layer, old in zip(cache.layers, before):  # slots 1-2 hold the ring's frames again (shifted by 2)
        assert torch.equal(layer.v[:, t : 3 * t], old[:, 3 * t : 5 * t])
