"""The generator-key descriptor (gen_keys) and the two-stage search, on frames with known answers."""

import pytest
import torch

from lrag.memory.bank import RetrievalMemory
from lrag.memory.key_descriptor import GeneratorKeys, fused_topk, pool_tokens, self_attention_modules, shortlist_rerank
from lrag.nets.camera import CameraConditioned
from lrag.nets.wan import build_tiny
from lrag.sampling.sampler import ARSampler, SeededNoise
from lrag.sampling.schedule import FlowMatchSchedule
from lrag.sampling.settings import SamplerSettings


def test_pool_tokens_is_the_per_head_token_mean_normalised() -> None:
    # 2 frames x 3 tokens, 2 heads of dim 2: frame 0 head 0 tokens (1,0),(3,0),(2,0) -> mean (2,0).
    x = torch.zeros(1, 6, 4)
    x[0, :3, 0] = torch.tensor([1.0, 3.0, 2.0])
    x[0, :3, 3] = 5.0  # head 1 of frame 0: (0, 5) everywhere
    x[0, 3:, 1] = -1.0  # frame 1: head 0 (0, -1), head 1 zero
    out = pool_tokens(x, frames=2, heads=2)
    s = 2**-0.5  # every head unit norm, the whole vector unit norm
    assert torch.allclose(out[0, 0], torch.tensor([s, 0.0, 0.0, s]))
    assert torch.allclose(out[0, 1], torch.tensor([0.0, -s, 0.0, 0.0]))
    flat = pool_tokens(x, frames=2, heads=2, per_head=False)
    assert torch.allclose(flat[0, 0], torch.tensor([2.0, 0.0, 0.0, 5.0]) / 29**0.5)
    with pytest.raises(ValueError, match="frames=4"):
        pool_tokens(x, frames=4, heads=2)


def test_shortlist_rerank_reorders_only_inside_the_shortlist() -> None:
    query = torch.tensor([[1.0, 0.0]])
    cands = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.2]]])  # stage 1 order: 0, 1, 3, 2
    key_query = torch.tensor([[0.0, 1.0]])
    keys = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.2, 0.8]]])  # key order: 2, 3, 1, 0
    scores, idx = shortlist_rerank(query, cands, key_query, keys, k=2, shortlist=3)
    # candidate 2 has the best key but is outside the shortlist {0, 1, 3}
    assert idx.tolist() == [[3, 1]]
    assert scores[0, 0] > scores[0, 1]
    _, all_idx = shortlist_rerank(query, cands, key_query, keys, k=2, shortlist=10)  # M > N: keys alone
    assert all_idx.tolist() == [[2, 3]]


