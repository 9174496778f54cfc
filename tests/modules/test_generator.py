"""GeneratorModule without the CLI: knobs, checkpoints, persistence, failure and resume."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from safetensors.torch import save_file

from lrag.data.prompts import PromptDataModule
from lrag.data.run_outputs import RunOutputs
from lrag.memory.bank import RetrievalMemory
from lrag.memory.store import MemoryStore
from lrag.modules.codecs import LinearRGBCodec
from lrag.modules.conditioning import TinyTextEncoder
from lrag.modules.generator import GeneratorModule
from lrag.modules.nets.tiny import build_tiny
from lrag.modules.schedule import FlowMatchSchedule


def _module(tmp_path, memory_size: int = 2, **knobs) -> GeneratorModule:
    torch.manual_seed(0)
    args = dict(num_frames=12, frames_per_block=3, window=9, sink=1, height=4, width=4,
                out_dir=str(tmp_path / "runs"), store_uri=str(tmp_path / "runs" / "db"),
                run_name="t", progress=False, write_video=False)
    args.update(knobs)
    return GeneratorModule(
        backbone=build_tiny("golden_tiny"),
        memory=RetrievalMemory(memory_size=memory_size, recent_exclude=1),
        text_encoder=TinyTextEncoder(text_len=8, text_dim=32),
        codec=LinearRGBCodec(channels=16, upscale=2),
        schedule=FlowMatchSchedule(denoising_steps=[1000, 500]),
        **args,
    )


def _predict(module: GeneratorModule, prompts=("a cat",), seed=0) -> list[dict]:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False)
    return trainer.predict(module, datamodule=PromptDataModule(prompts=list(prompts), seed=seed))


@pytest.mark.parametrize("knobs, match", [
    ({"num_frames": 10}, "multiple of frames_per_block"),
    ({"sink": 9}, "sink"),
    ({"budget": "more"}, "budget"),
    ({"run_name": "bad name"}, "run_name"),
])
def test_bad_knobs_are_named(tmp_path, knobs, match):
    with pytest.raises(ValueError, match=match):
        _module(tmp_path, **knobs)


def test_missing_checkpoint_says_where_to_put_it(tmp_path):
    path = tmp_path / "weights" / "tiny.safetensors"
    with pytest.raises(FileNotFoundError, match=r"tiny\.safetensors.*CausalWanModel"):
        _module(tmp_path, backbone_checkpoint=str(path))


def test_checkpoint_is_loaded_strictly_and_hashed(tmp_path):
    torch.manual_seed(123)
    source = build_tiny("golden_tiny")
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    module = _module(tmp_path, backbone_checkpoint=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(module.backbone.state_dict()[key], value), key
    assert len(module.checkpoint_hashes()["backbone_checkpoint"]) == 64
    save_file({"blocks.0.bogus": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="bogus"):
        _module(tmp_path, backbone_checkpoint=str(tmp_path / "bad.safetensors"))


def test_two_prompts_make_two_reproducible_runs(tmp_path):
    module = _module(tmp_path)
    out = _predict(module, prompts=["a cat", "a dog"], seed=5)
    assert [o["run_ids"] for o in out] == [["t-0"], ["t-1"]]
    store = MemoryStore(str(tmp_path / "runs" / "db"))
    runs = {r["run_id"]: r for r in store.list_runs()}
    assert runs["t-0"]["seed"] == 5 and runs["t-1"]["prompts"] == ["a dog"]
    assert all(r["status"] == "complete" and r["frames_done"] == 12 for r in runs.values())
    frames = store.frames("t-0")
    assert frames.column("frame_index").to_pylist() == list(range(12))
    assert all(png.startswith(b"\x89PNG") for png in frames.column("preview_png").to_pylist())
    a = RunOutputs(tmp_path / "runs" / "t-0", "t-0", {}, 16, False).read_blocks(4)
    b = RunOutputs(tmp_path / "runs" / "t-1", "t-1", {}, 16, False).read_blocks(4)
    assert not torch.equal(a, b)  # other prompt and seed
    again = _module(tmp_path / "again")
    _predict(again, prompts=["a cat"], seed=5)
    c = RunOutputs(tmp_path / "again" / "runs" / "t-0", "t-0", {}, 16, False).read_blocks(4)
    assert torch.equal(a, c)  # same weights, prompt and seed: bit-identical
    assert module.run_stats[0]["frames"] == 12 and module.run_stats[0]["frames_per_s"] > 0


class _FailingCodec(LinearRGBCodec):
    def __init__(self, fail_at_call: int) -> None:
        super().__init__(channels=16, upscale=2)
        self.calls, self.fail_at_call = 0, fail_at_call

    def decode(self, latents):
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise RuntimeError("codec exploded")
        return super().decode(latents)


def test_failure_marks_run_failed_and_resume_finishes_it(tmp_path):
    module = _module(tmp_path)
    module.codec = _FailingCodec(fail_at_call=3)  # block 2's decode
    with pytest.raises(RuntimeError, match="codec exploded"):
        _predict(module)
    store = MemoryStore(str(tmp_path / "runs" / "db"))
    assert store.get_run("t-0")["status"] == "failed"
    assert store.completed_blocks("t-0") == 2

    resumed = _module(tmp_path)
    resumed.set_resume("t-0")
    assert _predict(resumed)[0]["run_ids"] == ["t-0"]
    assert store.get_run("t-0")["status"] == "complete"
    assert store.completed_blocks("t-0") == 4

    _predict(_module(tmp_path / "ref"))
    ref = RunOutputs(tmp_path / "ref" / "runs" / "t-0", "t-0", {}, 16, False).read_blocks(4)
    got = RunOutputs(tmp_path / "runs" / "t-0", "t-0", {}, 16, False).read_blocks(4)
    assert torch.equal(got, ref)


def test_resume_refuses_changed_config_and_unknown_runs(tmp_path):
    module = _module(tmp_path)
    module.codec = _FailingCodec(fail_at_call=2)
    with pytest.raises(RuntimeError):
        _predict(module)
    changed = _module(tmp_path, window=12)
    changed.set_resume("t-0")
    with pytest.raises(SystemExit, match="window"):
        _predict(changed)
    reseeded = _module(tmp_path)
    torch.manual_seed(1)
    reseeded.backbone = build_tiny("golden_tiny")
    reseeded.set_resume("t-0")
    with pytest.raises(SystemExit, match="backbone weights"):
        _predict(reseeded)
    unknown = _module(tmp_path)
    unknown.set_resume("nope-0")
    with pytest.raises(SystemExit, match="no such run"):
        _predict(unknown)
