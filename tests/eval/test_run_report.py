"""``lrag eval run`` numbers on hand-made runs written through the real store and shard writer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lrag.runs.outputs import RunOutputs
from lrag.eval.run_report import RunReportError, load_run, run_numbers, write_run_report
from lrag.eval.run_stats import flicker, retrieval_summary, self_similarity_by_gap, video_summary
from lrag.memory.schema import FrameRow, RetrievalRow, RunInfo
from lrag.memory.store import MemoryStore

FPB = 3


def _write_run(tmp_path, run_id: str, video: torch.Tensor, retrievals=()) -> tuple[str, MemoryStore]:
    """A run as `lrag predict` leaves it: block files + shards under runs/<id>, rows in the store."""
    db = tmp_path / "runs" / "memory.lancedb"
    store = MemoryStore(db)
    config = f"model:\n  init_args:\n    out_dir: {tmp_path / 'runs'}\n    window: 6\n"
    store.start_run(RunInfo(run_id=run_id, config_yaml=config, backbone="hand-made",
                            frames_planned=video.shape[0]))
    outputs = RunOutputs(tmp_path / "runs" / run_id, run_id, {"prompt": "x", "fps": 4.0}, 4.0,
                         write_video=False)
    for block in range(video.shape[0] // FPB):
        start = block * FPB
        latents = video[start:start + FPB]
        loc = outputs.write_block(block, start, latents)
        rows = [FrameRow(run_id, start + j, block, latents[j].mean(dim=(-2, -1)).numpy(), loc.shard, loc.key,
                         descriptor="avg_pool") for j in range(FPB)]
        store.add_block(run_id, block, rows, [r for r in retrievals if r.block_index == block])
    store.set_status(run_id, "complete")
    return str(db), store


def test_constant_video_has_no_flicker_no_drift_and_self_similarity_one(tmp_path) -> None:
    frame = torch.randn(4, 4, 4)
    video = frame.expand(24, -1, -1, -1).clone()
    db, _ = _write_run(tmp_path, "const", video)
    data = load_run(db, "const")
    assert data.latents.shape == (24, 4, 4, 4) and data.blocks.tolist()[:4] == [0, 0, 0, 1]
    s = run_numbers(data)["summary"]
    assert s["flicker"] == 0.0 and s["flicker_across_blocks"] == 0.0
    assert s["frame_mean_slope"] == pytest.approx(0.0, abs=1e-12)
    assert s["frame_std_slope"] == pytest.approx(0.0, abs=1e-12) and s["frame_std_change_pct"] == 0.0
    assert s["self_similarity_gap1"] == pytest.approx(1.0) and s["self_similarity_mean"] == pytest.approx(1.0)
    assert s["self_similarity_beyond_window"] == pytest.approx(1.0)
    assert s["retrieval_retrievals"] == 0 and math.isnan(s["retrieval_age_mean"])


def test_random_frames_flicker_twice_the_variance_and_are_not_self_similar(tmp_path) -> None:
    torch.manual_seed(0)
    sigma = 0.5
    video = sigma * torch.randn(48, 16, 8, 8)
    # two retrievals in block 10 (query frame 30): frames 3 (age 27, score 0.5) and 20 (age 10, 0.25)
    retr = [RetrievalRow("rnd", 10, 30, 0, 3, 0.5), RetrievalRow("rnd", 10, 30, 1, 20, 0.25)]
    db, _ = _write_run(tmp_path, "rnd", video, retr)
    doc = run_numbers(load_run(db, "rnd"))
    s = doc["summary"]
    assert s["flicker"] == pytest.approx(2 * sigma**2, rel=0.03)  # stored as float16: still within 3 %
    assert s["flicker_within_block"] == pytest.approx(s["flicker_across_blocks"], rel=0.1)
    assert abs(s["self_similarity_mean"]) < 0.06 and abs(s["self_similarity_gap1"]) < 0.15
    assert abs(s["frame_std_slope"]) < 1e-3 and abs(s["frame_mean_slope"]) < 1e-3
    assert s["retrieval_retrievals"] == 2 and s["retrieval_age_mean"] == pytest.approx(18.5)
    assert s["retrieval_age_min"] == 10 and s["retrieval_score_top_mean"] == pytest.approx(0.5)
    assert doc["series"]["self_similarity"]["gap"][0] == 1 and len(doc["series"]["flicker"]) == 47


def test_report_files_and_errors(tmp_path) -> None:
    db, _ = _write_run(tmp_path, "r", torch.randn(12, 4, 4, 4))
    paths = write_run_report(load_run(db, "r"), max_gap=5)
    assert paths.markdown.parent == tmp_path / "runs" / "r" / "eval"
    doc = json.loads(paths.json.read_text())
    assert doc["run_id"] == "r" and doc["series"]["self_similarity"]["gap"] == [1, 2, 3, 4, 5]
    assert "| flicker |" in paths.markdown.read_text() and paths.figure.stat().st_size > 10_000
    with pytest.raises(RunReportError, match="unknown run 'nope'.*recent runs: r"):
        load_run(db, "nope")
    with pytest.raises(RunReportError, match="--run_dir"):
        load_run(db, "r", run_dir=tmp_path / "elsewhere")
    with pytest.raises(RunReportError, match="does not exist"):
        load_run(tmp_path / "no.lancedb", "r")


def test_pure_functions_on_known_inputs() -> None:
    video = torch.zeros(3, 1, 1, 2)
    video[1] = 1.0
    assert flicker(video).tolist() == [1.0, 1.0]
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    gaps, cos, pairs = self_similarity_by_gap(emb, 10)
    assert gaps.tolist() == [1, 2] and cos.tolist() == pytest.approx([0.0, 1.0]) and pairs.tolist() == [2, 1]
    s = video_summary(video, torch.tensor([0, 0, 1]))
    assert s["flicker_within_block"] == 1.0 and s["flicker_across_blocks"] == 1.0
    r = retrieval_summary([9, 9, 12], [1, 5, 1], [0.9, 0.1, 0.7], [0, 1, 0])
    assert r["age_mean"] == pytest.approx((8 + 4 + 11) / 3) and r["distinct_frames"] == 2
    assert r["score_top_mean"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match=r"\[F, C, H, W\]"):
        flicker(torch.zeros(2, 3))
