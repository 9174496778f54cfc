"""``lrag predict`` under 2-process DDP (CPU, gloo) against the same prompts in one process.

DDP launches its ranks as subprocesses re-running the command line, so the 2-rank runs go
through ``python -m lrag.cli`` in a subprocess; the 1-process reference runs in-process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lrag.cli import main
from lrag.data.shards import iter_clips
from lrag.memory.store import MemoryStore
from lrag.runs.outputs import RunOutputs

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "predict" / "demo_random.yaml")
PROMPTS = ["a red ball", "a blue cube", "a green cone", "a white torus"]
FPB = 3  # demo_random's frames_per_block
DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]


def _args(root: Path, name: str, frames: int, prompts: list[str]) -> list[str]:
    return ["predict", "--config", CONFIG,
            f"--model.init_args.num_frames={frames}",
            f"--model.init_args.out_dir={root / 'runs'}",
            f"--model.init_args.store_uri={root / 'runs' / 'memory.lancedb'}",
            f"--model.init_args.run_name={name}",
            "--model.init_args.progress=false",
            "--model.init_args.write_video=false",
            f"--trainer.logger.init_args.save_dir={root / 'tb'}",
            "--data.init_args.prompts=[" + ", ".join(prompts) + "]"]


def _env() -> dict[str, str]:
    # The ranks import this checkout's lrag, whatever is installed.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def _blocks(root: Path, run_id: str, n: int) -> torch.Tensor:
    return RunOutputs(root / "runs" / run_id, run_id, {}, 16, False).read_blocks(n)


def _by_seed(store: MemoryStore) -> dict[int, dict]:
    runs = store.list_runs()
    seeds = [r["seed"] for r in runs]
    assert len(seeds) == len(set(seeds)), f"a seed was generated twice: {sorted(seeds)}"
    return {r["seed"]: r for r in runs}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, str]:
    """The same 4 prompts with 1 process (in-process) and 2 DDP ranks (subprocess)."""
    frames = 6
    one = tmp_path_factory.mktemp("one")
    main(_args(one, "one", frames, PROMPTS))
    two = tmp_path_factory.mktemp("two")
    summary = "--trainer.callbacks+=lrag.callbacks.predict_summary.PredictSummary"
    proc = subprocess.run([sys.executable, "-m", "lrag.cli", *_args(two, "two", frames, PROMPTS),
                           *DDP, summary], cwd=two, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return one, two, proc.stdout


@pytest.mark.slow
def test_two_ranks_generate_each_prompt_once_with_the_latents_of_one_process(runs):
    one, two, _ = runs
    frames = 6
    single, multi = _by_seed(MemoryStore(one / "runs" / "memory.lancedb")), \
        _by_seed(MemoryStore(two / "runs" / "memory.lancedb"))
    assert sorted(multi) == sorted(single) == [0, 1, 2, 3]  # seed + index, whatever N is
    store = MemoryStore(two / "runs" / "memory.lancedb")
    for seed, run in multi.items():
        assert run["prompts"] == single[seed]["prompts"] == [PROMPTS[seed]]
        assert run["status"] == "complete" and run["frames_done"] == frames
        # Rows of both ranks reached the shared store: none lost, none doubled.
        rows = store.frames(run["run_id"], with_previews=False)
        assert sorted(rows.column("frame_index").to_pylist()) == list(range(frames))
        got = _blocks(two, run["run_id"], frames // FPB)
        want = _blocks(one, single[seed]["run_id"], frames // FPB)
        assert torch.equal(got, want), f"seed {seed}: 2-rank latents differ from 1 process"
    ranks = {run_id.split("-")[1] for run_id in (r["run_id"] for r in multi.values())}
    assert ranks == {"r0", "r1"}, "both ranks generated"


@pytest.mark.slow
def test_one_summary_lists_the_runs_of_every_rank(runs):
    _, two, stdout = runs
    assert stdout.count("lrag predict finished:") == 1
    run_ids = [r["run_id"] for r in MemoryStore(two / "runs" / "memory.lancedb").list_runs()]
    assert all(f"{two / 'runs' / run_id / 'video.mp4'}" in stdout for run_id in run_ids)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _rank_one(launcher: int) -> int | None:
    """The pid of DDP rank 1: the launcher's child process started with ``LOCAL_RANK=1``."""
    for pid in _children(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"LOCAL_RANK=1" in environ:
            return pid
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find rank 1")
def test_a_killed_rank_leaves_finished_blocks_readable_and_resumable(tmp_path):
    frames, run_id = 24, "kill-r1-0"
    args = _args(tmp_path, "kill", frames, PROMPTS[:2])
    proc = subprocess.Popen([sys.executable, "-m", "lrag.cli", *args, *DDP], cwd=tmp_path,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Block 1's state file exists once block 0 is wholly written (its store rows go in before
    # block 1 starts); a stat is cheap enough to poll fast, so the kill lands early in the run.
    second = tmp_path / "runs" / run_id / "blocks" / "block-00001.safetensors"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not second.exists():
            assert proc.poll() is None, f"predict exited early:\n{proc.stderr.read()[-3000:]}"
            time.sleep(0.01)
        rank_one = _rank_one(proc.pid)
        assert rank_one is not None, "rank 1 not found among the launcher's children"
        os.kill(rank_one, signal.SIGKILL)
        # Lightning's launcher stops the other ranks when it notices (it polls every 5 s); a
        # rank 0 that finished first may exit 0, so the store, not the exit code, tells.
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    store = MemoryStore(tmp_path / "runs" / "memory.lancedb")
    assert store.get_run(run_id)["status"] == "running", "the run ended before the kill landed"
    done = store.completed_blocks(run_id)
    assert 1 <= done < frames // FPB, "the kill must land mid-run"
    rows = store.frames(run_id, with_previews=False)
    assert rows.num_rows == done * FPB
    for shard, key in set(zip(rows.column("shard").to_pylist(), rows.column("key").to_pylist())):
        clip = next(iter_clips(str(tmp_path / "runs" / run_id / shard)))
        assert clip.key == key and clip.latents.shape[0] == FPB  # every finished block reads back
    before = _blocks(tmp_path, run_id, done)

    main([*args, "--resume", run_id])  # one process continues the rank's run
    assert store.get_run(run_id)["status"] == "complete"
    assert store.completed_blocks(run_id) == frames // FPB
    assert torch.equal(_blocks(tmp_path, run_id, done), before)


@pytest.mark.slow
def test_the_runs_of_both_ranks_collect_into_one_training_corpus(runs):
    _, two, _ = runs
    main(["data", "collect", str(two / "runs"), str(two / "corpus"), "--shard-size", "2"])
    clips = {c.key: c for c in iter_clips(str(two / "corpus"))}
    store = MemoryStore(two / "runs" / "memory.lancedb")
    assert sorted(clips) == sorted(r["run_id"] for r in store.list_runs())
    for run_id, clip in clips.items():
        blocks = _blocks(two, run_id, 2).numpy().astype(clip.latents.dtype)
        assert (clip.latents == blocks).all() and clip.meta["prompt"] in PROMPTS
