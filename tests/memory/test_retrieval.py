import pytest
import torch

from lrag.memory.retrieval import cosine_similarity, cosine_topk, num_eligible


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
