"""End-to-end A/B evaluation at tiny size (random tiny backbone, one world, few frames)."""

from __future__ import annotations

import math

import pytest
import torch

from lrag.data.world_datamodule import WorldDataModule
from lrag.eval.report import load_report
from lrag.eval.runner import EvalSettings, load_conditioned_backbone, run_eval, variants
from lrag.modules.backbone_fit import BackboneFitModule
from lrag.modules.conditioning import TinyTextEncoder
from lrag.modules.nets.tiny import build_tiny
from lrag.modules.schedule import FlowMatchSchedule


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
    # same seed, same world: the two arms are identical until retrieval starts
    assert len(native["series"]["revisit_mse_by_block"]) == 24 // 3
    assert {p.name for p in paths.plots} == {"metrics_vs_time.png", "retrievals.png"}
    assert "## world-1000" in paths.markdown.read_text()
    assert any(paths.tensorboard.glob("events.out.tfevents.*"))


def _checkpoint(tmp_path, num_worlds: int):
    torch.manual_seed(1)
    module = BackboneFitModule(build_tiny(), TinyTextEncoder(8, 32), FlowMatchSchedule())
    dm = WorldDataModule(num_worlds=num_worlds, seed_offset=0)
    path = tmp_path / "fit.ckpt"
    torch.save({"state_dict": module.state_dict(), "datamodule_hyper_parameters": dict(dm.hparams)}, path)
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
