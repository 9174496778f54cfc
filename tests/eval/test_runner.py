"""End-to-end A/B evaluation at tiny size (random tiny backbone, one world, few frames)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lrag.data.world_datamodule import WorldDataModule
from lrag.eval.report import load_report
from lrag.assets import asset_path
from lrag.commands.export import main as export_main
from lrag.data.world_config import WorldConfig
from lrag.data.world_datamodule import render_world
from lrag.eval.runner import Variant, candidate_frames, generate_video, _prefix_latents, load_conditioned_backbone, run_eval, variants
from lrag.eval.settings import EvalSettings
from lrag.modules.backbone_fit import BackboneFitModule
from lrag.nets.conditioning import TinyTextEncoder
from lrag.nets.wan import build_tiny
from lrag.sampling.schedule import FlowMatchSchedule


def _settings(tmp_path, **kw) -> EvalSettings:
    base = dict(seeds=[1000], num_frames=24, window=6, revisit_min=8, revisit_max=12,
                out_dir=str(tmp_path / "eval"))
    return EvalSettings(**{**base, **kw})


def test_variants_cover_descriptors_and_budgets(tmp_path) -> None:
    names = [v.name for v in variants(_settings(tmp_path, budgets=["replace", "add"],
                                                descriptors=["avg_pool", "ae:/x/emb.safetensors"]))]
    assert names == ["native", "rag-avg_pool-replace", "rag-emb-replace", "rag-avg_pool-add", "rag-emb-add"]


@pytest.mark.slow
def test_run_eval_end_to_end(tmp_path) -> None:
    s = _settings(tmp_path)
    results, paths = run_eval(s)
    assert {(r.world, r.variant) for r in results} == {
        ("world-1000", "native"), ("world-1000", "rag-avg_pool"), ("world-1000", "rag-oracle")}
    doc = load_report(paths.json)
    native = next(r for r in doc["runs"] if r["variant"] == "native")
    oracle = next(r for r in doc["runs"] if r["variant"] == "rag-oracle")
    assert native["retrievals"] == [] and oracle["retrievals"]
    assert native["scalars"]["frames_per_s"] > 0
    assert math.isfinite(native["scalars"]["landmark_drift"])
    # all retrieved frames left the 6-frame window (and the R=1 guard) before their block
    for r in oracle["retrievals"]:
        assert all(f < r["query_frame"] - s.window for f in r["frames"])
    # the blank prefix block (negative video indices) shows no place and is never retrieved
    cosine = next(r for r in doc["runs"] if r["variant"] == "rag-avg_pool")
    assert cosine["retrievals"] and all(f >= 0 for r in cosine["retrievals"] for f in r["frames"])
    # the sampler's memory and the scoring agree on what could have been retrieved
    for r in cosine["retrievals"] + oracle["retrievals"]:
        assert set(r["frames"]) <= set(candidate_frames(s, r["query_frame"]))
    assert all(f >= 0 for r in oracle["retrievals"] for f in r["frames"])
    # same seed, same world: the two arms are identical until retrieval starts
    assert len(native["series"]["revisit_mse_by_block"]) == 24 // 3
    assert {p.name for p in paths.plots} == {"metrics_vs_time.png", "retrievals.png", "revisit_vs_gap.png",
                                             "revisit_vs_gap_per_world.png"}
    # revisit errors per gap: only pairs past the window, and they average to the headline number
    by_gap = native["revisit_by_gap"]
    assert by_gap["gap"] and min(by_gap["gap"]) >= s.window
    pooled = sum(m * n for m, n in zip(by_gap["mse"], by_gap["pairs"])) / sum(by_gap["pairs"])
    assert pooled == pytest.approx(native["scalars"]["revisit_inconsistency"], rel=1e-5)
    assert set(doc["revisit_vs_gap"]) == {"native", "rag-avg_pool", "rag-oracle"}
    assert "## world-1000" in paths.markdown.read_text()
    assert any(paths.tensorboard.glob("events.out.tfevents.*"))


def _checkpoint(tmp_path, num_worlds: int, **overrides):
    torch.manual_seed(1)
    module = BackboneFitModule(build_tiny("tiny", **overrides), TinyTextEncoder(8, 32), FlowMatchSchedule())
    dm = WorldDataModule(num_worlds=num_worlds, seed_offset=0)
    path = tmp_path / "fit.ckpt"
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            "datamodule_hyper_parameters": dict(dm.hparams)}
    module.on_save_checkpoint(ckpt)  # what Lightning calls: records backbone_config
    torch.save(ckpt, path)
    return module, path


def test_checkpoint_loads_strictly(tmp_path) -> None:
    module, path = _checkpoint(tmp_path, num_worlds=4)
    net = load_conditioned_backbone(_settings(tmp_path, backbone_checkpoint=str(path)))
    assert torch.equal(net.backbone.head.head.weight, module.net.backbone.head.head.weight)


def test_training_worlds_are_rejected(tmp_path) -> None:
    _, path = _checkpoint(tmp_path, num_worlds=4)
    with pytest.raises(ValueError, match="training worlds"):
        load_conditioned_backbone(_settings(tmp_path, seeds=[3, 1000], backbone_checkpoint=str(path)))


def test_missing_checkpoint_names_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_conditioned_backbone(_settings(tmp_path, backbone_checkpoint=str(tmp_path / "nope.ckpt")))


def test_exported_file_brings_its_architecture(tmp_path) -> None:
    # A 1-layer backbone: eval's backbone_preset (tiny, 2 layers) must not matter.
    module, path = _checkpoint(tmp_path, num_worlds=4, num_layers=1)
    out = tmp_path / "bb.safetensors"
    export_main([str(path), str(out)])
    net = load_conditioned_backbone(_settings(tmp_path, backbone_checkpoint=str(out)))
    assert len(net.backbone.blocks) == 1
    assert torch.equal(net.backbone.head.head.weight, module.net.backbone.head.head.weight)
    with pytest.raises(ValueError, match="--camera motion"):
        load_conditioned_backbone(_settings(tmp_path, backbone_checkpoint=str(out), camera="position"))
    with pytest.raises(ValueError, match="training worlds"):
        load_conditioned_backbone(_settings(tmp_path, seeds=[2], backbone_checkpoint=str(out)))


def test_candidate_frames_follow_window_guard_and_prefix(tmp_path) -> None:
    s = _settings(tmp_path)  # window 6, sink 1, R = 1, blocks of 3, blank prefix of 3
    # block at video frame 6 = global 9: globals 1..3 evicted, R drops 3, 1..2 are blank prefix
    assert candidate_frames(s, 6) == []
    # block at video frame 9 = global 12: globals 1..6 evicted, R drops 6 -> video frames 0..2
    assert candidate_frames(s, 9) == [0, 1, 2]
    first = dataclasses.replace(s, sink_mode="first")  # no prefix: frame 0 is the sink
    assert candidate_frames(first, 9) == [1, 2]


def test_shipped_asset_loads_by_name(tmp_path) -> None:
    from lrag.checkpoints.backbone_fit import read_backbone_fit

    _, info = read_backbone_fit(asset_path("backbone_tiny.safetensors"))
    net = load_conditioned_backbone(_settings(tmp_path, backbone_checkpoint="asset:backbone_tiny.safetensors",
                                              camera=info.camera))
    assert net.camera == info.camera and net.backbone.config == info.config


def test_sink_swap_changes_only_the_sink(tmp_path) -> None:
    s = _settings(tmp_path, sink_swap=5000)
    prefix = _prefix_latents(s)
    assert prefix.shape == (1, s.frames_per_block, s.channels, s.height, s.width)
    assert prefix[0, 0].abs().sum() > 0 and prefix[0, 1:].abs().sum() == 0
    assert _prefix_latents(_settings(tmp_path)).abs().sum() == 0
    with pytest.raises(ValueError, match="unrelated world"):
        run_eval(_settings(tmp_path, sink_swap=1000))
    with pytest.raises(ValueError, match="sink_mode: blank"):
        run_eval(_settings(tmp_path, sink_swap=5000, sink_mode="first"))


def test_sink_swap_changes_generated_video(tmp_path) -> None:
    s = _settings(tmp_path, num_frames=6, seeds=[1000])
    net = load_conditioned_backbone(s)
    wcfg = WorldConfig(frame_height=s.height, frame_width=s.width, channels=s.channels,
                       revisit_min=s.revisit_min, revisit_max=s.revisit_max)
    world = render_world(1000, s.num_frames, wcfg)
    native = variants(s)[0]
    blank, _, _ = generate_video(s, net, world, native, 0)
    swapped, _, _ = generate_video(dataclasses.replace(s, sink_swap=5000), net, world, native, 0)
    assert not torch.allclose(blank, swapped)


def test_diversity_reaches_every_cosine_memory() -> None:
    from lrag.eval.runner import _memory

    s = EvalSettings(diversity=0.4)
    assert _memory(s, Variant("rag-avg_pool", "avg_pool", "replace")).diversity == 0.4
    assert _memory(s, Variant("native", None, "replace")).memory_size == 0


def test_generator_key_and_rerank_descriptor_specs(tmp_path) -> None:
    from lrag.eval.runner import _memory

    s = _settings(tmp_path, descriptors=["gen_keys", "gen_keys:0,-1:queries", "avg_pool+rerank6"],
                  key_layers=[1])
    names = [v.name for v in variants(s)]
    assert names == ["native", "rag-gen_keys", "rag-gen_keys-0_-1-queries", "rag-avg_pool+rerank6"]
    plain, both, rerank = (_memory(s, v) for v in variants(s)[1:])
    assert plain.descriptor == "gen_keys" and plain.generator_keys.layers == [1]
    assert both.generator_keys.layers == [0, -1] and both.generator_keys.query == "queries"
    assert rerank.descriptor == "avg_pool" and rerank.rerank == 6 and rerank.generator_keys.layers == [1]
    stride = _memory(_settings(tmp_path, descriptors=["avg_pool+stride3"]), variants(
        _settings(tmp_path, descriptors=["avg_pool+stride3"]))[1])
    assert stride.store_stride == 3 and stride.descriptor == "avg_pool" and stride.rerank is None
    fused_settings = _settings(tmp_path, descriptors=["avg_pool+fuse30+stride5"])
    fused = _memory(fused_settings, variants(fused_settings)[1])
    assert fused.key_fusion == pytest.approx(0.3) and fused.store_stride == 5 and fused.rerank is None
    seq_settings = _settings(tmp_path, descriptors=["avg_pool+stride5+seq3"])
    seq = _memory(seq_settings, variants(seq_settings)[1])
    assert seq.sequence == 3 and seq.store_stride == 5 and seq.key_fusion == 0.0
    for bad in ("gen_keys:x", "avg_pool+rerank", "gen_keys+rerank4", "cosine", "avg_pool+stride", "gen_keys+fuse50",
                "avg_pool+fuse", "avg_pool+seq"):
        with pytest.raises(ValueError, match="descriptors"):
            _settings(tmp_path, descriptors=[bad])


@pytest.mark.slow
def test_workers_give_the_results_of_one_process(tmp_path) -> None:
    from lrag.eval.runner import eval_worlds

    s = _settings(tmp_path, seeds=[2000, 2001], descriptors=["gen_keys:0"], num_frames=12, workers=2)
    two, _ = run_eval(s)  # two spawned processes, one world each
    one = eval_worlds(s, s.seeds)  # both worlds in this process
    assert [(r.world, r.variant) for r in one] == [(r.world, r.variant) for r in two]
    for a, b in zip(one, two):
        assert a.retrievals == b.retrievals
        assert {k: v for k, v in a.scalars.items() if k != "frames_per_s"} == pytest.approx(
            {k: v for k, v in b.scalars.items() if k != "frames_per_s"}, nan_ok=True)
    with pytest.raises(ValueError, match="workers"):
        _settings(tmp_path, workers=0)
