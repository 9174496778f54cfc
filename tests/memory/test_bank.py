import pytest
import torch

from lrag.memory.bank import RetrievalMemory
from lrag.nets.kv_cache import EvictedKV


def _evicted(frames: list[int], layers: int = 2) -> EvictedKV:
    # K of frame f is filled with f, V with -f: [B=1, n, tokens=2, heads=1, head_dim=4]
    k = torch.stack([torch.full((1, 2, 1, 4), float(f)) for f in frames], dim=1)
    return EvictedKV(frames, [k.clone() for _ in range(layers)], [-k.clone() for _ in range(layers)])


def _frames(values: list[list[float]]) -> torch.Tensor:
    """[1, f, C, 2, 2] latents whose spatial mean is the given C-vector per frame."""
    return torch.tensor(values, dtype=torch.float32)[None, :, :, None, None].expand(1, len(values), len(values[0]), 2, 2).clone()


def test_avg_pool_descriptors_and_retrieval_record() -> None:
    mem = RetrievalMemory(memory_size=2, recent_exclude=1, kv_tier="device")
    mem.describe(_frames([[1, 0], [0, 1], [1, 0.1], [0, 1], [1, 0]]))  # frames 0..4
    assert mem.descriptors().shape == (1, 5, 2)
    assert mem.retrieve(query_frame=5) is None  # nothing evicted yet
    mem.store(_evicted([1, 2, 3]))
    record = mem.retrieve(query_frame=5)
    # query = frame 4 ([1, 0]); candidates frames 1, 2 (frame 3 is the R=1 newest): 2 is closer.
    assert record.frames.tolist() == [[2, 1]]
    assert record.scores[0, 0] > record.scores[0, 1]
    kv = mem.gather(record, "cpu")
    assert kv.num_frames == 2 and len(kv.k) == 2
    assert kv.k[1].shape == (1, 4, 1, 4)
    assert torch.all(kv.k[0][:, :2] == 2.0) and torch.all(kv.v[0][:, 2:] == -1.0)
    assert mem.records == [record]


def test_frames_before_exclude_before_are_never_candidates() -> None:
    # A blank prefix (frames 0..2, zeros) would win cosine retrieval against anti-correlated
    # frames; excluded, the pool starts at frame 3 and blank frames are never returned.
    mem = RetrievalMemory(memory_size=2, recent_exclude=0, kv_tier="device")
    mem.exclude_before(3)
    mem.describe(_frames([[0, 0], [0, 0], [0, 0], [1, 0], [-1, 0.2], [-1, 0.1], [1, 0]]))
    mem.store(_evicted([1, 2, 3, 4, 5]))
    assert mem.pool_size == 3
    record = mem.retrieve(query_frame=7)
    assert record.frames.tolist() == [[3, 4]]  # query frame 6 = [1, 0]: 3 (cos 1), then 4
    assert mem.gather(record, "cpu").num_frames == 2
    mem.reset()
    assert mem.first_candidate == 3  # a property of the sampler's setup, kept across videos
    with pytest.raises(ValueError, match="exclude_before"):
        mem.exclude_before(-1)


def test_without_exclusion_blank_frames_are_retrieved() -> None:
    mem = RetrievalMemory(memory_size=1, recent_exclude=0, kv_tier="device")
    mem.describe(_frames([[0, 0], [0, 0], [-1, 0.1], [1, 0]]))
    mem.store(_evicted([1, 2]))
    assert mem.retrieve(query_frame=4).frames.tolist() == [[1]]  # cos 0 beats cos -0.99


def test_native_memory_drops_evicted_frames() -> None:
    mem = RetrievalMemory(memory_size=0, recent_exclude=0)
    mem.describe(_frames([[1, 0], [0, 1]]))
    mem.store(_evicted([1]))
    assert mem.pool_size == 0 and mem.retrieve(2) is None and mem.stored_bytes() == 0


