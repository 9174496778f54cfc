"""Tests of the A/B report: numbers, Markdown, JSON, plots and TensorBoard read back."""

from __future__ import annotations

import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lrag.eval.report import (
    RunResult,
    aggregate,
    load_report,
    load_results,
    markdown_report,
    relative_change,
    write_report,
)


def _results() -> list[RunResult]:
    return [
        RunResult("w0", "native", {"revisit_inconsistency": 0.5, "frames_per_s": 10.0},
                  series={"revisit_inconsistency": [0.4, 0.5, 0.6]},
                  revisit_by_gap={"gap": [10, 20], "mse": [0.4, 0.6], "pairs": [2, 1]}),
        RunResult("w0", "rag", {"revisit_inconsistency": 0.25, "frames_per_s": 9.0},
                  series={"revisit_inconsistency": [0.3, 0.2, 0.25]},
                  retrievals=[{"block": 2, "frames": [1, 3]}, {"block": 3, "frames": [4, 1]}],
                  revisit_by_gap={"gap": [10, 20], "mse": [0.2, 0.3], "pairs": [2, 1]}),
        RunResult("w1", "native", {"revisit_inconsistency": 1.0, "frames_per_s": 10.0},
                  revisit_by_gap={"gap": [12], "mse": [1.0], "pairs": [4]}),
        RunResult("w1", "rag", {"revisit_inconsistency": 1.5, "frames_per_s": 8.0},
                  revisit_by_gap={"gap": [12], "mse": [1.5], "pairs": [4]}),
    ]


def test_relative_change() -> None:
    assert relative_change(0.75, 1.0) == pytest.approx(-25.0)
    assert relative_change(-2.0, -1.0) == pytest.approx(-100.0)
    assert math.isnan(relative_change(1.0, 0.0))


def test_aggregate_averages_per_world_changes() -> None:
    agg = aggregate(_results())
    assert agg["native"]["revisit_inconsistency"] == pytest.approx(0.75)
    assert agg["rag"]["revisit_inconsistency"] == pytest.approx(0.875)
    # per-world changes are -50 % and +50 %: the mean is 0, not the change of the means
    assert agg["rag"]["revisit_inconsistency_change_pct"] == pytest.approx(0.0)
    assert agg["rag"]["frames_per_s_change_pct"] == pytest.approx(-15.0)
    assert "revisit_inconsistency_change_pct" not in agg["native"]
    # intervals over worlds: with two worlds the resampled means lie between the two values
    assert agg["rag"]["revisit_inconsistency_change_pct_lo"] == pytest.approx(-50.0)
    assert agg["rag"]["revisit_inconsistency_change_pct_hi"] == pytest.approx(50.0)
    assert 0.25 <= agg["rag"]["revisit_inconsistency_lo"] < agg["rag"]["revisit_inconsistency_hi"] <= 1.5
    # w0 improved (0.25 < 0.5), w1 did not; frames/s is higher-is-better and fell in both
    assert agg["rag"]["revisit_inconsistency_improved"] == pytest.approx(0.5)
    assert agg["rag"]["revisit_inconsistency_improved_of"] == 2
    assert agg["rag"]["frames_per_s_improved"] == 0.0


def test_duplicate_or_empty_results_raise() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        aggregate(_results() + [RunResult("w0", "rag", {})])
    with pytest.raises(ValueError, match="no run results"):
        aggregate([])


def test_markdown_has_tables_per_world() -> None:
    md = markdown_report(_results())
    assert "## Aggregated over worlds" in md and "## w0" in md and "## w1" in md
    assert "-50.0 %" in md and "+50.0 %" in md
    assert "revisit inconsistency ↓" in md
    assert "## Mean and 95 % interval over worlds" in md
    row = next(line for line in md.splitlines() if line.startswith("| rag | revisit inconsistency"))
    assert "+0.0 % [-50.0, +50.0]" in row and row.endswith("| 1/2 |")


def test_write_report_round_trip(tmp_path) -> None:
    paths = write_report(_results(), tmp_path / "out", tb_dir=tmp_path / "tb", meta={"seed": 3})
    doc = load_report(paths.json)
    assert doc["meta"] == {"seed": 3}
    assert doc["aggregate"]["rag"]["frames_per_s"] == pytest.approx(8.5)
    assert doc["runs"][1]["retrievals"][0]["frames"] == [1, 3]
    assert {p.name for p in paths.plots} == {"metrics_vs_time.png", "retrievals.png", "revisit_vs_gap.png",
                                             "revisit_vs_gap_per_world.png"}
    assert paths.headline.name == "revisit_vs_gap.png"
    assert all(p.stat().st_size > 1000 for p in paths.plots)
    # the headline curve: bins span gaps 10..20; each gap's bin holds the worlds that have it
    curve = doc["revisit_vs_gap"]["native"]
    edges = curve["edges"]
    assert edges[0] == 10 and edges[-1] == 21
    for gap, mean in ((10, 0.4), (12, 1.0), (20, 0.6)):
        b = max(i for i, e in enumerate(edges[:-1]) if e <= gap)
        assert curve["worlds"][b] == 1 and curve["mean"][b] == pytest.approx(mean)
    assert doc["bootstrap"]["unit"] == "world"
    acc = EventAccumulator(str(paths.tensorboard), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "eval/rag/revisit_inconsistency_change_pct" in tags
    assert "eval/rag/revisit_inconsistency_change_pct_lo" in tags
    image = acc.Images("eval/revisit_vs_gap")[0]
    assert image.width > 300 and image.encoded_image_string.startswith(b"\x89PNG")
    text = acc.Tensors("eval/report/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "## Mean and 95 % interval over worlds" in text
    steps = acc.Scalars("eval/w0/rag/revisit_inconsistency")
    assert [e.step for e in steps] == [0, 1, 2]
    assert steps[1].value == pytest.approx(0.2)


def test_nan_is_written_as_null(tmp_path) -> None:
    res = [RunResult("w", "native", {"retrieval_recall": math.nan})]
    doc = load_report(write_report(res, tmp_path).json)
    assert doc["runs"][0]["scalars"]["retrieval_recall"] is None


def test_results_round_trip_through_json(tmp_path) -> None:
    results = _results() + [RunResult("w2", "native", {"revisit_inconsistency": math.nan})]
    back = load_results(write_report(results, tmp_path).json)
    assert [(r.world, r.variant) for r in back] == [(r.world, r.variant) for r in results]
    assert back[1].revisit_by_gap == results[1].revisit_by_gap and math.isnan(back[4].scalars["revisit_inconsistency"])
    assert aggregate(back)["rag"] == pytest.approx(aggregate(results)["rag"], nan_ok=True)


def test_load_report_rejects_other_json(tmp_path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="version"):
        load_report(bad)
