"""``lrag export``: Lightning and reference checkpoints to safetensors, and its errors."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lrag.cli import main as lrag_main
from lrag.commands.export import KINDS, build_parser, export, main
from lrag.modules.embedder import EmbedderModule
from lrag.checkpoints.embedder import load_embedder
from lrag.nets.autoencoder import AEConfig, LatentAE

CFG = AEConfig(in_channels=4, spatial_h=6, spatial_w=10, latent_dim=8, hidden_dims=[4, 8])


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory) -> tuple[Path, EmbedderModule]:
    tmp = tmp_path_factory.mktemp("ckpt")
    module = EmbedderModule(LatentAE(CFG))
    data = [{"latents": torch.randn(4, 3, 4, 6, 10), "key": ["k"] * 4}]
    trainer = L.Trainer(default_root_dir=tmp, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, DataLoader(data, batch_size=None))
    path = tmp / "embedder.ckpt"
    trainer.save_checkpoint(path)
    return path, module


def test_lightning_ckpt_exports_and_loads_identically(lightning_ckpt, tmp_path, capsys) -> None:
    ckpt, module = lightning_ckpt
    out = tmp_path / "emb.safetensors"
    lrag_main(["export", str(ckpt), str(out)])
    assert "embedder" in capsys.readouterr().out
    loaded = load_embedder(out)
    assert loaded.config == CFG
    assert_same_weights(loaded, module.net)
    assert_same_weights(loaded, load_embedder(ckpt))


def test_reference_pt_exports(tmp_path) -> None:
    model = LatentAE(CFG)
    ref = tmp_path / "ae_latent_mem.pt"
    torch.save({"model": model.state_dict(), "config": {**CFG.__dict__, "lr": 3e-4}}, ref)
    out = tmp_path / "sub" / "ref.safetensors"
    summary = export(ref, out)
    assert "-> 8" in summary
    assert_same_weights(load_embedder(out), model)


def test_unknown_content_and_bad_names_fail_clearly(tmp_path) -> None:
    other = tmp_path / "other.pt"
    torch.save({"weights": {"a": torch.zeros(1)}}, other)
    with pytest.raises(SystemExit, match=r"other\.pt: no exporter recognises.*--kind"):
        main([str(other), str(tmp_path / "o.safetensors")])
    with pytest.raises(SystemExit, match=r"\.safetensors"):
        main([str(other), str(tmp_path / "o.bin")])
    with pytest.raises(SystemExit, match="unknown; choose one of embedder"):
        main([str(other), str(tmp_path / "o.safetensors"), "--kind", "nope"])
    with pytest.raises(SystemExit, match="does not exist"):
        main([str(tmp_path / "missing.ckpt"), str(tmp_path / "o.safetensors")])


def test_pickled_checkpoint_is_refused(tmp_path) -> None:
    bad = tmp_path / "pickled.pt"
    torch.save({"model": nn.Linear(1, 1)}, bad)
    with pytest.raises(SystemExit, match=r"pickled\.pt cannot be loaded with torch\.load\(weights_only=True\)"):
        main([str(bad), str(tmp_path / "o.safetensors")])
    assert not (tmp_path / "o.safetensors").exists()


def test_parser_lists_registered_kinds() -> None:
    assert {"embedder", "backbone_fit", "generator"} <= set(KINDS)
    assert "embedder" in build_parser().format_help()
