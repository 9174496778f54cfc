"""Prompt switching in ``GeneratorModule``: only later blocks change, the store records it, resume."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lrag.cli import main as lrag_main
from lrag.data.prompts import PromptDataModule
from lrag.runs.outputs import RunOutputs
from lrag.memory.bank import RetrievalMemory
from lrag.memory.store import MemoryStore
from lrag.nets.codecs import LinearRGBCodec
from lrag.nets.conditioning import TinyTextEncoder
from lrag.modules.generator import GeneratorModule
from lrag.sampling.settings import SAMPLER_KNOBS, SamplerSettings
from lrag.nets.wan import build_tiny
from lrag.sampling.schedule import FlowMatchSchedule

BLOCKS, FPB = 6, 3


def _module(root, codec=None) -> GeneratorModule:
    torch.manual_seed(0)  # same random backbone in every module
    return GeneratorModule(
        backbone=build_tiny("golden_tiny"),
        memory=RetrievalMemory(memory_size=2, recent_exclude=1),
        text_encoder=TinyTextEncoder(text_len=8, text_dim=32),
        codec=codec or LinearRGBCodec(channels=16, upscale=2),
        schedule=FlowMatchSchedule(denoising_steps=[1000, 500]),
        sampling=SamplerSettings(frames_per_block=FPB, window=6, sink=1),
        num_frames=BLOCKS * FPB, height=4, width=4,
        out_dir=str(root / "runs"), store_uri=str(root / "runs" / "db"), run_name="t",
        progress=False, write_video=False)


def _predict(module: GeneratorModule, schedule=None) -> None:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False)
    trainer.predict(module, datamodule=PromptDataModule(prompts=["a cat"], seed=7,
                                                        prompt_schedule=schedule))


def _latents(root) -> torch.Tensor:
    return RunOutputs(root / "runs" / "t-0", "t-0", {}, 16, False).read_blocks(BLOCKS)


def test_switch_changes_only_blocks_from_the_switch_on_and_is_stored(tmp_path, capsys):
    _predict(_module(tmp_path / "plain"))
    _predict(_module(tmp_path / "switch"), [{"frame": 9, "prompt": "a dog"}])
    plain, switched = _latents(tmp_path / "plain"), _latents(tmp_path / "switch")
    assert torch.equal(plain[:9], switched[:9])
    for block in range(3, BLOCKS):
        assert not torch.equal(plain[block * FPB:(block + 1) * FPB], switched[block * FPB:(block + 1) * FPB])
    run = MemoryStore(str(tmp_path / "switch" / "runs" / "db")).get_run("t-0")
    assert run["prompt_schedule"] == [{"frame": 0, "prompt": "a cat"}, {"frame": 9, "prompt": "a dog"}]
    assert run["prompts"] == ["a cat", "a dog"]
    assert MemoryStore(str(tmp_path / "plain" / "runs" / "db")).get_run("t-0")["prompt_schedule"] == []
    capsys.readouterr()
    lrag_main(["memory", "show", "t-0", "--db", str(tmp_path / "switch" / "runs" / "db")])
    assert "0: a cat; 9: a dog" in capsys.readouterr().out


def test_schedule_from_frame_zero_replaces_the_prompt(tmp_path):
    _predict(_module(tmp_path / "a"), [{"frame": 0, "prompt": "a dog"}])
    _predict(_module(tmp_path / "b"), [{"frame": 0, "prompt": "a cat"}])
    _predict(_module(tmp_path / "c"))
    assert torch.equal(_latents(tmp_path / "b"), _latents(tmp_path / "c"))
    assert not torch.equal(_latents(tmp_path / "a")[:3], _latents(tmp_path / "c")[:3])
    assert MemoryStore(str(tmp_path / "a" / "runs" / "db")).get_run("t-0")["prompts"] == ["a dog"]


def test_resume_with_switches_before_and_after_the_interruption_is_bit_identical(tmp_path, failing_codec):
    schedule = [{"frame": 3, "prompt": "a dog"}, {"frame": 12, "prompt": "a cow"}]
    _predict(_module(tmp_path / "full"), schedule)
    with pytest.raises(RuntimeError, match="codec exploded"):
        _predict(_module(tmp_path / "cut", codec=failing_codec(fail_at_call=4)), schedule)  # block 3
    store = MemoryStore(str(tmp_path / "cut" / "runs" / "db"))
    assert store.completed_blocks("t-0") == 3  # the switch at frame 3 is behind, 12 ahead
    resumed = _module(tmp_path / "cut")
    resumed.set_resume("t-0")
    _predict(resumed)  # no schedule given: it comes from the store
    assert store.get_run("t-0")["status"] == "complete"
    assert torch.equal(_latents(tmp_path / "cut"), _latents(tmp_path / "full"))


@pytest.mark.parametrize("schedule, match", [
    ([{"frame": 4, "prompt": "a dog"}], r"prompt_schedule\[0\].*'frame': 4.*multiple of frames_per_block=3"),
    ([{"frame": 18, "prompt": "a dog"}], r"prompt_schedule\[0\].*below num_frames=18"),
])
def test_schedule_off_the_block_grid_is_refused(tmp_path, schedule, match):
    with pytest.raises(ValueError, match=match):
        _predict(_module(tmp_path), schedule)
