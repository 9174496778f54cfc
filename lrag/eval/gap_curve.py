"""Revisit error against the time between the two views of a place, over worlds.

Each run carries its mean revisit MSE per integer gap ``Δt = later − earlier`` (with the number
of pairs behind each value, :func:`lrag.eval.functional.revisit_errors_by_gap`). Gaps are
grouped into bins shared by every run; a run's value in a bin is the pair-weighted mean of its
gaps there, and a variant's curve is the mean over worlds with a percentile-bootstrap interval
over worlds (:func:`lrag.eval.bootstrap.bootstrap_mean`). Pure numpy, no plotting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from lrag.eval.bootstrap import DEFAULT_RESAMPLES, bootstrap_mean

if TYPE_CHECKING:
    from lrag.eval.report import RunResult

__all__ = ["DEFAULT_BINS", "bin_run", "gap_bins", "gap_curves", "per_world_curves"]

#: Bins of the headline figure: enough to show the trend, few enough that each bin holds
#: pairs from most worlds at 120 frames (gaps 10..~100).
DEFAULT_BINS = 8


def _gaps(run: RunResult) -> np.ndarray:
    return np.asarray(run.revisit_by_gap.get("gap", []), dtype=np.int64)


def gap_bins(results: Sequence[RunResult], num_bins: int = DEFAULT_BINS) -> np.ndarray:
    """Integer bin edges ``[B + 1]`` spanning every run's gaps (``[lo, hi)`` per bin).

    Empty when no run has a revisit pair. Fewer than ``num_bins`` bins when the gaps span
    fewer distinct values.
    """
    if num_bins < 1:
        raise ValueError(f"gap bins: num_bins={num_bins} must be >= 1.")
    gaps = np.concatenate([_gaps(r) for r in results] or [np.zeros(0, np.int64)])
    if gaps.size == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = int(gaps.min()), int(gaps.max()) + 1
    return np.unique(np.linspace(lo, hi, min(num_bins, hi - lo) + 1).round().astype(np.int64))


def bin_run(run: RunResult, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A run's pair-weighted mean MSE ``[B]`` per bin (NaN where it has no pair) and pairs ``[B]``."""
    bins = max(len(edges) - 1, 0)
    gaps = _gaps(run)
    mse = np.asarray(run.revisit_by_gap.get("mse", []), dtype=np.float64)
    pairs = np.asarray(run.revisit_by_gap.get("pairs", []), dtype=np.float64)
    if not (len(gaps) == len(mse) == len(pairs)):
        raise ValueError(f"{run.world}/{run.variant}: revisit_by_gap lists differ in length "
                         f"(gap {len(gaps)}, mse {len(mse)}, pairs {len(pairs)}).")
    idx = np.searchsorted(edges, gaps, side="right") - 1  # bin of each gap
    keep = (idx >= 0) & (idx < bins)
    total = np.bincount(idx[keep], weights=(mse * pairs)[keep], minlength=bins)
    count = np.bincount(idx[keep], weights=pairs[keep], minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean, count


def gap_curves(results: Sequence[RunResult], edges: np.ndarray, resamples: int = DEFAULT_RESAMPLES,
               confidence: float = 0.95, seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """Per variant: bin centres, mean over worlds, interval bounds and worlds per bin.

    Returns:
        ``{variant: {"edges", "centre", "mean", "lo", "hi", "worlds"}}`` (lists, one entry per
        bin; ``edges`` has one more), variants in first-seen order.
    """
    edges = np.asarray(edges, dtype=np.int64)
    centre = ((edges[:-1] + edges[1:] - 1) / 2.0).tolist()
    out: dict[str, dict[str, list[float]]] = {}
    for variant in dict.fromkeys(r.variant for r in results):
        bins = max(len(edges) - 1, 0)
        rows = [bin_run(r, edges)[0] for r in results if r.variant == variant]
        per_world = np.array(rows).reshape(len(rows), bins)  # (worlds, bins)
        ivs = [bootstrap_mean(per_world[:, b], resamples, confidence, seed) for b in range(per_world.shape[1])]
        out[variant] = {"edges": edges.tolist(), "centre": centre, "mean": [iv.mean for iv in ivs],
                        "lo": [iv.lo for iv in ivs], "hi": [iv.hi for iv in ivs],
                        "worlds": [iv.n for iv in ivs]}
    return out


def per_world_curves(results: Sequence[RunResult], edges: np.ndarray) -> dict[str, dict[str, list[float]]]:
    """``{world: {variant: binned mean MSE}}`` for the per-world panels."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in results:
        out.setdefault(r.world, {})[r.variant] = bin_run(r, edges)[0].tolist()
    return out
