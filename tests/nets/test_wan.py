import json
from pathlib import Path

import pytest
import torch

from lrag.memory.bank import RetrievalMemory
from lrag.nets.attention import apply_rope, fused_rope
from lrag.nets.policy import AttentionPolicy
from lrag.nets.wan import build_tiny, tiny_config
from lrag.nets.wan import PRESETS, CausalWanModel, WanConfig
from lrag.sampling.sampler import ARSampler, RecordedNoise, SeededNoise
from lrag.sampling.settings import SamplerSettings
from lrag.sampling.schedule import FlowMatchSchedule

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wan_reference"


def test_1_3b_on_meta_has_the_reference_keys_and_shapes() -> None:
    ref = json.loads((FIXTURES / "wan_1_3b_keys.json").read_text())
    with torch.device("meta"):
        model = CausalWanModel(PRESETS["wan_1_3b"]())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == ref["keys"]
    assert sum(v.numel() for v in model.parameters()) == ref["num_params"]


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(FIXTURES / "wan_tiny_golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def golden_model(golden: dict) -> CausalWanModel:
    model = CausalWanModel(WanConfig.from_dict(golden["config"]["model"]))
    model.load_state_dict(golden["state_dict"], strict=True)
    return model.eval()


def test_golden_tiny_preset_is_the_fixture_config(golden: dict) -> None:
    cfg = WanConfig.from_dict(golden["config"]["model"])
    assert cfg == PRESETS["golden_tiny"]()
    assert len(CausalWanModel(cfg).state_dict()) == len(golden["state_dict"]) == 69


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        WanConfig.from_dict({"dimm": 3})


@torch.no_grad()
def test_tokens_per_frame_follow_the_latent_size() -> None:
    torch.manual_seed(0)
    model = build_tiny().eval()
    cfg = model.config
    for h, w in ((8, 8), (4, 12)):
        cache = model.new_cache(AttentionPolicy(6, 1, 0), 1, h, w)
        assert cache.tokens_per_frame == (h // 2) * (w // 2)
        x = torch.randn(1, 2, cfg.in_dim, h, w)
        flow = model(x, torch.full((1, 2), 500.0), torch.randn(1, 3, cfg.text_dim), cache, 0)
        assert flow.shape == x.shape and torch.isfinite(flow).all()
    with pytest.raises(ValueError, match="divisible"):
        model.new_cache(AttentionPolicy(6, 1, 0), 1, 7, 8)


@torch.no_grad()
def test_causal_block_equals_bidirectional_on_the_first_block() -> None:
    """With an empty cache the first block attends exactly to itself: same as full attention."""
    torch.manual_seed(1)
    model = build_tiny().eval()
    x, ctx = torch.randn(2, 3, 16, 4, 4), torch.randn(2, 5, 32)
    t = torch.tensor([700.0, 300.0])
    causal = model(x, t[:, None].expand(2, 3).contiguous(), ctx, model.new_cache(AttentionPolicy(6, 1, 0), 2, 4, 4), 0)
    assert torch.allclose(causal, model.forward_bidirectional(x, t, ctx), atol=1e-5)


def test_tiny_overrides_validate() -> None:
    assert tiny_config(num_layers=3).num_layers == 3
    with pytest.raises(ValueError, match="unknown WanConfig"):
        tiny_config(layers=3)


@torch.no_grad()
def test_native_and_rag_agree_while_attending_the_same_frames(golden: dict, golden_model: CausalWanModel) -> None:
    """Replace budget: RAG's local window is 2 frames shorter, so blocks 0-1 match and block 2 differs."""
    run = golden["rag_pool"]
    outs = {}
    for k in (0, 2):
        sampler = ARSampler(golden_model, FlowMatchSchedule(), RetrievalMemory(k, 1), SamplerSettings(3, 10, 1))
        noise = RecordedNoise(run["initial_noise"], run["renoise"], 3, 4)
        outs[k] = sampler(noise, golden["text_embeddings"], 9)
    assert torch.equal(outs[0][:, :6], outs[2][:, :6])
    assert (outs[0][:, 6:] - outs[2][:, 6:]).abs().max() > 1e-3


def _eager_and_compiled(seed: int) -> tuple[CausalWanModel, CausalWanModel]:
    """A tiny eager model and its ``compiled=True`` twin with the same weights."""
    torch.manual_seed(seed)
    eager = build_tiny(num_layers=2).eval()
    compiled = CausalWanModel(eager.config, compiled=True).eval()
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


@pytest.mark.slow
@torch.no_grad()
def test_compiled_blocks_match_eager_over_two_cached_blocks() -> None:
    """``compiled=True`` (inductor on CPU) gives the eager outputs up to fused-kernel rounding."""
    eager, compiled = _eager_and_compiled(seed=3)
    assert all(block._compiled is not None for block in compiled.blocks)
    x, ctx = torch.randn(2, 6, 16, 4, 4), torch.randn(2, 5, 32)
    t = torch.full((2, 3), 400.0)
    outs = []
    for model in (eager, compiled):
        cache = model.new_cache(AttentionPolicy(6, 1, 0), 2, 4, 4)
        assert cache.rope is (fused_rope if model is compiled else apply_rope)
        outs.append([model(x[:, i:i + 3], t, ctx, cache, i) for i in (0, 3)])
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # Inductor on CPU: the blocks and the fused rope (~1 min on 2 cores)
@torch.no_grad()
def test_compiled_model_samples_with_retrieval_like_eager() -> None:
    """Compiled blocks + fused RoPE + retrieved frames in the ring's gap, against eager."""
    eager, compiled = _eager_and_compiled(seed=4)
    context = torch.randn(1, 4, eager.config.text_dim, generator=torch.Generator().manual_seed(5))
    outs, records = [], []
    for model in (eager, compiled):
        memory = RetrievalMemory(2, 1, kv_tier="host")
        sampler = ARSampler(model, FlowMatchSchedule(denoising_steps=[1000, 500]), memory,
                            SamplerSettings(frames_per_block=2, window=8, sink=1))
        outs.append(sampler(SeededNoise(6, 1, 16, 4, 4, 2), context, 24))
        records.append([r.frames.tolist() for r in memory.records])
    assert records[0] == records[1] and sum(len(r[0]) == 2 for r in records[0]) >= 3
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)
