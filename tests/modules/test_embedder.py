"""EmbedderModule: one training step on plain tensors, logging keys, checkpoint config, errors."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lrag.modules.embedder import EmbedderModule
from lrag.checkpoints.embedder import load_embedder
from lrag.nets.autoencoder import AEConfig, LatentAE

CFG = AEConfig(in_channels=4, spatial_h=8, spatial_w=8, latent_dim=16, hidden_dims=[8, 16], seq_len=4)


class RandomClips(Dataset):
    """Slowly drifting random clips in the datamodule's batch layout."""

    def __init__(self, n: int = 8) -> None:
        gen = torch.Generator().manual_seed(0)
        base = torch.randn(n, 1, 4, 8, 8, generator=gen)
        self.latents = base + 0.1 * torch.randn(n, 4, 4, 8, 8, generator=gen).cumsum(dim=1)

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict:
        return {"latents": self.latents[i], "key": f"clip{i}"}


def make_trainer(tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, **kwargs)


def test_training_step_logs_every_term_and_updates_weights(tmp_path) -> None:
    module = EmbedderModule(LatentAE(CFG), optimizer=partial(torch.optim.AdamW, lr=1e-2))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = make_trainer(tmp_path, max_steps=2, enable_checkpointing=False, gradient_clip_val=1.0)
    loader = DataLoader(RandomClips(), batch_size=4)
    trainer.fit(module, loader, loader)
    logged = trainer.logged_metrics
    for name in ("loss", "recon", "wtd", "smooth", "cos_offset_1", "cos_offset_2", "cos_offset_3"):
        assert f"train/{name}" in logged and f"val/{name}" in logged, name
    assert torch.isfinite(logged["train/loss"])
    changed = [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]
    assert "net.encoder.fc.weight" in changed


def test_checkpoint_records_config_and_loads_as_embedder(tmp_path) -> None:
    module = EmbedderModule(LatentAE(CFG))
    trainer = make_trainer(tmp_path, max_steps=1, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(module, DataLoader(RandomClips(), batch_size=4))
    path = tmp_path / "e.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_embedder(path)
    assert loaded.config == CFG
    x = torch.randn(3, 4, 8, 8)
    assert torch.allclose(loaded.encode(x), module.net.eval().encode(x))


def test_forward_gives_unit_descriptors_per_frame() -> None:
    module = EmbedderModule(LatentAE(CFG)).eval()
    desc = module(torch.randn(2, 5, 4, 8, 8))
    assert desc.shape == (2, 5, 16)
    assert torch.allclose(desc.norm(dim=-1), torch.ones(2, 5), atol=1e-5)


def test_scheduler_is_configured() -> None:
    module = EmbedderModule(LatentAE(CFG), scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1),
                            scheduler_interval="step")
    conf = module.configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.AdamW)
    assert conf["lr_scheduler"]["interval"] == "step"


def test_wrong_latent_layout_names_the_fix() -> None:
    module = EmbedderModule(LatentAE(CFG))
    batch = {"latents": torch.randn(2, 4, 16, 8, 8), "key": ["a", "b"]}
    with pytest.raises(ValueError, match="in_channels,spatial_h,spatial_w"):
        module.training_step(batch, 0)
    with pytest.raises(ValueError, match="scheduler_interval"):
        EmbedderModule(LatentAE(CFG), scheduler_interval="batch")


class RevisitClips(RandomClips):
    """Clips whose partner frames are copies of the window frames: every frame's revisit is known."""

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        t = self.latents.shape[1]
        pos = torch.zeros(2 * t, 2 * t, dtype=torch.bool)
        idx = torch.arange(t)
        pos[idx, idx + t] = pos[idx + t, idx] = True
        return {**item, "revisit_latents": self.latents[i].clone(), "positives": pos, "negatives": ~pos}


def test_contrastive_term_is_logged_and_needs_revisit_pairs(tmp_path) -> None:
    module = EmbedderModule(LatentAE(CFG), optimizer=partial(torch.optim.AdamW, lr=1e-2),
                            contrastive_weight=0.5, temperature=0.2)
    trainer = make_trainer(tmp_path, max_steps=2, enable_checkpointing=False)
    loader = DataLoader(RevisitClips(), batch_size=4)
    trainer.fit(module, loader, loader)
    assert torch.isfinite(trainer.logged_metrics["train/contrastive"])
    assert "val/contrastive" in trainer.logged_metrics
    batch = next(iter(DataLoader(RandomClips(), batch_size=2)))
    with pytest.raises(ValueError, match="revisit_pairs"):
        module.training_step(batch, 0)
