"""GeneratorModule with the background writer: same bytes as synchronous persistence, a failing
write named at the next block, an interrupt that flushes every handed-over block, and resume."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from lrag.data.prompts import PromptDataModule
from lrag.memory.bank import RetrievalMemory
from lrag.memory.store import MemoryStore
from lrag.modules.generator import GeneratorModule
from lrag.nets.codecs import LinearRGBCodec
from lrag.nets.conditioning import TinyTextEncoder
from lrag.nets.wan import build_tiny
from lrag.runs.outputs import RunOutputs
from lrag.runs.writer import PersistenceError
from lrag.sampling.schedule import FlowMatchSchedule
from lrag.sampling.settings import SamplerSettings

BLOCKS = 5


def _module(root: Path, persist_queue: int, **knobs) -> GeneratorModule:
    torch.manual_seed(0)
    args = dict(num_frames=3 * BLOCKS, height=4, width=4, out_dir=str(root / "runs"),
                store_uri=str(root / "runs" / "db"), run_name="p", progress=False,
                write_video=True, persist_queue=persist_queue)
    args.update(knobs)
    return GeneratorModule(
        sampling=SamplerSettings(frames_per_block=3, window=9, sink=1),
        backbone=build_tiny("golden_tiny"),
        memory=RetrievalMemory(memory_size=2, recent_exclude=1),
        text_encoder=TinyTextEncoder(text_len=8, text_dim=32),
        codec=LinearRGBCodec(channels=16, upscale=2),
        schedule=FlowMatchSchedule(denoising_steps=[1000, 500]),
        **args,
    )


def _predict(module: GeneratorModule, resume: str | None = None) -> list[dict]:
    if resume is not None:
        module.set_resume(resume)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False)
    return trainer.predict(module, datamodule=PromptDataModule(prompts=["a cat"], seed=3))


def _store_rows(root: Path) -> dict[str, str]:
    """Rows of frames and retrievals (content; the created timestamps left out)."""
    store = MemoryStore(str(root / "runs" / "db"))
    out = {}
    for name in ("frames", "retrievals"):
        rows = [{k: v for k, v in r.items() if k != "created"} for r in store.scan(name).to_pylist()]
        out[name] = json.dumps(sorted(rows, key=lambda r: (r.get("frame_index", 0), r["block_index"],
                                                           r.get("rank", 0))),
                               default=lambda v: v.hex() if isinstance(v, bytes) else str(v))
    return out


def _files(run_dir: Path) -> dict[str, str]:
    """Digests of the run folder's shards and video (block .safetensors compared as tensors)."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.suffix in (".tar", ".mp4")}


def _blocks(root: Path, n: int = BLOCKS) -> torch.Tensor:
    return RunOutputs(root / "runs" / "p-0", "p-0", {}, 16, False).read_blocks(n)


@pytest.fixture(scope="module")
def sync_run(tmp_path_factory) -> Path:
    """An uninterrupted run written synchronously (``persist_queue: 0``)."""
    root = tmp_path_factory.mktemp("sync")
    _predict(_module(root, persist_queue=0))
    return root


def test_async_writes_exactly_what_sync_writes(sync_run, tmp_path):
    module = _module(tmp_path, persist_queue=2)
    _predict(module)
    assert MemoryStore(str(tmp_path / "runs" / "db")).get_run("p-0")["status"] == "complete"
    assert _store_rows(tmp_path) == _store_rows(sync_run)
    got, ref = _files(tmp_path / "runs" / "p-0"), _files(sync_run / "runs" / "p-0")
    assert "video.mp4" in got and len(got) == BLOCKS + 2  # block shards, consolidated clip, video
    assert got == ref
    torch.testing.assert_close(_blocks(tmp_path), _blocks(sync_run), rtol=0, atol=0)
    stats = module.run_stats[0]
    assert stats["frames"] == 3 * BLOCKS and len(stats["persisted_at"]) == BLOCKS
    assert stats["persisted_at"] == sorted(stats["persisted_at"])


def _break_block_file(module: GeneratorModule, root: Path, block: int) -> None:
    """While block ``block`` is sampled, put a directory where its block file must go: a real
    file-system fault (root ignores read-only permissions, a directory it cannot overwrite)."""
    calls = {"n": 0}

    def fault(*_args) -> None:
        calls["n"] += 1
        if calls["n"] == 3 * block + 1:  # 2 steps + context pass per block
            (root / "runs" / "p-0" / "blocks" / f"block-{block:05d}.safetensors.tmp").mkdir()

    module.backbone.register_forward_hook(fault)


@pytest.mark.parametrize("depth", [0, 2])
def test_a_failed_write_is_named_and_earlier_blocks_stay_resumable(sync_run, tmp_path, depth):
    module = _module(tmp_path, persist_queue=depth)
    _break_block_file(module, tmp_path, block=2)
    with pytest.raises(PersistenceError) as err:
        _predict(module)
    message = str(err.value)
    assert message.startswith("run p-0: writing block 2 failed at the block files")
    assert "block-00002" in message and "--resume p-0" in message
    assert "Is a directory" in message and err.value.__cause__ is not None  # safetensors' own error
    store = MemoryStore(str(tmp_path / "runs" / "db"))
    assert store.get_run("p-0")["status"] == "failed" and store.completed_blocks("p-0") == 2
    torch.testing.assert_close(_blocks(tmp_path, 2), _blocks(sync_run, 2), rtol=0, atol=0)
    assert not list((tmp_path / "runs" / "p-0" / "blocks").glob("block-0000[34]*"))  # nothing after it

    (tmp_path / "runs" / "p-0" / "blocks" / "block-00002.safetensors.tmp").rmdir()  # the fix
    _predict(_module(tmp_path, persist_queue=depth), resume="p-0")
    assert store.get_run("p-0")["status"] == "complete"
    torch.testing.assert_close(_blocks(tmp_path), _blocks(sync_run), rtol=0, atol=0)
    assert _store_rows(tmp_path) == _store_rows(sync_run)


def test_an_interrupt_flushes_every_handed_over_block(sync_run, tmp_path, monkeypatch):
    original = RunOutputs.write_block

    def slow_write_block(self, *args, **kwargs):
        time.sleep(0.3)  # a slow disk: blocks wait in the queue when the interrupt comes
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RunOutputs, "write_block", slow_write_block)
    module = _module(tmp_path, persist_queue=3)
    calls = {"n": 0}

    def interrupt(*_args) -> None:
        calls["n"] += 1
        if calls["n"] == 3 * 4 + 1:  # block 4's first step: blocks 0..3 were handed over
            raise KeyboardInterrupt

    handle = module.backbone.register_forward_hook(interrupt)
    with pytest.raises(SystemExit):  # Lightning turns the KeyboardInterrupt into exit status 1
        _predict(module)
    handle.remove()
    store = MemoryStore(str(tmp_path / "runs" / "db"))
    assert store.completed_blocks("p-0") == 4 and store.get_run("p-0")["status"] == "failed"
    torch.testing.assert_close(_blocks(tmp_path, 4), _blocks(sync_run, 4), rtol=0, atol=0)
    monkeypatch.undo()
    _predict(_module(tmp_path, persist_queue=3), resume="p-0")
    torch.testing.assert_close(_blocks(tmp_path), _blocks(sync_run), rtol=0, atol=0)
    assert _store_rows(tmp_path) == _store_rows(sync_run)


def test_bad_queue_depth_is_named(tmp_path):
    with pytest.raises(ValueError, match="persist_queue=-1"):
        _module(tmp_path, persist_queue=-1)
