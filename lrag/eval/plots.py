"""Figures of the A/B report (headless matplotlib, PNG files).

* :func:`plot_gap_curves`: the headline, revisit error against the gap between the two views
  of a place, mean over worlds with its 95 % band, one line per variant.
* :func:`plot_gap_per_world`: the same per world, one panel each.
* :func:`plot_series`: each per-block series, native vs the other variants, per world.
* :func:`plot_retrievals`: retrieved frame index vs block, one panel per RAG run.
* :func:`plot_run_report`: the four panels of ``lrag eval run`` (one stored run, no ground truth).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import matplotlib

matplotlib.use("Agg")  # reports are written headless (CI, GPU boxes); never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from lrag.eval.report import RunResult

__all__ = ["plot_gap_curves", "plot_gap_per_world", "plot_retrievals", "plot_run_report", "plot_series"]


def _style(variant: str, baseline: str, index: int) -> dict:
    # native always black, the oracle (ground-truth retrieval) dashed: the two references
    if variant == baseline:
        return {"color": "black", "linestyle": "-"}
    colour = plt.get_cmap("tab10")(index % 10)
    return {"color": colour, "linestyle": "--" if "oracle" in variant else "-"}


def plot_gap_curves(curves: dict[str, dict[str, list[float]]], path: Path, baseline: str,
                    confidence: float = 0.95) -> Path | None:
    """Mean revisit MSE per gap bin with its bootstrap band, one line per variant."""
    if not curves or not next(iter(curves.values()))["centre"]:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for i, (variant, c) in enumerate(curves.items()):
        x = np.asarray(c["centre"], dtype=float)
        mean, lo, hi = (np.asarray(c[k], dtype=float) for k in ("mean", "lo", "hi"))
        style = _style(variant, baseline, i)
        ax.plot(x, mean, marker="o", ms=3, label=variant, **style)
        ax.fill_between(x, lo, hi, color=style["color"], alpha=0.15, linewidth=0)
    worlds = max(max(c["worlds"], default=0) for c in curves.values())
    # a bin that few worlds reach is a thin mean (no band with one world): print the count
    counts = curves.get(baseline, next(iter(curves.values())))
    for x, n in zip(counts["centre"], counts["worlds"]):
        ax.text(x, 0.02, f"{n}", transform=ax.get_xaxis_transform(), ha="center", fontsize=7, color="0.35")
    ax.text(0.0, 0.07, " worlds per bin:", transform=ax.transAxes, fontsize=7, color="0.35")
    ax.set(xlabel="Δt between the two views of a place (latent frames)",
           ylabel="revisit MSE (lower = more consistent)",
           title=f"Revisit error vs time since the place was seen: mean over {worlds} worlds, "
                 f"{round(confidence * 100)} % bootstrap band")
    ax.title.set_fontsize(9)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_gap_per_world(per_world: dict[str, dict[str, list[float]]], edges: Sequence[int], path: Path,
                       baseline: str) -> Path | None:
    """One panel per world: binned revisit MSE against the gap, one line per variant."""
    if not per_world or len(edges) < 2:
        return None
    centre = [(a + b - 1) / 2 for a, b in zip(edges[:-1], edges[1:])]
    cols = min(4, len(per_world))
    rows = math.ceil(len(per_world) / cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(3.4 * cols, 2.6 * rows), sharey=True)
    for ax, (world, variants) in zip(axes.flat, per_world.items()):
        for i, (variant, values) in enumerate(variants.items()):
            ax.plot(centre, values, marker=".", label=variant, **_style(variant, baseline, i))
        ax.set_title(world, fontsize=8)
        ax.set_xlabel("Δt (frames)", fontsize=7)
    for ax in list(axes.flat)[len(per_world):]:
        ax.axis("off")
    axes[0][0].set_ylabel("revisit MSE", fontsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_series(results: Sequence[RunResult], path: Path, baseline: str) -> Path | None:
    """Each per-block series (rows) of each world (columns), native drawn in black."""
    keys = sorted({k for r in results for k in r.series})
    if not keys:
        return None
    worlds = list(dict.fromkeys(r.world for r in results))
    fig, axes = plt.subplots(len(keys), len(worlds), squeeze=False,
                             figsize=(4 * len(worlds), 2.6 * len(keys)))
    for i, key in enumerate(keys):
        for j, world in enumerate(worlds):
            ax = axes[i][j]
            drawn = False
            for r in results:
                if r.world == world and key in r.series:
                    style = "k-" if r.variant == baseline else "-"
                    ax.plot(range(len(r.series[key])), r.series[key], style, label=r.variant)
                    drawn = True
            ax.set_title(f"{world}: {key}", fontsize=8)
            ax.set_xlabel("block", fontsize=7)
            if drawn:
                ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_retrievals(results: Sequence[RunResult], path: Path) -> Path | None:
    """Retrieved frame index against block, one panel per run that retrieved."""
    runs = [r for r in results if r.retrievals]
    if not runs:
        return None
    fig, axes = plt.subplots(len(runs), 1, squeeze=False, figsize=(6, 2.4 * len(runs)))
    for ax, r in zip((a[0] for a in axes), runs):
        for entry in r.retrievals:
            frames = entry["frames"]
            ax.scatter([entry["block"]] * len(frames), frames, s=10,
                       c=range(len(frames)), cmap="viridis", vmin=0, vmax=max(len(frames) - 1, 1))
        ax.set_title(f"{r.world} / {r.variant}: retrieved frame vs block", fontsize=8)
        ax.set_xlabel("block", fontsize=7)
        ax.set_ylabel("frame", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_run_report(series: dict, path: Path, title: str, window: int | None = None) -> Path:
    """Self-similarity vs Δt, frame mean/std vs frame, flicker vs frame, retrieved-frame age.

    Args:
        series: ``run_numbers(...)["series"]`` of :mod:`lrag.eval.run_report`.
        path: Output PNG.
        title: Figure title (the run id).
        window: Attention window in frames, marked on the Δt axis when known.
    """
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), dpi=100)
    (sim_ax, stat_ax), (flick_ax, ret_ax) = axes
    sim = series["self_similarity"]
    sim_ax.plot(sim["gap"], sim["cosine"], color="tab:blue")
    if window:
        sim_ax.axvline(window, color="0.5", ls=":", label=f"window ({window})")
        sim_ax.legend(fontsize=7)
    sim_ax.set(xlabel="Δt (latent frames)", ylabel="cosine of descriptors", title="descriptor self-similarity")
    frames = np.arange(len(series["frame_mean"]))
    stat_ax.plot(frames, series["frame_mean"], label="mean")
    stat_ax.plot(frames, series["frame_std"], label="std")
    stat_ax.set(xlabel="frame", ylabel="latent value", title="frame statistics")
    stat_ax.legend(fontsize=7)
    flick = np.asarray(series["flicker"], dtype=float)
    blocks = np.asarray(series["block_index"])
    seam = blocks[1:] != blocks[:-1]
    x = np.arange(1, len(flick) + 1)  # transition t-1 -> t drawn at t
    flick_ax.plot(x, flick, color="0.3", lw=1)
    flick_ax.scatter(x[seam], flick[seam], s=10, color="tab:red", zorder=3, label="block boundary")
    flick_ax.set(xlabel="frame", ylabel="MSE to previous frame", title="flicker")
    flick_ax.legend(fontsize=7)
    ret = series["retrievals"]
    if ret.get("query_frame"):
        age = np.asarray(ret["query_frame"]) - np.asarray(ret["retrieved_frame"])
        points = ret_ax.scatter(ret["query_frame"], age, c=ret["score"], cmap="viridis", s=14)
        fig.colorbar(points, ax=ret_ax, label="cosine score")
    else:
        ret_ax.text(0.5, 0.5, "no retrievals (native run or memory never filled)",
                    transform=ret_ax.transAxes, ha="center", va="center", color="0.4", fontsize=8)
    ret_ax.set(xlabel="query frame", ylabel="age of retrieved frame", title="what retrieval selected")
    for ax in axes.flat:
        ax.title.set_fontsize(9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
