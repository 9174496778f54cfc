"""A/B report of retrieval against the native baseline: Markdown, JSON, plots, TensorBoard.

The input is one :class:`RunResult` per (world, variant) pair. ``native`` is the baseline
variant (``memory_size: 0``); every other variant (``rag-avg_pool``, ``rag-oracle``, …) is
compared with it on the same world, and the relative change is averaged over worlds.

Outputs of :func:`write_report` in ``out_dir``:

* ``report.md``: the aggregated table (means, relative change in %), the mean of every metric
  and every change with its 95 % bootstrap interval over worlds and the worlds that improve,
  then one table per world.
* ``report.json``: every run's scalars, series, revisit errors per gap and retrievals, the
  aggregate (``<m>``, ``<m>_lo``/``_hi``, ``<m>_change_pct`` with ``_lo``/``_hi``,
  ``<m>_improved`` = fraction of ``<m>_improved_of`` paired worlds) and the headline curve, so
  later tooling never has to parse Markdown.
* ``revisit_vs_gap.png`` (the headline: revisit error against the gap between the two views of a
  place, mean and band over worlds per variant), ``revisit_vs_gap_per_world.png``,
  ``metrics_vs_time.png`` (each series, native vs the other variants) and ``retrievals.png``
  (retrieved frame index vs block, one panel per RAG variant and world); see
  :mod:`lrag.eval.plots`.
* TensorBoard under ``tb_dir``: scalars (``eval/<variant>/<metric>`` aggregated,
  ``eval/<world>/<variant>/<series>`` per step), the report as text (``eval/report``) and the
  headline figure as an image (``eval/revisit_vs_gap``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from lrag.eval.bootstrap import DEFAULT_RESAMPLES, bootstrap_mean, improved_fraction
from lrag.eval.gap_curve import gap_bins, gap_curves, per_world_curves
from lrag.eval.plots import plot_gap_curves, plot_gap_per_world, plot_retrievals, plot_series

log = logging.getLogger(__name__)

__all__ = [
    "BASELINE",
    "COLUMNS",
    "Column",
    "ReportPaths",
    "RunResult",
    "aggregate",
    "json_safe",
    "load_report",
    "load_results",
    "markdown_report",
    "relative_change",
    "write_report",
]

BASELINE = "native"
REPORT_VERSION = 1
#: Interval coverage of every aggregate and of the headline band.
CONFIDENCE = 0.95


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

#: Better directions of scalars outside the wide table (they are in the interval table).
EXTRA_DIRECTIONS: dict[str, bool] = {"revisit_cosine": False, "revisit_relative": True}

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
        revisit_by_gap: Mean revisit MSE per gap between the two views of a place:
            ``{"gap": [Δt, ...], "mse": [...], "pairs": [pairs per gap, ...]}`` (empty if the
            video has no revisit; :func:`lrag.eval.functional.revisit_errors_by_gap`).
    """

    world: str
    variant: str
    scalars: dict[str, float]
    series: dict[str, list[float]] = field(default_factory=dict)
    retrievals: list[dict] = field(default_factory=list)
    revisit_by_gap: dict[str, list] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportPaths:
    """Files written by :func:`write_report`."""

    markdown: Path
    json: Path
    plots: tuple[Path, ...]
    tensorboard: Path | None
    #: ``revisit_vs_gap.png`` (None when no run has a revisit pair); also in ``plots``.
    headline: Path | None = None


def relative_change(value: float, baseline: float) -> float:
    """Relative change of ``value`` against ``baseline`` in percent (NaN if undefined)."""
    if not (math.isfinite(value) and math.isfinite(baseline)) or baseline == 0:
        return math.nan
    return 100.0 * (value - baseline) / abs(baseline)


def _columns(results: list[RunResult]) -> list[Column]:
    known = {c.key for c in COLUMNS}
    present = {k for r in results for k in r.scalars}
    extra = sorted(present - known)
    return [c for c in COLUMNS if c.key in present] + [Column(k, k, EXTRA_DIRECTIONS.get(k)) for k in extra]


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


