"""The bootstrap interval on distributions whose true mean and spread are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lrag.eval.bootstrap import bootstrap_mean, improved_fraction


def test_interval_covers_true_mean_about_95_percent() -> None:
    rng = np.random.default_rng(123)
    trials, n, true_mean = 400, 40, 3.0
    covered = 0
    for trial in range(trials):
        iv = bootstrap_mean(rng.normal(true_mean, 2.0, size=n), resamples=1000, seed=trial)
        covered += iv.lo <= true_mean <= iv.hi
    # percentile bootstrap under-covers slightly at n = 40 (~0.94); binomial SE here is 0.011
    assert 0.91 <= covered / trials <= 0.98


def test_width_shrinks_like_one_over_sqrt_n() -> None:
    rng = np.random.default_rng(7)
    widths = {}
    for n in (25, 400):
        ivs = [bootstrap_mean(rng.normal(0.0, 1.0, size=n), resamples=1000, seed=s) for s in range(20)]
        widths[n] = float(np.mean([iv.hi - iv.lo for iv in ivs]))
        # normal theory: 2 * 1.96 * sigma / sqrt(n)
        assert widths[n] == pytest.approx(2 * 1.96 / math.sqrt(n), rel=0.15)
    assert widths[25] / widths[400] == pytest.approx(4.0, rel=0.15)


def test_seeded_nan_dropped_and_degenerate_cases() -> None:
    x = [1.0, 2.0, math.nan, 4.0]
    a, b = bootstrap_mean(x, seed=5), bootstrap_mean(x, seed=5)
    assert a == b and a.n == 3 and a.mean == pytest.approx(7 / 3)
    assert 1.0 <= a.lo < a.mean < a.hi <= 4.0
    one = bootstrap_mean([2.5])
    assert one.mean == 2.5 and math.isnan(one.lo) and math.isnan(one.hi)
    assert math.isnan(bootstrap_mean([]).mean)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean(x, confidence=95)


def test_improved_fraction_uses_direction_and_skips_nan() -> None:
    assert improved_fraction([1.0, 3.0, 2.0, math.nan], [2.0, 2.0, 2.0, 1.0], True) == pytest.approx(1 / 3)
    assert improved_fraction([1.0, 3.0], [2.0, 2.0], False) == pytest.approx(0.5)
    assert math.isnan(improved_fraction([1.0], [2.0], None))
