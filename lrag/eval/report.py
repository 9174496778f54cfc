"""A/B report of retrieval against the native baseline: Markdown, JSON, plots, TensorBoard.

The input is one :class:`RunResult` per (world, variant) pair. ``native`` is the baseline
variant (``memory_size: 0``); every other variant (``rag-avg_pool``, ``rag-oracle``, …) is
compared with it on the same world, and the relative change is averaged over worlds.

Outputs of :func:`write_report` in ``out_dir``:

* ``report.md``: one table per world plus an aggregated table, relative change in %.
* ``report.json``: every run's scalars, series and retrievals plus the aggregate, so later
  tooling never has to parse Markdown.
* ``metrics_vs_time.png`` (each series, native vs the other variants) and
  ``retrievals.png`` (retrieved frame index vs block, one panel per RAG variant and world).
* TensorBoard scalars under ``tb_dir`` (``eval/<variant>/<metric>`` aggregated, and
  ``eval/<world>/<variant>/<series>`` per step).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written headless (CI, GPU boxes); never open a window
import matplotlib.pyplot as plt  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

log = logging.getLogger(__name__)

__all__ = [
    "BASELINE",
    "COLUMNS",
    "Column",
    "ReportPaths",
    "RunResult",
    "aggregate",
    "load_report",
    "markdown_report",
    "relative_change",
    "write_report",
]

BASELINE = "native"
REPORT_VERSION = 1


@dataclass(frozen=True)
class Column:
    """One metric column of the table.

    Attributes:
        key: Key in :attr:`RunResult.scalars`.
        label: Column header.
        lower_is_better: Direction, shown as an arrow in the header.
    """

    key: str
    label: str
    lower_is_better: bool | None


#: Known metrics in table order. Scalars with other keys are appended after these.
COLUMNS: tuple[Column, ...] = (
    Column("revisit_inconsistency", "revisit inconsistency", True),
    Column("frame_variance", "frame variance", None),
    Column("landmark_drift", "landmark drift", True),
    Column("quality_drift_slope", "quality drift slope", True),
    Column("retrieval_precision", "retrieval P@K", False),
    Column("retrieval_recall", "retrieval R@K", False),
    Column("frames_per_s", "frames/s", False),
)

#: The metric whose relative change is the headline of the report.
HEADLINE = "revisit_inconsistency"


@dataclass
class RunResult:
    """Metrics of one generated video.

    Attributes:
        world: World identifier (e.g. ``"world-1000"``).
        variant: ``"native"`` for the baseline, any other name for a retrieval variant.
        scalars: Final metric values, e.g. ``{"revisit_inconsistency": 0.12, ...}``.
        series: Metric values over time (one value per block), same keys or others.
        retrievals: Per block that retrieved: ``{"block": b, "frames": [f0, f1, ...]}``
            (global frame indices of the first batch element, most similar first).
    """

    world: str
    variant: str
    scalars: dict[str, float]
    series: dict[str, list[float]] = field(default_factory=dict)
    retrievals: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class ReportPaths:
    """Files written by :func:`write_report`."""

    markdown: Path
    json: Path
    plots: tuple[Path, ...]
    tensorboard: Path | None


def relative_change(value: float, baseline: float) -> float:
    """Relative change of ``value`` against ``baseline`` in percent (NaN if undefined)."""
    if not (math.isfinite(value) and math.isfinite(baseline)) or baseline == 0:
        return math.nan
    return 100.0 * (value - baseline) / abs(baseline)


def _columns(results: list[RunResult]) -> list[Column]:
    known = {c.key for c in COLUMNS}
    present = {k for r in results for k in r.scalars}
    extra = sorted(present - known)
    return [c for c in COLUMNS if c.key in present] + [Column(k, k, None) for k in extra]


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _check(results: list[RunResult]) -> None:
    if not results:
        raise ValueError("report: no run results given; run at least one world and variant.")
    seen: set[tuple[str, str]] = set()
    for r in results:
        if (r.world, r.variant) in seen:
            raise ValueError(
                f"report: duplicate result for world {r.world!r}, variant {r.variant!r}; "
                "give each (world, variant) pair once."
            )
        seen.add((r.world, r.variant))


def aggregate(results: list[RunResult]) -> dict[str, dict[str, float]]:
    """Per variant: the mean of each scalar over worlds and, for non-baseline variants, the
    mean over worlds of the per-world relative change against ``native`` (``<key>_change_pct``).

    Args:
        results: One result per (world, variant).

    Returns:
        ``{variant: {metric: mean, metric_change_pct: mean %, "worlds": n}}``.
    """
    _check(results)
    by_key = {(r.world, r.variant): r for r in results}
    variants = list(dict.fromkeys(r.variant for r in results))
    out: dict[str, dict[str, float]] = {}
    for variant in variants:
        runs = [r for r in results if r.variant == variant]
        row: dict[str, float] = {"worlds": float(len(runs))}
        for col in _columns(runs):
            row[col.key] = _mean([r.scalars.get(col.key, math.nan) for r in runs])
            if variant != BASELINE:
                changes = [
                    relative_change(r.scalars.get(col.key, math.nan),
                                    by_key[(r.world, BASELINE)].scalars.get(col.key, math.nan))
                    for r in runs if (r.world, BASELINE) in by_key
                ]
                row[f"{col.key}_change_pct"] = _mean(changes)
        out[variant] = row
    return out


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:.4g}"


def _fmt_pct(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:+.1f} %"


def _table(rows: dict[str, dict[str, float]], columns: list[Column]) -> list[str]:
    def head(c: Column) -> str:
        arrow = "" if c.lower_is_better is None else (" ↓" if c.lower_is_better else " ↑")
        return c.label + arrow

    lines = ["| variant | " + " | ".join(head(c) for c in columns) + f" | Δ {HEADLINE} |"]
    lines.append("|" + "---|" * (len(columns) + 2))
    for variant, row in rows.items():
        cells = []
        for c in columns:
            cell = _fmt(row.get(c.key, math.nan))
            pct = row.get(f"{c.key}_change_pct")
            if pct is not None and math.isfinite(pct) and c.key != HEADLINE:
                cell += f" ({_fmt_pct(pct)})"
            cells.append(cell)
        headline = _fmt_pct(row.get(f"{HEADLINE}_change_pct", math.nan))
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {headline} |")
    return lines


def _per_world_rows(results: list[RunResult], world: str) -> dict[str, dict[str, float]]:
    runs = {r.variant: r for r in results if r.world == world}
    base = runs.get(BASELINE)
    rows: dict[str, dict[str, float]] = {}
    for variant, r in runs.items():
        row = dict(r.scalars)
        if base is not None and variant != BASELINE:
            for k, v in r.scalars.items():
                row[f"{k}_change_pct"] = relative_change(v, base.scalars.get(k, math.nan))
        rows[variant] = row
    return rows


def markdown_report(results: list[RunResult], title: str = "Retrieval A/B report") -> str:
    """The Markdown report: aggregated table first, then one table per world.

    Relative changes are against ``native`` on the same world; for the aggregate they are
    averaged over worlds (not the change of the averages), so one easy world cannot hide others.
    """
    agg = aggregate(results)
    # Only the headline columns: every other scalar is in report.json.
    columns = [c for c in _columns(results) if c in COLUMNS]
    worlds = list(dict.fromkeys(r.world for r in results))
    lines = [f"# {title}", "", f"Worlds: {len(worlds)}. Baseline: `{BASELINE}` "
             "(memory_size 0, same seeds, worlds and attention budget).", ""]
    lines += ["## Aggregated over worlds", ""] + _table(agg, columns) + [""]
    for world in worlds:
        lines += [f"## {world}", ""] + _table(_per_world_rows(results, world), columns) + [""]
    return "\n".join(lines)


def _plot_series(results: list[RunResult], path: Path) -> Path | None:
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
                    style = "k-" if r.variant == BASELINE else "-"
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


def _plot_retrievals(results: list[RunResult], path: Path) -> Path | None:
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


def _write_tensorboard(results: list[RunResult], agg: dict[str, dict[str, float]],
                       tb_dir: Path) -> None:
    with SummaryWriter(log_dir=str(tb_dir)) as writer:
        for variant, row in agg.items():
            for key, value in row.items():
                if math.isfinite(value):
                    writer.add_scalar(f"eval/{variant}/{key}", value, 0)
        for r in results:
            for key, values in r.series.items():
                for step, value in enumerate(values):
                    if math.isfinite(value):
                        writer.add_scalar(f"eval/{r.world}/{r.variant}/{key}", value, step)


def _json_safe(obj):
    """NaN/inf are not JSON; write them as null so any JSON reader can load the report."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_report(results: list[RunResult], out_dir: str | Path,
                 tb_dir: str | Path | None = None, meta: dict | None = None) -> ReportPaths:
    """Write ``report.md``, ``report.json``, the plots and (optionally) TensorBoard scalars.

    Args:
        results: One :class:`RunResult` per (world, variant); include ``native`` for changes.
        out_dir: Folder for the report files (created).
        tb_dir: TensorBoard log folder; ``None`` skips TensorBoard.
        meta: Extra JSON-serialisable facts recorded in ``report.json`` (config, seeds, device).

    Returns:
        The paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    agg = aggregate(results)
    md_path = out / "report.md"
    md_path.write_text(markdown_report(results) + "\n")
    doc = {"version": REPORT_VERSION, "baseline": BASELINE, "meta": meta or {},
           "aggregate": agg, "runs": [asdict(r) for r in results]}
    json_path = out / "report.json"
    json_path.write_text(json.dumps(_json_safe(doc), indent=2) + "\n")
    plots = [p for p in (_plot_series(results, out / "metrics_vs_time.png"),
                         _plot_retrievals(results, out / "retrievals.png")) if p is not None]
    tb = None
    if tb_dir is not None:
        tb = Path(tb_dir)
        _write_tensorboard(results, agg, tb)
    log.info("report written to %s (%d runs)", out, len(results))
    return ReportPaths(md_path, json_path, tuple(plots), tb)


def load_report(path: str | Path) -> dict:
    """Read a ``report.json`` back; raises naming the file if it is not a report."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read report JSON ({err}); rerun `lrag eval`.") from err
    if not isinstance(doc, dict) or doc.get("version") != REPORT_VERSION:
        raise ValueError(f"{path}: not an lrag report (field 'version' must be {REPORT_VERSION}).")
    return doc
