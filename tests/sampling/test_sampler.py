import pytest
import torch

from lrag.memory.bank import RetrievalMemory
from lrag.nets.wan import build_tiny
from lrag.sampling.sampler import ARSampler, BlockResult, RecordedNoise, SeededNoise
from lrag.sampling.settings import SamplerSettings
from lrag.sampling.schedule import FlowMatchSchedule

FPB, WINDOW, SINK = 2, 6, 1


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_tiny(num_layers=1).eval()


def _sampler(model, memory_size: int = 2, **kw) -> ARSampler:
    schedule = FlowMatchSchedule(denoising_steps=[1000, 500])
    return ARSampler(model, schedule, RetrievalMemory(memory_size, 1, kv_tier="device"),
                     SamplerSettings(frames_per_block=FPB, window=WINDOW, sink=SINK, **kw))


def _context(model) -> torch.Tensor:
    return torch.randn(1, 4, model.config.text_dim, generator=torch.Generator().manual_seed(3))


def test_seeded_noise_is_per_block_and_reproducible() -> None:
    a, b = SeededNoise(7, 1, 16, 4, 4, FPB), SeededNoise(7, 1, 16, 4, 4, FPB)
    assert torch.equal(a.initial(3), b.initial(3))
    assert a.renoise(3, 0).shape == (FPB, 16, 4, 4)
    assert not torch.equal(a.initial(3), a.initial(4))
    assert not torch.equal(a.initial(3), SeededNoise(8, 1, 16, 4, 4, FPB).initial(3))


def test_recorded_noise_replays_in_order() -> None:
    init = torch.randn(1, 4, 2, 1, 1)
    draws = [torch.full((2, 2, 1, 1), float(i)) for i in range(6)]
    noise = RecordedNoise(init, draws, frames_per_block=2, steps_per_block=4)
    assert torch.equal(noise.initial(1), init[:, 2:4])
    assert noise.renoise(1, 2).flatten()[0].item() == 5.0
    with pytest.raises(IndexError):
        noise.renoise(2, 0)


@torch.no_grad()
def test_blocks_retrievals_and_callback(model) -> None:
    results: list[BlockResult] = []
    sampler = _sampler(model)
    out = sampler(SeededNoise(1, 1, 16, 4, 4, FPB), _context(model), 16, on_block=results.append)
    assert out.shape == (1, 16, 16, 4, 4) and torch.isfinite(out).all()
    assert [r.block for r in results] == list(range(8))
    assert all(torch.equal(r.latents, out[:, r.start_frame:r.start_frame + FPB]) for r in results)
    retrieved = [r for r in results if r.retrieval is not None]
    assert retrieved, "a 16-frame run with a 6-frame window must retrieve"
    for r in retrieved:
        frames = r.retrieval.frames
        assert frames.shape[1] <= 2 and int(frames.max()) < r.start_frame - (WINDOW - SINK)
    assert results[0].descriptors.shape == (1, FPB, 16)


@torch.no_grad()
def test_resume_is_bit_identical(model) -> None:
    ctx = _context(model)
    full = _sampler(model)(SeededNoise(5, 1, 16, 4, 4, FPB), ctx, 16)
    tail: list[BlockResult] = []
    resumed = _sampler(model)(SeededNoise(5, 1, 16, 4, 4, FPB), ctx, 16, on_block=tail.append,
                              resume_latents=full[:, :10])
    assert torch.equal(resumed, full)
    assert [r.block for r in tail] == [5, 6, 7]  # replayed blocks are not reported again


@torch.no_grad()
def test_add_budget_keeps_the_local_window(model) -> None:
    ctx, noise = _context(model), SeededNoise(2, 1, 16, 4, 4, FPB)
    native = _sampler(model, memory_size=0)(noise, ctx, 8)
    add = _sampler(model, budget="add", positions="absolute")(noise, ctx, 8)
    replace = _sampler(model, positions="absolute")(noise, ctx, 8)
    # Before any retrieval, "add" attends exactly what native attends; "replace" does not.
    assert torch.equal(add, native)
    assert not torch.equal(replace, native)


def test_bad_arguments_raise(model) -> None:
    with pytest.raises(ValueError, match="must hold a block"):
        ARSampler(model, FlowMatchSchedule(), RetrievalMemory(4, 1), SamplerSettings(3, 6, 1))
    sampler = _sampler(model)
    with pytest.raises(ValueError, match="multiple of frames_per_block"):
        sampler(SeededNoise(0, 1, 16, 4, 4, FPB), _context(model), 5)
    with pytest.raises(ValueError, match="resume_latents"):
        sampler(SeededNoise(0, 1, 16, 4, 4, FPB), _context(model), 8, resume_latents=torch.zeros(1, 3, 16, 4, 4))


@torch.no_grad()
def test_prompt_switch_changes_only_later_blocks(model) -> None:
    ctx, noise = _context(model), SeededNoise(4, 1, 16, 4, 4, FPB)
    other = torch.randn(1, 4, model.config.text_dim, generator=torch.Generator().manual_seed(9))
    base = _sampler(model)(noise, ctx, 12)
    same = _sampler(model)(noise, ctx, 12, context_schedule=lambda frame: ctx)
    switched = _sampler(model)(noise, ctx, 12, context_schedule=lambda frame: ctx if frame < 6 else other)
    assert torch.equal(same, base)
    assert torch.equal(switched[:, :6], base[:, :6])
    assert not torch.allclose(switched[:, 6:], base[:, 6:])


@torch.no_grad()
def test_recompute_tier_runs_and_retrieves(model) -> None:
    schedule = FlowMatchSchedule(denoising_steps=[1000, 500])
    memory = RetrievalMemory(2, 1, kv_tier="recompute")
    results: list[BlockResult] = []
    out = ARSampler(model, schedule, memory, SamplerSettings(FPB, WINDOW, SINK))(SeededNoise(1, 1, 16, 4, 4, FPB), _context(model),
                                                                16, on_block=results.append)
    assert torch.isfinite(out).all() and memory.stored_bytes() == 0
    assert any(r.retrieval is not None for r in results)


def test_ordered_memory_position_makes_the_memory_hand_kv_in_time_order(model) -> None:
    assert _sampler(model, memory_position="ordered").memory.kv_order == "time"
    assert _sampler(model, memory_position="slot").memory.kv_order == "rank"
    out = _sampler(model, memory_position="ordered")(SeededNoise(0, 1, 16, 4, 4, FPB), _context(model), 12)
    assert out.shape == (1, 12, 16, 4, 4) and torch.isfinite(out).all()
