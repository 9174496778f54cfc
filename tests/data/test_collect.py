"""``lrag data collect``: finished predict runs -> one training shard set."""

from __future__ import annotations

import numpy as np
import pytest

from lrag.commands.data import main
from lrag.data.collect import find_run_clips
from lrag.data.datamodule import LatentShardDataModule
from lrag.data.shards import ShardWriter, iter_clips


def _run(root, run_id: str, frames: int, finished: bool = True) -> np.ndarray:
    """A run folder as ``lrag predict`` leaves it: blocks/, and the clip once it finished."""
    latents = np.full((frames, 4, 2, 2), len(run_id) + frames, np.float32)
    (root / run_id / "blocks").mkdir(parents=True)
    if finished:  # RunOutputs.finish writes the clip with this writer and prefix
        with ShardWriter(root / run_id, prefix="latents", max_clips_per_shard=1) as writer:
            writer.write(run_id, latents, {"prompt": f"prompt of {run_id}", "seed": frames})
    return latents


def test_collect_gathers_finished_runs_of_every_rank_and_leaves_out_unfinished(tmp_path, capsys):
    runs = tmp_path / "runs"
    want = {rid: _run(runs, rid, f) for rid, f in (("c-r0-0", 6), ("c-r1-0", 9), ("c-r0-1", 3))}
    _run(runs, "c-r1-1", 6, finished=False)
    report = main(["collect", str(runs), str(tmp_path / "corpus"), "--shard-size", "2"])
    assert (report.runs, report.frames) == (3, 18)
    assert [p.rsplit("/", 1)[-1] for p in report.unfinished] == ["c-r1-1"]
    assert "1 unfinished run(s) left out" in capsys.readouterr().out
    clips = {c.key: c for c in iter_clips(str(tmp_path / "corpus"))}
    assert sorted(clips) == sorted(want)
    for key, latents in want.items():
        np.testing.assert_array_equal(clips[key].latents, latents.astype(np.float16))
        assert clips[key].meta["prompt"] == f"prompt of {key}"
    # The corpus is a shard set the embedder's datamodule trains on.
    dm = LatentShardDataModule(str(tmp_path / "corpus"), seq_len=3, batch_size=2, val_fraction=0.0)
    assert next(iter(dm.train_dataloader()))["latents"].shape == (2, 3, 4, 2, 2)


def test_min_frames_leaves_short_runs_out(tmp_path):
    _run(tmp_path / "runs", "a", 3)
    _run(tmp_path / "runs", "b", 12)
    report = main(["collect", str(tmp_path / "runs"), str(tmp_path / "out"), "--min-frames", "6"])
    assert report.runs == 1 and [c.key for c in iter_clips(str(tmp_path / "out"))] == ["b"]


def test_a_run_folder_given_twice_is_refused_naming_it(tmp_path):
    _run(tmp_path / "runs", "twice", 3)
    with pytest.raises(SystemExit, match="'twice' is in both"):
        main(["collect", str(tmp_path / "runs"), str(tmp_path / "runs" / "twice"),
              str(tmp_path / "out")])
    assert not list((tmp_path).glob("out/*.tar"))  # nothing half-written


@pytest.mark.parametrize("args, message", [
    (["collect", "DST"], "at least one runs folder and then DST"),
    (["collect", "missing", "DST"], "missing is not a folder"),
    (["collect", ".", "DST", "--min-frames", "0"], "--min-frames 0: must be >= 1"),
])
def test_bad_collect_arguments_are_one_line_errors(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        main(args)


def test_no_finished_run_is_an_error(tmp_path):
    _run(tmp_path / "runs", "x", 3, finished=False)
    assert find_run_clips([tmp_path / "runs"]) == ([], [tmp_path / "runs" / "x"])
    with pytest.raises(SystemExit, match="no finished run"):
        main(["collect", str(tmp_path / "runs"), str(tmp_path / "out")])
