"""``lrag predict`` end to end on the demo config: every output read back with its own library."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lancedb
import numpy as np
import pytest
import torch
import webdataset as wds
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lrag.cli import main
from lrag.runs.outputs import RunOutputs
from lrag.data.shards import iter_clips
from lrag.data.video import probe_video
from lrag.memory.store import MemoryStore

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "predict" / "demo_random.yaml")
FPB, WINDOW, K = 3, 12, 3  # the demo config's frames_per_block, window, memory_size


def _args(tmp_path: Path, name: str, frames: int, memory_size: int | None = None,
          size: int = 8) -> list[str]:
    args = ["predict", "--config", CONFIG,
            f"--model.init_args.num_frames={frames}",
            f"--model.init_args.height={size}", f"--model.init_args.width={size}",
            f"--model.init_args.out_dir={tmp_path / 'runs'}",
            f"--model.init_args.store_uri={tmp_path / 'runs' / 'memory.lancedb'}",
            f"--model.init_args.run_name={name}",
            "--model.init_args.progress=false",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'tb'}"]
    if memory_size is not None:
        args.append(f"--model.init_args.memory.init_args.memory_size={memory_size}")
    return args


def _blocks(tmp_path: Path, run_id: str, n: int) -> torch.Tensor:
    return RunOutputs(tmp_path / "runs" / run_id, run_id, {}, 16, False).read_blocks(n)


@pytest.mark.slow
def test_predict_writes_video_shards_store_and_scalars(tmp_path, capsys):
    frames = 24
    main(_args(tmp_path, "rag", frames))
    run_id, run_dir = "rag-0", tmp_path / "runs" / "rag-0"

    info = probe_video(run_dir / "video.mp4")  # decoded back with PyAV
    assert (info.frames, info.height, info.width) == (frames, 64, 64)
    assert info.codec == "h264" and info.pix_fmt == "yuv420p"

    samples = list(wds.WebDataset(str(run_dir / "latents-000000.tar"), shardshuffle=False,
                                  empty_check=False))
    assert len(samples) == 1 and samples[0]["__key__"] == run_id
    clip = next(iter_clips(str(run_dir / "latents-000000.tar")))
    assert clip.latents.shape == (frames, 16, 8, 8) and clip.latents.dtype == np.float16
    assert json.loads(samples[0]["json"])["prompt"].startswith("a red ball")
    assert len(list((run_dir / "blocks").glob("*.tar"))) == frames // FPB
    assert (run_dir / "retrievals.png").stat().st_size > 1000
    assert "GeneratorModule" in (run_dir / "config.yaml").read_text()

    db = lancedb.connect(str(tmp_path / "runs" / "memory.lancedb"))
    runs = db.open_table("runs").to_arrow().to_pylist()
    assert [(r["run_id"], r["status"], r["frames_done"]) for r in runs] == [(run_id, "complete", 24)]
    rows = db.open_table("frames").to_arrow()
    assert sorted(rows.column("frame_index").to_pylist()) == list(range(frames))
    retrievals = db.open_table("retrievals").to_arrow().to_pylist()
    assert retrievals and all(r["retrieved_frame"] < r["query_frame"] for r in retrievals)
    assert {r["rank"] for r in retrievals} == set(range(K))

    capsys.readouterr()
    main(["memory", "sql", "--db", str(tmp_path / "runs" / "memory.lancedb"), "--format", "json",
          "SELECT f.block_index, count(*) AS n FROM frames f JOIN runs r ON f.run_id = r.run_id "
          "WHERE r.status = 'complete' GROUP BY f.block_index ORDER BY f.block_index"])
    result = json.loads(capsys.readouterr().out)
    assert result == [{"block_index": b, "n": FPB} for b in range(frames // FPB)]

    events = EventAccumulator(str(next((tmp_path / "tb").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    tags = events.Tags()["scalars"]
    for name in ("block_seconds", "frames_per_s", "memory_pool_frames", "retrieval_top_score"):
        assert f"{run_id}/{name}" in tags
    assert len(events.Scalars(f"{run_id}/block_seconds")) == frames // FPB
    tops = {e.step: e.value for e in events.Scalars(f"{run_id}/retrieval_top_score")}
    first = min(r["block_index"] for r in retrievals)
    assert tops[first] == pytest.approx(max(r["score"] for r in retrievals
                                            if r["block_index"] == first), abs=1e-6)


@pytest.mark.slow
def test_native_equals_rag_while_they_attend_to_the_same_frames(tmp_path):
    frames = 15
    main(_args(tmp_path, "rag", frames))
    main(_args(tmp_path, "native", frames, memory_size=0))
    rag, native = _blocks(tmp_path, "rag-0", frames // FPB), _blocks(tmp_path, "native-0",
                                                                     frames // FPB)
    for block in range(frames // FPB):
        end = (block + 1) * FPB
        same = torch.equal(rag[block * FPB:end], native[block * FPB:end])
        # With budget "replace", RAG's cache holds window - K frames: until the video is longer
        # than that, both attend to every earlier frame.
        assert same == (end <= WINDOW - K), f"block {block}: equal={same}"
    store = MemoryStore(str(tmp_path / "runs" / "memory.lancedb"))
    assert store.retrievals("native-0").num_rows == 0


def _wait_for_blocks(store: MemoryStore, run_id: str, proc: subprocess.Popen, n: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"predict exited early:\n{proc.stderr.read()[-3000:]}"
        if store.get_run(run_id) is not None and store.completed_blocks(run_id) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{run_id}: fewer than {n} blocks after 300 s")


@pytest.mark.slow
def test_kill_9_loses_no_block_and_resume_is_bit_identical(tmp_path):
    # 15 blocks of 16x16 latents: long enough that the kill lands mid-run on a fast machine.
    frames, run_id, size = 45, "killed-0", 16
    args = _args(tmp_path, "killed", frames, size=size)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lrag.cli", *args],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    store = MemoryStore(str(tmp_path / "runs" / "memory.lancedb"))
    try:
        _wait_for_blocks(store, run_id, proc, 2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    done = store.completed_blocks(run_id)
    assert 2 <= done < frames // FPB, "the kill must land mid-run"
    assert store.get_run(run_id)["status"] == "running"
    rows = store.frames(run_id, with_previews=False)
    assert rows.num_rows == done * FPB
    run_dir = tmp_path / "runs" / run_id
    for shard, key in set(zip(rows.column("shard").to_pylist(), rows.column("key").to_pylist())):
        clip = next(iter_clips(str(run_dir / shard)))  # every finished block is readable
        assert clip.key == key and clip.latents.shape == (FPB, 16, size, size)
    before_kill = _blocks(tmp_path, run_id, done)

    main([*args, "--resume", run_id])
    assert store.get_run(run_id)["status"] == "complete"
    assert store.completed_blocks(run_id) == frames // FPB
    main(_args(tmp_path, "ref", frames, size=size))
    resumed, ref = _blocks(tmp_path, run_id, frames // FPB), _blocks(tmp_path, "ref-0", frames // FPB)
    assert torch.equal(resumed[: done * FPB], before_kill)
    assert torch.equal(resumed, ref)
    final = next(iter_clips(str(run_dir / "latents-000000.tar"))).latents
    assert np.array_equal(final, next(iter_clips(str(tmp_path / "runs" / "ref-0" /
                                                     "latents-000000.tar"))).latents)
    assert probe_video(run_dir / "video.mp4").frames == frames


# -- configs/predict/demo.yaml: the embedded default with the shipped weights ------------------
DEMO = str(ROOT / "configs" / "predict" / "demo.yaml")


@pytest.mark.slow
def test_demo_config_runs_with_shipped_assets_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # asset: paths must not depend on the working directory
    frames = 18
    main(["predict", "--config", DEMO, f"--model.init_args.num_frames={frames}",
          "--model.init_args.run_name=demo", "--model.init_args.progress=false"])
    run_dir = tmp_path / "runs" / "demo-0"
    assert probe_video(run_dir / "video.mp4").frames == frames
    truth = json.loads((run_dir / "world.json").read_text())
    assert truth["world"]["world_id"] == 1000 and len(truth["positions"]) == frames
    store = MemoryStore(str(tmp_path / "runs" / "memory.lancedb"))
    run = store.get_run("demo-0")
    assert run["status"] == "complete" and {"backbone_checkpoint", "embedder"} <= set(run["checkpoint_hashes"])
    retrievals = store.retrievals("demo-0").to_pydict()
    assert retrievals["query_frame"] and max(retrievals["query_frame"]) < frames
    assert store.frames("demo-0").num_rows == frames
    assert list((tmp_path / "runs" / "tensorboard").rglob("events.out.tfevents.*"))
    out = capsys.readouterr().out
    assert "lrag memory sql" in out and "WHERE run_id = 'demo-0'" in out
    assert "tensorboard --logdir" in out and "lrag eval --config configs/eval/demo.yaml" in out
    # The suggested query really runs.
    query = out.split('lrag memory sql --db runs/memory.lancedb "', 1)[1].split('"', 1)[0]
    main(["memory", "sql", "--db", "runs/memory.lancedb", "--format", "json", query])
    rows = json.loads(capsys.readouterr().out)
    assert rows and {r["block_index"] for r in rows} <= set(retrievals["block_index"])


def test_demo_config_names_a_missing_shipped_file(tmp_path):
    missing = "asset:backbone_missing.safetensors"
    # lrag.errors turns the loader's error into one message naming the field, the file and the fix.
    with pytest.raises(SystemExit,
                       match=r"backbone_checkpoint: .*lrag/assets/backbone_missing\.safetensors.*make assets"):
        main(["predict", "--config", DEMO, f"--model.init_args.backbone_checkpoint={missing}",
              f"--model.init_args.out_dir={tmp_path}", "--model.init_args.progress=false"])