def aggregate(results: list[RunResult], resamples: int = DEFAULT_RESAMPLES,
              seed: int = 0) -> dict[str, dict[str, float]]:
    """Per variant and scalar: the mean over worlds with its bootstrap interval and, for
    non-baseline variants, the per-world relative change against ``native`` and the worlds
    that improve.

    Args:
        results: One result per (world, variant).
        resamples: Bootstrap resamples per interval.
        seed: Seed of the bootstrap (one report = one seed, so it is reproducible).

    Returns:
        ``{variant: {"worlds": n, m: mean, m_lo, m_hi, m_change_pct, m_change_pct_lo,
        m_change_pct_hi, m_improved, m_improved_of}}`` with ``m`` each scalar key; changes are
        in %, the mean over worlds of the per-world change; ``m_improved`` is the fraction of
        the ``m_improved_of`` worlds with both values where the variant is better (NaN for
        metrics without a better direction).
    """
    _check(results)
    by_key = {(r.world, r.variant): r for r in results}
    out: dict[str, dict[str, float]] = {}
    for variant in dict.fromkeys(r.variant for r in results):
        runs = [r for r in results if r.variant == variant]
        row: dict[str, float] = {"worlds": float(len(runs))}
        for col in _columns(runs):
            values = [r.scalars.get(col.key, math.nan) for r in runs]
            _put(row, col.key, bootstrap_mean(values, resamples, CONFIDENCE, seed))
            paired = [r for r in runs if (r.world, BASELINE) in by_key]
            if variant == BASELINE or not paired:
                continue
            mine = [r.scalars.get(col.key, math.nan) for r in paired]
            base = [by_key[(r.world, BASELINE)].scalars.get(col.key, math.nan) for r in paired]
            changes = [relative_change(v, b) for v, b in zip(mine, base)]
            _put(row, f"{col.key}_change_pct", bootstrap_mean(changes, resamples, CONFIDENCE, seed))
            row[f"{col.key}_improved"] = improved_fraction(mine, base, col.lower_is_better)
            row[f"{col.key}_improved_of"] = float(sum(math.isfinite(v) and math.isfinite(b)
                                                      for v, b in zip(mine, base)))
        out[variant] = row
    return out


def _put(row: dict[str, float], key: str, iv) -> None:
    row[key], row[f"{key}_lo"], row[f"{key}_hi"] = iv.mean, iv.lo, iv.hi


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


def _interval(row: dict[str, float], key: str, pct: bool) -> str:
    mean, lo, hi = (row.get(k, math.nan) for k in (key, f"{key}_lo", f"{key}_hi"))
    if not math.isfinite(mean):
        return "–"
    if pct:
        bounds = f" [{lo:+.1f}, {hi:+.1f}]" if math.isfinite(lo) else ""
        return f"{mean:+.1f} %{bounds}"
    return _fmt(mean) + (f" [{_fmt(lo)}, {_fmt(hi)}]" if math.isfinite(lo) else "")


def _interval_table(agg: dict[str, dict[str, float]], columns: list[Column]) -> list[str]:
    """One row per (variant, metric): mean and change vs native with intervals, worlds improved."""
    pct = round(CONFIDENCE * 100)
    lines = [f"| variant | metric | mean [{pct} % CI] | Δ vs native, mean of per-world [{pct} % CI] "
             "| worlds improved |", "|---|---|---|---|---|"]
    for variant, row in agg.items():
        for c in columns:
            if c.key not in row:
                continue
            arrow = "" if c.lower_is_better is None else (" ↓" if c.lower_is_better else " ↑")
            of = row.get(f"{c.key}_improved_of", math.nan)
            frac = row.get(f"{c.key}_improved", math.nan)
            improved = f"{round(frac * of)}/{int(of)}" if math.isfinite(frac) and of > 0 else "–"
            lines.append(f"| {variant} | {c.label}{arrow} | {_interval(row, c.key, False)} | "
                         f"{_interval(row, f'{c.key}_change_pct', True)} | {improved} |")
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


