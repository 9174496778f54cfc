"""Fault injection for ``lrag predict`` runs, in process: reused run names, tampered inputs,
ghost runs, a held lease, NaN latents and a store that cannot be written.

Each case asserts the message (what is wrong, which run/file) and that the data stored before the
fault (store rows, run-folder files) is unchanged or, for an interrupted run, resumes to exactly
the uninterrupted run (:func:`conftest.reference`).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lrag.errors import explain
from lrag.memory.schema import StoreError
from lrag.memory.store import MemoryStore
from lrag.runs.faults import NonFiniteLatentsError
from lrag.runs.outputs import RunOutputs
from lrag.runs.writer import PersistenceError


def _failed_run(gen, root, monkeypatch, fail_block: int = 2):
    """A run ``w-0`` stopped by an error while writing block ``fail_block``."""
    original = RunOutputs.write_block

    def write_block(self, block, *args, **kwargs):
        if block == fail_block:
            raise RuntimeError("disk gone")
        return original(self, block, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(RunOutputs, "write_block", write_block)
        with pytest.raises(RuntimeError, match="disk gone"):
            gen.predict(gen.build(root))
    return MemoryStore(str(root / "runs" / "db"))


def test_reused_run_name_leaves_the_existing_run_untouched(gen, tmp_path, monkeypatch):
    _failed_run(gen, tmp_path, monkeypatch)
    before = gen.snapshot(tmp_path)
    with pytest.raises(StoreError, match="'w-0' already exists"):
        gen.predict(gen.build(tmp_path), world=1001)  # same run_name, another world
    assert gen.snapshot(tmp_path) == before


def test_resume_refuses_a_world_json_that_is_not_the_runs(gen, tmp_path, monkeypatch):
    store = _failed_run(gen, tmp_path, monkeypatch)
    world = tmp_path / "runs" / "w-0" / "world.json"
    truth = json.loads(world.read_text())
    truth["positions"][5] = [9.0, 9.0]
    world.write_text(json.dumps(truth))
    before = gen.snapshot(tmp_path)
    with pytest.raises(SystemExit, match=r"world\.json differs from the one the run started with"):
        gen.predict(gen.build(tmp_path), resume="w-0")
    assert gen.snapshot(tmp_path) == before and store.get_run("w-0")["status"] == "failed"


def test_resume_refuses_a_block_file_of_another_run(gen, tmp_path, monkeypatch):
    _failed_run(gen, tmp_path, monkeypatch)
    other = RunOutputs(tmp_path / "other", "x-0", {}, 16.0, False)
    other.write_block(1, 3, torch.zeros(3, 16, 8, 8))
    target = tmp_path / "runs" / "w-0" / "blocks" / "block-00001.safetensors"
    target.write_bytes((tmp_path / "other" / "blocks" / "block-00001.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"block-00001\.safetensors belongs to run 'x-0'"):
        gen.predict(gen.build(tmp_path), resume="w-0")


def test_a_failed_video_leaves_no_ghost_run_behind(gen, tmp_path, monkeypatch):
    from lrag.data.prompts import WorldPromptDataModule

    original = RunOutputs.write_block

    def write_block(self, block, *args, **kwargs):
        if self.run_id == "w-0" and block == 1:
            raise RuntimeError("disk gone")
        return original(self, block, *args, **kwargs)

    monkeypatch.setattr(RunOutputs, "write_block", write_block)
    module = gen.build(tmp_path)
    trainer = __import__("lightning").Trainer(accelerator="cpu", logger=False,
                                              enable_progress_bar=False, enable_checkpointing=False)
    with pytest.raises(RuntimeError, match="disk gone"):
        trainer.predict(module, datamodule=WorldPromptDataModule([1000, 1001], num_frames=12,
                                                                 batch_size=2))
    runs = MemoryStore(str(tmp_path / "runs" / "db")).list_runs()
    assert [(r["run_id"], r["status"]) for r in runs] == [("w-0", "failed")]
    assert not (tmp_path / "runs" / "w-1").exists()


def test_a_video_refused_before_sampling_is_never_registered(gen, tmp_path):
    from lrag.data.prompts import WorldPromptDataModule

    module = gen.build(tmp_path, num_frames=24)  # the worlds below have 12 frames
    trainer = __import__("lightning").Trainer(accelerator="cpu", logger=False,
                                              enable_progress_bar=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match="raise data.init_args.num_frames"):
        trainer.predict(module, datamodule=WorldPromptDataModule([1000], num_frames=12))
    assert MemoryStore(str(tmp_path / "runs" / "db")).list_runs() == []
    assert not (tmp_path / "runs" / "w-0").exists()


def test_resume_is_refused_while_another_process_writes_the_run(gen, tmp_path, monkeypatch):
    _failed_run(gen, tmp_path, monkeypatch)
    lease = tmp_path / "runs" / "w-0" / "lease.json"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        lease.write_text(json.dumps({"run_id": "w-0", "host": __import__("socket").gethostname(),
                                     "pid": holder.pid, "started": "now"}))
        before = gen.snapshot(tmp_path)
        with pytest.raises(SystemExit, match=rf"being written by pid {holder.pid} on this host"):
            gen.predict(gen.build(tmp_path), resume="w-0")
        assert gen.snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lease is stale and the resume takes it over.
    gen.predict(gen.build(tmp_path), resume="w-0")
    assert MemoryStore(str(tmp_path / "runs" / "db")).get_run("w-0")["status"] == "complete"
    assert not lease.exists()


def test_nan_latents_stop_the_run_and_it_resumes_to_the_uninterrupted_video(gen, tmp_path, reference):
    module = gen.build(tmp_path)
    calls = {"n": 0}

    def poison(_module, _inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] > 6 else output

    handle = module.backbone.register_forward_hook(poison)
    with pytest.raises(NonFiniteLatentsError) as err:
        gen.predict(module)
    handle.remove()
    store = MemoryStore(str(tmp_path / "runs" / "db"))
    done = store.completed_blocks("w-0")
    assert 0 < done < 4
    assert f"run w-0: block {done} " in str(err.value) and "--resume w-0" in str(err.value)
    assert store.get_run("w-0")["status"] == "failed"
    assert sorted(p.name for p in (tmp_path / "runs" / "w-0" / "blocks").glob("*.safetensors")) == [
        f"block-{b:05d}.safetensors" for b in range(done)]
    gen.predict(gen.build(tmp_path), resume="w-0")
    assert store.get_run("w-0")["status"] == "complete"
    for name in ("frames", "retrievals"):
        assert gen.store_rows(tmp_path)[name] == gen.store_rows(reference)[name]
    got, ref = gen.folder_files(tmp_path / "runs" / "w-0"), gen.folder_files(reference / "runs" / "w-0")
    assert got["video.mp4"] == ref["video.mp4"]  # resumed video: the same bytes
    shards = {k for k in ref if k.endswith(".tar")}
    assert shards and {k: got[k] for k in shards} == {k: ref[k] for k in shards}
    # safetensors headers list metadata in hash-map order: compare the tensors, not the bytes
    torch.testing.assert_close(RunOutputs(tmp_path / "runs" / "w-0", "w-0", {}, 16, False).read_blocks(4),
                               RunOutputs(reference / "runs" / "w-0", "w-0", {}, 16, False).read_blocks(4),
                               rtol=0, atol=0)


def test_a_store_that_cannot_be_written_is_named_and_nothing_is_lost(gen, tmp_path, monkeypatch):
    store = _failed_run(gen, tmp_path, monkeypatch)
    before = gen.snapshot(tmp_path)
    path = str(tmp_path / "runs" / "db" / "frames.lance")

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(MemoryStore, "add_block", refuse)
    with pytest.raises(PersistenceError, match=r"run w-0: writing block 2 failed at the store tables") as err:
        gen.predict(gen.build(tmp_path), resume="w-0")
    assert isinstance(err.value.__cause__, PermissionError)
    message = explain(err.value, "predict")
    assert message.startswith("lrag predict: Permission denied") and path in message
    after = gen.snapshot(tmp_path)
    assert after["rows"] == before["rows"]  # status back to failed, no rows added
    kept = {k: v for k, v in before["files"].items() if k.startswith("blocks/")}
    assert kept and {k: after["files"][k] for k in kept} == kept  # finished blocks untouched
    assert store.get_run("w-0")["status"] == "failed" and store.completed_blocks("w-0") == 2