def test_fused_topk_moves_from_the_descriptor_to_the_keys_with_the_weight() -> None:
    query = torch.tensor([[1.0, 0.0]])
    cands = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]])  # descriptor cosines 1.0, 0.6, 0.0
    key_query = torch.tensor([[0.0, 2.0]])  # scale does not matter: both sides are normalised
    keys = torch.tensor([[[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]])  # key cosines 0.0, 0.6, 1.0
    for weight, best in ((0.0, 0), (0.3, 0), (0.5, None), (0.7, 2), (1.0, 2)):
        scores, idx = fused_topk(query, cands, key_query, keys, k=3, weight=weight)
        expected = (1 - weight) * torch.tensor([1.0, 0.6, 0.0]) + weight * torch.tensor([0.0, 0.6, 1.0])
        assert torch.allclose(scores[0], expected[idx[0]], atol=1e-6)  # the score is the fused cosine
        assert torch.allclose(scores[0], expected.sort(descending=True).values, atol=1e-6)
        if best is not None:
            assert idx[0, 0].item() == best


def test_key_fusion_runs_in_the_sampler_and_finds_the_copy() -> None:
    net = _net()
    settings = SamplerSettings(frames_per_block=3, window=6, sink=1)
    context = torch.zeros(1, 4, net.backbone.config.text_dim)
    video = _repeat_video(30, source=4, repeat_at=29)
    memory = RetrievalMemory(memory_size=2, recent_exclude=1, kv_tier="device", key_fusion=0.5, key_layers=[0])
    sampler = ARSampler(net, FlowMatchSchedule(5.0, denoising_steps=[1000, 500]), memory, settings)
    sampler(SeededNoise(0, 1, 16, 4, 4, 3), context, 33, resume_latents=video)
    record = memory.records[-1]
    assert record.frames[0, 0].item() == 4  # an exact copy: cosine 1 on both sides
    assert record.scores[0, 0].item() == pytest.approx(1.0, abs=1e-5)


def test_sequence_matching_runs_in_the_sampler_and_is_validated() -> None:
    net = _net()
    settings = SamplerSettings(frames_per_block=3, window=6, sink=1)
    context = torch.zeros(1, 4, net.backbone.config.text_dim)
    video = _repeat_video(30, source=4, repeat_at=29)
    for descriptor in ("avg_pool", "gen_keys"):
        memory = RetrievalMemory(memory_size=2, recent_exclude=1, kv_tier="device", descriptor=descriptor,
                                 sequence=3, key_layers=[0])
        sampler = ARSampler(net, FlowMatchSchedule(5.0, denoising_steps=[1000, 500]), memory, settings)
        sampler(SeededNoise(0, 1, 16, 4, 4, 3), context, 33, resume_latents=video)
        record = memory.records[-1]
        assert record.frames.shape == (1, 2) and record.scores.abs().max() <= 1.0 + 1e-5
    with pytest.raises(ValueError, match="sequence"):
        RetrievalMemory(memory_size=2, sequence=0)


def test_key_fusion_is_validated() -> None:
    for kw in ({"key_fusion": 1.5}, {"key_fusion": -0.1}, {"key_fusion": 0.5, "descriptor": "gen_keys"},
               {"key_fusion": 0.5, "rerank": 8}):
        with pytest.raises(ValueError, match="key_fusion"):
            RetrievalMemory(memory_size=2, **kw)
    assert RetrievalMemory(memory_size=2).generator_keys is None  # no hooks unless asked
    assert RetrievalMemory(memory_size=2, key_fusion=0.3).generator_keys is not None


def _net() -> CameraConditioned:
    torch.manual_seed(0)
    return CameraConditioned(build_tiny("tiny", num_layers=3), "none").eval()


def test_capture_reads_the_chosen_layers_and_checks_them() -> None:
    net = _net()
    assert len(self_attention_modules(net)) == 3  # found through the wrapper
    with pytest.raises(ValueError, match=r"key_layers \[3\]"):
        with GeneratorKeys([3]).capture(net):
            pass
    with pytest.raises(ValueError, match="key_query"):
        GeneratorKeys([0], query="values")
    with pytest.raises(RuntimeError, match="no keys captured"):
        GeneratorKeys([0]).take(1)


def _repeat_video(frames: int, source: int, repeat_at: int) -> torch.Tensor:
    """Random distinct frames; frame ``repeat_at`` is an exact copy of frame ``source``."""
    g = torch.Generator().manual_seed(1)
    video = torch.randn(1, frames, 16, 4, 4, generator=g)
    video[:, repeat_at] = video[:, source]
    return video


@pytest.mark.parametrize("layers", [[0], [-1], [0, 1, 2]])
def test_a_frame_shown_again_retrieves_its_first_showing(layers: list[int]) -> None:
    # Frames 0..29 are given (their context passes run, as on resume); the block starting at 30
    # queries with frame 29, a copy of frame 4: frame 4 must be the top pick among frames 1..24.
    net = _net()
    settings = SamplerSettings(frames_per_block=3, window=6, sink=1)
    memory = RetrievalMemory(memory_size=2, recent_exclude=1, descriptor="gen_keys", key_layers=layers,
                             kv_tier="device")
    sampler = ARSampler(net, FlowMatchSchedule(5.0, denoising_steps=[1000, 500]), memory, settings)
    context = torch.zeros(1, 4, net.backbone.config.text_dim)
    video = _repeat_video(30, source=4, repeat_at=29)
    sampler(SeededNoise(0, 1, 16, 4, 4, 3), context, 33, resume_latents=video)
    record = memory.records[-1]
    assert record.query_frame == 30
    assert record.frames[0, 0].item() == 4
    if layers == [0]:  # layer 0 keys depend on the frame alone: an exact copy scores cosine 1
        assert record.scores[0, 0].item() == pytest.approx(1.0, abs=1e-5)
    assert memory.descriptors().shape == (1, 33, 96 * len(layers))


def test_queries_and_rerank_run_in_the_sampler() -> None:
    net = _net()
    settings = SamplerSettings(frames_per_block=3, window=6, sink=1)
    context = torch.zeros(1, 4, net.backbone.config.text_dim)
    video = _repeat_video(30, source=4, repeat_at=29)
    for kw in ({"descriptor": "gen_keys", "key_query": "queries"},
               {"descriptor": "avg_pool", "rerank": 4, "key_layers": [0]}):
        memory = RetrievalMemory(memory_size=2, recent_exclude=1, kv_tier="device", **kw)
        sampler = ARSampler(net, FlowMatchSchedule(5.0, denoising_steps=[1000, 500]), memory, settings)
        sampler(SeededNoise(0, 1, 16, 4, 4, 3), context, 33, resume_latents=video)
        record = memory.records[-1]
        assert record.frames.shape == (1, 2) and record.scores.abs().max() <= 1.0 + 1e-5
        if "rerank" in kw:  # avg_pool ranks the exact copy first too, so it is shortlisted and kept
            assert record.frames[0, 0].item() == 4
            assert record.scores[0, 0].item() == pytest.approx(1.0, abs=1e-5)


def test_rerank_needs_a_first_stage_and_enough_frames() -> None:
    with pytest.raises(ValueError, match="rerank"):
        RetrievalMemory(memory_size=2, descriptor="gen_keys", rerank=8)
    with pytest.raises(ValueError, match="rerank"):
        RetrievalMemory(memory_size=4, rerank=2)