def markdown_report(results: list[RunResult], title: str = "Retrieval A/B report",
                    agg: dict[str, dict[str, float]] | None = None) -> str:
    """The Markdown report: aggregated table, intervals over worlds, then one table per world.

    Relative changes are against ``native`` on the same world; for the aggregate they are
    averaged over worlds (not the change of the averages), so one easy world cannot hide others.
    ``agg`` is :func:`aggregate` of ``results`` (computed when not given).
    """
    agg = aggregate(results) if agg is None else agg
    # Only the headline columns: every other scalar is in report.json.
    columns = [c for c in _columns(results) if c in COLUMNS]
    worlds = list(dict.fromkeys(r.world for r in results))
    lines = [f"# {title}", "", f"Worlds: {len(worlds)}. Baseline: `{BASELINE}` "
             "(memory_size 0, same seeds, worlds and attention budget).", ""]
    lines += ["## Aggregated over worlds", ""] + _table(agg, columns) + [""]
    lines += [f"## Mean and {round(CONFIDENCE * 100)} % interval over worlds", "",
              f"Every scalar of every variant. Percentile bootstrap over worlds ({DEFAULT_RESAMPLES} "
              f"resamples, seeded); Δ is the mean over worlds of the per-world change vs `{BASELINE}`; "
              "worlds improved counts worlds where the variant is better than native on that world "
              "(– where the metric has no better direction).", ""]
    lines += _interval_table(agg, _columns(results)) + [""]
    for world in worlds:
        lines += [f"## {world}", ""] + _table(_per_world_rows(results, world), columns) + [""]
    return "\n".join(lines)


def _write_tensorboard(results: list[RunResult], agg: dict[str, dict[str, float]],
                       tb_dir: Path, markdown: str, headline: Path | None) -> None:
    from PIL import Image

    with SummaryWriter(log_dir=str(tb_dir)) as writer:
        writer.add_text("eval/report", markdown, 0)
        if headline is not None:
            with Image.open(headline) as image:
                pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
            writer.add_image("eval/revisit_vs_gap", pixels, 0, dataformats="HWC")
        for variant, row in agg.items():
            for key, value in row.items():
                if math.isfinite(value):
                    writer.add_scalar(f"eval/{variant}/{key}", value, 0)
        for r in results:
            for key, values in r.series.items():
                for step, value in enumerate(values):
                    if math.isfinite(value):
                        writer.add_scalar(f"eval/{r.world}/{r.variant}/{key}", value, step)


def json_safe(obj):
    """NaN/inf are not JSON; write them as null so any JSON reader can load the report."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_report(results: list[RunResult], out_dir: str | Path,
                 tb_dir: str | Path | None = None, meta: dict | None = None) -> ReportPaths:
    """Write ``report.md``, ``report.json``, the plots and (optionally) TensorBoard logs.

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
    markdown = markdown_report(results, agg=agg)
    md_path = out / "report.md"
    md_path.write_text(markdown + "\n")
    edges = gap_bins(results)
    curves = gap_curves(results, edges, confidence=CONFIDENCE)
    doc = {"version": REPORT_VERSION, "baseline": BASELINE, "meta": meta or {},
           "bootstrap": {"resamples": DEFAULT_RESAMPLES, "confidence": CONFIDENCE, "seed": 0,
                         "unit": "world"},
           "aggregate": agg, "revisit_vs_gap": curves, "runs": [asdict(r) for r in results]}
    json_path = out / "report.json"
    json_path.write_text(json.dumps(json_safe(doc), indent=2) + "\n")
    headline = plot_gap_curves(curves, out / "revisit_vs_gap.png", BASELINE, CONFIDENCE)
    plots = [p for p in (headline,
                         plot_gap_per_world(per_world_curves(results, edges), edges.tolist(),
                                            out / "revisit_vs_gap_per_world.png", BASELINE),
                         plot_series(results, out / "metrics_vs_time.png", BASELINE),
                         plot_retrievals(results, out / "retrievals.png")) if p is not None]
    tb = None
    if tb_dir is not None:
        tb = Path(tb_dir)
        _write_tensorboard(results, agg, tb, markdown, headline)
    log.info("report written to %s (%d runs)", out, len(results))
    return ReportPaths(md_path, json_path, tuple(plots), tb, headline)


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


def load_results(path: str | Path) -> list[RunResult]:
    """The :class:`RunResult` list of a ``report.json`` (nulls back to NaN), e.g. to merge the
    worlds of several eval jobs into one report with :func:`write_report`."""
    def nan(values):
        return [math.nan if v is None else v for v in values]

    return [RunResult(r["world"], r["variant"], dict(zip(r["scalars"], nan(r["scalars"].values()))),
                      {k: nan(v) for k, v in r.get("series", {}).items()}, r.get("retrievals", []),
                      r.get("revisit_by_gap", {}))
            for r in load_report(path)["runs"]]
