"""``PredictTensorBoard``: per-block retrieval scalars and image strips, read back by TensorBoard."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

from lrag.callbacks.tensorboard import block_retrieval_scalars, frame_strip
from lrag.cli import main
from lrag.memory.store import MemoryStore

DEMO = str(Path(__file__).resolve().parents[2] / "configs" / "predict" / "demo.yaml")


def test_block_scalars_are_ages_and_scores_per_block() -> None:
    rows = {"block_index": [4, 4, 6], "query_frame": [12, 12, 18],
            "retrieved_frame": [2, 7, 0], "score": [0.9, 0.5, 0.7]}
    out = block_retrieval_scalars(rows)
    assert sorted(out) == [4, 6]
    assert out[4] == {"retrieval_min_score": 0.5, "retrieved_age_mean": 7.5, "retrieved_age_min": 5.0,
                      "retrieved_age_max": 10.0, "retrieved_frames": 2.0}
    assert out[6]["retrieved_age_mean"] == 18.0
    assert block_retrieval_scalars({"block_index": [], "query_frame": [], "retrieved_frame": [],
                                    "score": []}) == {}


def _png(colour: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), colour, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_frame_strip_picks_evenly_spaced_frames_at_the_height() -> None:
    previews = [_png(i * 10) for i in range(20)]
    strip = frame_strip(previews, count=5, height=16, gap=2)
    assert strip.shape == (16, 5 * 16 + 4 * 2, 3) and strip.dtype == np.uint8
    firsts = [strip[0, i * 18, 0] for i in range(5)]
    assert firsts == [0, 50, 100, 140, 190]  # frames 0, 5, 10, 14, 19 (linspace, rounded)
    with pytest.raises(ValueError, match="no previews"):
        frame_strip([])


@pytest.mark.slow
def test_predict_logs_images_and_block_scalars(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    frames = 24
    main(["predict", "--config", DEMO, f"--model.init_args.num_frames={frames}",
          "--model.init_args.run_name=tb", "--model.init_args.progress=false"])
    run_id = "tb-0"
    events = EventAccumulator(str(next(Path("runs/tensorboard").rglob("events.out.tfevents.*")).parent),
                              size_guidance={IMAGES: 0})
    events.Reload()
    images = events.Tags()["images"]
    assert {f"{run_id}/retrievals", f"{run_id}/frames"} <= set(images)
    strip = events.Images(f"{run_id}/frames")[0]
    assert strip.height == 64 and strip.width > 64 * 8  # 12 previews of 64 px side by side
    plot = events.Images(f"{run_id}/retrievals")[0]
    assert (plot.width, plot.height) == (700, 400)  # retrievals.png at figsize 7x4, 100 dpi

    retrievals = MemoryStore("runs/memory.lancedb", read_only=True).retrievals(run_id).to_pydict()
    expected = block_retrieval_scalars(retrievals)
    assert expected, "the 24-frame demo must retrieve in some blocks"
    scalars = events.Tags()["scalars"]
    for name in ("retrieved_age_mean", "retrieved_age_max", "retrieval_min_score",
                 "retrieval_top_score", "frames_per_s", "run_frames_per_s"):
        assert f"{run_id}/{name}" in scalars
    ages = {e.step: e.value for e in events.Scalars(f"{run_id}/retrieved_age_mean")}
    assert ages == pytest.approx({b: v["retrieved_age_mean"] for b, v in expected.items()})
    assert all(v > 1 for v in ages.values())  # the newest evicted frame is never retrieved
    assert events.Scalars(f"{run_id}/run_frames_per_s")[0].value > 0
