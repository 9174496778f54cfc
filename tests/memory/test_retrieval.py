import pytest
import torch

from lrag.memory.retrieval import cosine_similarity, cosine_topk, mmr_topk, num_eligible


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
