"""Revisit error per gap: per-pair maths, binning and the curve over worlds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lrag.eval.functional import revisit_errors, revisit_errors_by_gap
from lrag.eval.gap_curve import bin_run, gap_bins, gap_curves, per_world_curves
from lrag.eval.report import RunResult


def test_errors_by_gap_average_the_pairs_of_each_gap() -> None:
    video = torch.zeros(8, 2, 4, 4)
    for f in range(8):
        video[f] = float(f)  # frame f is constant f: MSE of (i, j) with no shift = (j - i)^2
    pairs = torch.tensor([[0, 2, 0, 0], [1, 3, 0, 0], [0, 5, 0, 0], [2, 7, 1, 0]])
    gaps, mse, count = revisit_errors_by_gap(video, pairs)
    assert gaps.tolist() == [2, 5] and count.tolist() == [2, 2]
    assert mse.tolist() == pytest.approx([4.0, 25.0])
    per_pair, _ = revisit_errors(video, pairs)
    assert float((mse * count).sum()) == pytest.approx(float(per_pair.sum()))
    empty = revisit_errors_by_gap(video, torch.zeros(0, 4, dtype=torch.long))
    assert all(t.numel() == 0 for t in empty)


def _run(world: str, variant: str, gap, mse, pairs) -> RunResult:
    return RunResult(world, variant, {}, revisit_by_gap={"gap": gap, "mse": mse, "pairs": pairs})


def test_bins_span_all_gaps_and_weight_by_pairs() -> None:
    runs = [_run("w0", "native", [10, 11, 19], [1.0, 3.0, 5.0], [1, 3, 2]),
            _run("w1", "native", [12, 29], [2.0, 4.0], [1, 1])]
    edges = gap_bins(runs, num_bins=2)
    assert edges.tolist() == [10, 20, 30]  # [10, 20) and [20, 30)
    mean, count = bin_run(runs[0], edges)
    assert mean[0] == pytest.approx((1 * 1 + 3 * 3 + 5 * 2) / 6) and math.isnan(mean[1])
    assert count.tolist() == [6, 0]
    assert gap_bins([_run("w", "native", [], [], [])]).size == 0
    with pytest.raises(ValueError, match="differ in length"):
        bin_run(_run("w", "native", [10], [1.0, 2.0], [1]), edges)


def test_curves_average_worlds_with_a_band() -> None:
    rng = np.random.default_rng(0)
    runs = []
    for w in range(12):
        runs.append(_run(f"w{w}", "native", [10, 30], [1.0 + rng.normal(0, 0.1), 2.0], [1, 1]))
        runs.append(_run(f"w{w}", "rag", [10, 30], [0.5, 0.5 + rng.normal(0, 0.1)], [1, 1]))
    edges = gap_bins(runs, num_bins=2)
    curves = gap_curves(runs, edges, resamples=500)
    native, rag = curves["native"], curves["rag"]
    assert native["centre"] == [14.5, 25.0] and native["worlds"] == [12, 12]
    assert native["lo"][0] < native["mean"][0] < native["hi"][0]
    assert native["mean"][1] == pytest.approx(2.0) and native["hi"][1] - native["lo"][1] == pytest.approx(0.0)
    assert rag["hi"][1] < native["lo"][1]
    assert set(per_world_curves(runs, edges)["w3"]) == {"native", "rag"}
