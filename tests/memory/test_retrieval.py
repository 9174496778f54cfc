import pytest
import torch

from lrag.memory.retrieval import cosine_similarity, cosine_topk, mmr_topk, num_eligible, sequence_descriptors


def test_recency_exclusion_and_candidates() -> None:
    assert num_eligible(0, 1) == 0
    assert num_eligible(2, 1) == 1
    assert num_eligible(5, 5) == 0
    with pytest.raises(ValueError):
        num_eligible(-1, 0)


def test_cosine_formula_adds_eps_to_norms() -> None:
    q = torch.tensor([[3.0, 4.0]])
    c = torch.tensor([[[3.0, 4.0], [0.0, 0.0], [-4.0, 3.0]]])
    sims = cosine_similarity(q, c)
    assert sims[0, 0].item() == pytest.approx(25 / (5 + 1e-8) ** 2)
    assert sims[0, 1].item() == 0.0  # a zero descriptor is not NaN
    assert sims[0, 2].item() == pytest.approx(0.0, abs=1e-7)


def test_topk_order_descending() -> None:
    q = torch.tensor([[1.0, 0.0]])
    c = torch.tensor([[[0.0, 1.0], [1.0, 1.0], [1.0, 0.1], [-1.0, 0.0]]])
    scores, idx = cosine_topk(q, c, 3)
    assert idx.tolist() == [[2, 1, 0]]
    assert scores[0, 0] > scores[0, 1] > scores[0, 2]


def test_ties_go_to_the_older_frame() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]], [[0.0, 5.0], [0.0, 5.0], [0.0, 5.0]]])
    _, idx = cosine_topk(q, c, 2)
    assert idx.tolist() == [[0, 2], [0, 1]]


def test_bad_k_or_shapes_raise() -> None:
    with pytest.raises(ValueError, match="k must be"):
        cosine_topk(torch.zeros(1, 2), torch.zeros(1, 3, 2), 4)
    with pytest.raises(ValueError, match="candidates"):
        cosine_similarity(torch.zeros(1, 2), torch.zeros(1, 3, 5))


def test_mmr_without_diversity_is_plain_topk() -> None:
    g = torch.Generator().manual_seed(0)
    q, c = torch.randn(2, 8, generator=g), torch.randn(2, 12, 8, generator=g)
    assert torch.equal(mmr_topk(q, c, 4, 0.0)[1], cosine_topk(q, c, 4)[1])


def test_mmr_skips_near_duplicate_when_a_distinct_candidate_exists() -> None:
    # candidates 0 and 1 are one moment seen twice; 2 is another relevant place, a bit less similar
    q = torch.tensor([[1.0, 0.6, 0.0]])
    c = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.01, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    assert cosine_topk(q, c, 2)[1].tolist() == [[1, 0]]  # plain top-K: both duplicates
    scores, idx = mmr_topk(q, c, 2, 0.5)
    assert idx.tolist() == [[1, 2]]
    assert torch.allclose(scores, cosine_similarity(q, c).gather(1, idx))  # reported scores are to the query


def test_mmr_picks_distinct_frames_and_checks_its_arguments() -> None:
    g = torch.Generator().manual_seed(1)
    q, c = torch.randn(3, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    idx = mmr_topk(q, c, 5, 0.7)[1]
    assert all(sorted(row) == list(range(5)) for row in idx.tolist())
    with pytest.raises(ValueError, match="diversity"):
        mmr_topk(q, c, 2, 1.5)
    with pytest.raises(ValueError, match="k must be"):
        mmr_topk(q, c, 6, 0.5)


def test_sequence_cosine_is_the_mean_of_aligned_frame_cosines() -> None:
    torch.manual_seed(0)
    per_frame = [torch.randn(2, 5) for _ in range(12)]
    seqs = sequence_descriptors(per_frame, [2, 7, 11], length=3)
    assert seqs.shape == (2, 3, 15)
    assert torch.allclose(seqs.norm(dim=-1), torch.ones(2, 3), atol=1e-6)  # unit vectors
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=-1)  # noqa: E731
    mean = sum(cos(per_frame[11 - j], per_frame[7 - j]) for j in range(3)) / 3
    assert torch.allclose((seqs[:, 2] * seqs[:, 1]).sum(-1), mean, atol=1e-6)
    # before frame 0 the history repeats frame 0
    early = sequence_descriptors(per_frame, [1], length=3)[:, 0]
    assert torch.allclose(early[:, 10:], early[:, 5:10]) and not torch.allclose(early[:, :5], early[:, 5:10])


def test_sequence_matching_prefers_the_candidate_whose_past_also_matches() -> None:
    # query frame 9 (past 8) looks like frame 1 (past 0) and like frame 5 (past 4); only frame 1's past
    # also resembles the query's past, so single frames tie and sequences of 2 pick frame 1
    a, b, c = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    per_frame = [b, a, c, c, c, a, c, c, b, a]
    candidates = [1, 5]
    single = cosine_topk(per_frame[9], torch.stack([per_frame[f] for f in candidates], 1), 2)[0]
    assert torch.allclose(single[0, 0], single[0, 1])
    query = sequence_descriptors(per_frame, [9], 2)[:, 0]
    scores, idx = cosine_topk(query, sequence_descriptors(per_frame, candidates, 2), 2)
    assert candidates[idx[0, 0].item()] == 1 and scores[0, 0] == pytest.approx(1.0) and scores[0, 1] < 0.6