def test_host_tier_copies_and_recompute_tier_uses_the_hook() -> None:
    host = RetrievalMemory(1, 0, kv_tier="host")
    ev = _evicted([1])
    host.store(ev)
    ev.k[0].zero_()  # the cache buffer may be reused: the pool must own its copy
    host.describe(_frames([[1, 0], [1, 0]]))
    assert torch.all(host.gather(host.retrieve(2), "cpu").k[0] == 1.0)
    assert host.stored_bytes() > 0

    rec = RetrievalMemory(1, 0, kv_tier="recompute")
    rec.store(_evicted([1]))
    rec.describe(_frames([[1, 0], [1, 0]]))
    assert rec.stored_bytes() == 0
    record = rec.retrieve(2)
    with pytest.raises(RuntimeError, match="set_recompute"):
        rec.gather(record, "cpu")
    rec.set_recompute(lambda frames: ([torch.full((1, len(frames), 2, 1, 4), 7.0)] * 2,
                                      [torch.full((1, len(frames), 2, 1, 4), 8.0)] * 2))
    assert torch.all(rec.gather(record, "cpu").k[1] == 7.0)


def test_ae_descriptor_uses_the_embedder_encode() -> None:
    class Embed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(x.mean(dim=(-2, -1)) * self.w + 1, dim=-1)

    mem = RetrievalMemory(2, 1, descriptor="ae")
    mem.set_embedder(Embed())
    d = mem.describe(_frames([[3, 0], [0, 0]]))
    assert torch.allclose(d.norm(dim=-1), torch.ones(1, 2))


@pytest.mark.parametrize("kwargs, field", [({"descriptor": "pca"}, "descriptor"), ({"kv_tier": "disk"}, "kv_tier"),
                                           ({"memory_size": -1}, "memory_size"), ({"diversity": 2.0}, "diversity")])
def test_bad_knobs_raise(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetrievalMemory(**kwargs)


def test_ae_without_embedder_raises_naming_the_knob() -> None:
    mem = RetrievalMemory(2, 1, descriptor="ae")
    with pytest.raises(ValueError, match="embedder_path"):
        mem.describe(_frames([[1, 0]]))


def test_diversity_skips_a_near_duplicate_of_the_first_pick() -> None:
    # frames 1 and 2 are one moment twice; frame 3 another view of the query's place
    values = [[0, 0, 1], [1, 0, 0], [1, 0.01, 0], [0.5, 1, 0], [0, 0, 1], [1, 0.6, 0]]
    plain = RetrievalMemory(memory_size=2, recent_exclude=1, kv_tier="device")
    mmr = RetrievalMemory(memory_size=2, recent_exclude=1, kv_tier="device", diversity=0.5)
    for mem in (plain, mmr):
        mem.describe(_frames(values))
        mem.store(_evicted([1, 2, 3, 4]))
    assert plain.retrieve(query_frame=6).frames.tolist() == [[2, 1]]
    assert mmr.retrieve(query_frame=6).frames.tolist() == [[2, 3]]


@pytest.mark.parametrize("tier", ["device", "host"])
def test_time_kv_order_hands_kv_oldest_first_and_keeps_the_rank_record(tier: str) -> None:
    # memory_position "ordered": the K/V go to the cache in the frames' original order, while
    # the logged record (ranks, scores) stays most similar first.
    mem = RetrievalMemory(memory_size=2, recent_exclude=0, kv_tier=tier)
    mem.set_kv_order("time")
    mem.describe(_frames([[0, 1], [0, 1], [1, 0.5], [1, 0], [1, 0]]))
    mem.store(_evicted([1, 2]))
    mem.plan(5)  # the host tier copies what plan() chose: it must be in time order as well
    mem.prefetch("cpu")
    record = mem.take(5)
    assert record.frames.tolist() == [[2, 1]]  # frame 2 ([1, .5]) is closer to the query [1, 0]
    kv = mem.gather(record, "cpu")
    assert torch.all(kv.k[0][:, :2] == 1.0) and torch.all(kv.k[0][:, 2:] == 2.0)
    with pytest.raises(ValueError, match="set_kv_order"):
        mem.set_kv_order("random")
