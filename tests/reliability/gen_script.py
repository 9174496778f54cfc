"""A small world run (and hashes of what is stored) of ``GeneratorModule`` (12 latent frames, 4 blocks of 3), in or out of process.

The fault tests import :func:`build` and :func:`predict` (through ``conftest.py``) and run this
file as a subprocess to kill it with SIGKILL at a chosen point::

    python tests/reliability/gen_script.py ROOT [--world 1000] [--resume RUN] [--kill POINT]
                                                [--pause-after-lease DIR]

``--kill`` points: ``mid-block`` (block 2's float32 state is on disk, its shard is not),
``rows-counter`` (block 2's store rows are written, the run's counter is not), ``before-complete``
(every block and the video are done, the status is still ``running``). ``--pause-after-lease``
writes ``DIR/leased`` once the run's lease is taken and waits for ``DIR/go``.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import subprocess
import signal
import sys
import time
from pathlib import Path

import lightning as L
import torch

from lrag.data.prompts import WorldPromptDataModule
from lrag.memory.bank import RetrievalMemory
from lrag.memory.store import MemoryStore
from lrag.modules.generator import GeneratorModule
from lrag.nets.camera import CameraConditioned
from lrag.nets.codecs import LinearRGBCodec
from lrag.nets.conditioning import TinyTextEncoder
from lrag.nets.wan import build_tiny
from lrag.runs.lease import RunLease
from lrag.sampling.schedule import FlowMatchSchedule
from lrag.sampling.settings import SamplerSettings

NUM_FRAMES = 12
SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[2]


def build(root: Path, **knobs) -> GeneratorModule:
    """The module of every fault test: camera-conditioned tiny backbone, retrieval memory."""
    torch.manual_seed(0)
    args = dict(num_frames=NUM_FRAMES, height=8, width=8, out_dir=str(root / "runs"),
                store_uri=str(root / "runs" / "db"), run_name="w", progress=False,
                write_video=True)
    args.update(knobs)
    return GeneratorModule(
        sampling=SamplerSettings(frames_per_block=3, window=9, sink=1, positions="slot",
                                 sink_mode="blank"),
        backbone=CameraConditioned(build_tiny("tiny"), "motion"),
        memory=RetrievalMemory(memory_size=2, recent_exclude=1),
        text_encoder=TinyTextEncoder(text_len=8, text_dim=32),
        codec=LinearRGBCodec(channels=16, upscale=2),
        schedule=FlowMatchSchedule(denoising_steps=[1000, 500]),
        **args,
    )


def predict(module: GeneratorModule, world: int = 1000, resume: str | None = None) -> list[dict]:
    """Generate one world video (or continue ``resume``)."""
    if resume is not None:
        module.set_resume(resume)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False)
    return trainer.predict(module, datamodule=WorldPromptDataModule([world], num_frames=NUM_FRAMES))


def store_rows(root: Path) -> dict[str, str]:
    """A digest per table of the store's rows (content, not files: compaction moves files)."""
    store = MemoryStore(str(root / "runs" / "db"))
    out = {}
    for name in ("runs", "frames", "retrievals"):
        rows = store.scan(name).to_pylist()
        for row in rows:
            row.pop("created", None)
        text = json.dumps(sorted(rows, key=lambda r: json.dumps(r, default=str, sort_keys=True)),
                          default=lambda v: v.hex() if isinstance(v, bytes) else str(v), sort_keys=True)
        out[name] = hashlib.sha256(text.encode()).hexdigest()
    return out


def folder_files(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (the run's blocks, shards, video, world.json)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def snapshot(root: Path, run_id: str = "w-0") -> dict:
    """Store rows and run-folder files of ``run_id`` (what a refused command must not change)."""
    return {"rows": store_rows(root), "files": folder_files(root / "runs" / run_id)}


def run_script(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``gen_script.py`` in a fresh interpreter (this worktree's ``lrag`` first)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), str(root), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill(point: str) -> None:
    if point == "mid-block":
        from lrag.runs import outputs

        original = outputs.ShardWriter.write

        def write(self, key, *args, **kwargs):
            if key == "block-00002":
                _die()
            return original(self, key, *args, **kwargs)

        outputs.ShardWriter.write = write
    elif point == "rows-counter":
        original_open = MemoryStore._open

        def _open(self, name):
            caller = inspect.stack()[1]
            if name == "runs" and caller.function == "add_block" and caller.frame.f_locals["block"] == 2:
                _die()
            return original_open(self, name)

        MemoryStore._open = _open
    elif point == "before-complete":
        original_status = MemoryStore.set_status

        def set_status(self, run_id, status):
            if status == "complete":
                _die()
            return original_status(self, run_id, status)

        MemoryStore.set_status = set_status
    else:
        raise SystemExit(f"unknown kill point {point!r}")


def _install_pause(folder: Path) -> None:
    original = RunLease.acquire

    def acquire(self):
        original(self)
        (folder / "leased").write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while not (folder / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    RunLease.acquire = acquire


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--world", type=int, default=1000)
    parser.add_argument("--resume")
    parser.add_argument("--kill")
    parser.add_argument("--pause-after-lease", type=Path)
    args = parser.parse_args(argv)
    if args.kill:
        _install_kill(args.kill)
    if args.pause_after_lease:
        _install_pause(args.pause_after_lease)
    predict(build(args.root), args.world, args.resume)


if __name__ == "__main__":
    main(sys.argv[1:])
