"""GeneratorModule without the CLI: knobs, checkpoints, persistence, failure and resume."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from safetensors.torch import save_file

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


def _module(tmp_path, memory_size: int = 2, **knobs) -> GeneratorModule:
    torch.manual_seed(0)
    args = dict(num_frames=12, frames_per_block=3, window=9, sink=1, height=4, width=4,
                out_dir=str(tmp_path / "runs"), store_uri=str(tmp_path / "runs" / "db"),
                run_name="t", progress=False, write_video=False)
    args.update(knobs)
    sampling = SamplerSettings(**{k: args.pop(k) for k in SAMPLER_KNOBS if k in args})
    return GeneratorModule(
        sampling=sampling,
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
    ({"num_frames": 10}, "multiple of sampling.frames_per_block"),
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


def test_failure_marks_run_failed_and_resume_finishes_it(tmp_path, failing_codec):
    module = _module(tmp_path)
    module.codec = failing_codec(fail_at_call=3)  # block 2's decode
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


def test_resume_refuses_changed_config_and_unknown_runs(tmp_path, failing_codec):
    module = _module(tmp_path)
    module.codec = failing_codec(fail_at_call=2)
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


# -- procedural worlds + camera-conditioned backbone --------------------------------------------
def _world_module(tmp_path, camera: str = "motion", **knobs) -> GeneratorModule:
    from lrag.nets.camera import CameraConditioned

    torch.manual_seed(0)
    args = dict(num_frames=12, frames_per_block=3, window=9, sink=1, height=8, width=8,
                out_dir=str(tmp_path / "runs"), store_uri=str(tmp_path / "runs" / "db"),
                run_name="w", progress=False, write_video=False, positions="slot", sink_mode="blank")
    args.update(knobs)
    sampling = SamplerSettings(**{k: args.pop(k) for k in SAMPLER_KNOBS if k in args})
    return GeneratorModule(
        sampling=sampling,
        backbone=CameraConditioned(build_tiny("tiny"), camera),
        memory=RetrievalMemory(memory_size=2, recent_exclude=1),
        text_encoder=TinyTextEncoder(text_len=8, text_dim=32),
        codec=LinearRGBCodec(channels=16, upscale=2),
        schedule=FlowMatchSchedule(denoising_steps=[1000, 500]),
        **args,
    )


def _world_latents(tmp_path, camera: str, world_seeds: list[int]) -> list[torch.Tensor]:
    from lrag.data.prompts import WorldPromptDataModule

    module = _world_module(tmp_path / camera, camera)
    # Same prompt and noise seed for every world: only the camera path differs between videos.
    dm = WorldPromptDataModule(world_seeds, num_frames=12, seeds=[7] * len(world_seeds),
                               prompts=["same prompt"] * len(world_seeds))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False)
    out = trainer.predict(module, datamodule=dm)
    return [RunOutputs(d, r, {}, 16, False).read_blocks(4)
            for batch in out for r, d in zip(batch["run_ids"], batch["dirs"])]


@pytest.mark.slow
def test_camera_path_changes_the_video_only_when_conditioned(tmp_path):
    moved = _world_latents(tmp_path, "motion", [1000, 1001])
    assert moved[0].shape == (12, 16, 8, 8)
    assert not torch.allclose(moved[0], moved[1])
    plain = _world_latents(tmp_path, "none", [1000, 1001])
    torch.testing.assert_close(plain[0], plain[1], rtol=0, atol=0)


def test_world_run_writes_ground_truth_and_video_coordinates(tmp_path):
    import json

    from lrag.data.prompts import WorldPromptDataModule
    from lrag.data.shards import iter_clips

    module = _world_module(tmp_path)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False)
    trainer.predict(module, datamodule=WorldPromptDataModule([1000], num_frames=24))
    run_dir = tmp_path / "runs" / "w-0"
    truth = json.loads((run_dir / "world.json").read_text())
    assert truth["world"]["world_id"] == 1000 and len(truth["positions"]) == 12
    assert all(j < 12 for r in truth["revisits"] for j in r)
    clip = next(iter_clips(str(run_dir / "latents-000000.tar")))
    assert clip.latents.shape[0] == 12 and clip.meta["ground_truth"]["positions"] == truth["positions"]
    frames = MemoryStore(str(tmp_path / "runs" / "db")).frames("w-0").to_pydict()
    assert sorted(frames["frame_index"]) == list(range(12))  # the blank prefix is not persisted
    retrievals = MemoryStore(str(tmp_path / "runs" / "db")).retrievals("w-0").to_pydict()
    assert all(q % 3 == 0 and 0 <= q < 12 for q in retrievals["query_frame"])


def test_conditioned_backbone_without_world_is_refused(tmp_path):
    with pytest.raises(ValueError, match="WorldPromptDataModule"):
        _predict(_world_module(tmp_path))


def test_bad_sink_mode_is_named(tmp_path):
    with pytest.raises(ValueError, match="sink_mode"):
        _module(tmp_path, sink_mode="grey")


@pytest.mark.slow
def test_world_run_resumes_bit_identically_with_blank_prefix(tmp_path, failing_codec):
    from lrag.data.prompts import WorldPromptDataModule

    def predict(module):
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_checkpointing=False)
        return trainer.predict(module, datamodule=WorldPromptDataModule([1000], num_frames=12))

    module = _world_module(tmp_path)
    module.codec = failing_codec(fail_at_call=3)  # block 2's decode
    with pytest.raises(RuntimeError, match="codec exploded"):
        predict(module)
    store = MemoryStore(str(tmp_path / "runs" / "db"))
    assert store.completed_blocks("w-0") == 2
    resumed = _world_module(tmp_path)
    resumed.set_resume("w-0")  # the camera path comes back from world.json, not the datamodule
    resumed.backbone.set_camera(None)
    predict(resumed)
    assert store.get_run("w-0")["status"] == "complete"

    predict(_world_module(tmp_path / "ref"))
    ref = RunOutputs(tmp_path / "ref" / "runs" / "w-0", "w-0", {}, 16, False).read_blocks(4)
    got = RunOutputs(tmp_path / "runs" / "w-0", "w-0", {}, 16, False).read_blocks(4)
    assert torch.equal(got, ref)
