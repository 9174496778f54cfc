"""``EmbedderModule``: trains the frame embedder (``LatentAE``) on latent clips.

The network is injected (``net``); this module owns the losses, the optimiser hookup and the
logging. Batches are ``{"latents": float32 [B, T, C, H, W], "key": list[str]}``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from einops import rearrange
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from lrag.modules.losses import EmbedderLoss, EmbedderLossOutput
from lrag.checkpoints.embedder import CKPT_CONFIG_KEY
from lrag.nets.autoencoder import LatentAE


class EmbedderModule(LightningModule):
    """Fit a ``LatentAE`` with reconstruction + Window Temporal Delta + smoothness losses.

    The loss settings (margin, window, weights) are read from ``net.config`` so one
    ``AEConfig`` describes a trained embedder completely, as in the reference checkpoints.

    Args:
        net: The embedder network (``class_path: lrag.nets.autoencoder.LatentAE``).
        optimizer: Optimiser factory called with the parameters (default: AdamW).
        scheduler: Optional learning-rate scheduler factory called with the optimiser.
        scheduler_interval: ``"epoch"`` or ``"step"``: when the scheduler steps.
        recon_weight: Weight of the reconstruction MSE (the reference uses 1).
        contrastive_weight: Weight of the revisit InfoNCE term (0 = off, the reference); needs
            batches with revisit pairs (``LatentShardDataModule(revisit_pairs=True)``).
        temperature: Softmax temperature of that term.
    """

    def __init__(
        self,
        net: LatentAE,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        recon_weight: float = 1.0,
        contrastive_weight: float = 0.0,
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        # The net is a module (stored in the state dict) and the factories are callables; the
        # net's config goes into the checkpoint separately (on_save_checkpoint).
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer = optimizer
        self.scheduler = scheduler
        cfg = net.config
        self.criterion = EmbedderLoss(
            recon_weight=recon_weight,
            delta_weight=cfg.delta_weight,
            delta_margin=cfg.delta_margin,
            delta_window=cfg.delta_window,
            smooth_weight=cfg.smooth_weight,
            contrastive_weight=contrastive_weight,
            temperature=temperature,
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """L2-normalised descriptors ``[B, T, D]`` of clips ``[B, T, C, H, W]``."""
        b = latents.shape[0]
        desc = self.net.encode(rearrange(latents, "b t c h w -> (b t) c h w"))
        return rearrange(desc, "(b t) d -> b t d", b=b)

    def _check_latents(self, latents: torch.Tensor) -> None:
        cfg = self.net.config
        expected = (cfg.in_channels, cfg.spatial_h, cfg.spatial_w)
        if latents.dim() != 5 or tuple(latents.shape[2:]) != expected:
            raise ValueError(
                f"batch['latents'] has shape {tuple(latents.shape)}, but the embedder expects "
                f"[B, T, {expected[0]}, {expected[1]}, {expected[2]}]; set "
                "model.init_args.net.init_args.config.{in_channels,spatial_h,spatial_w} to the "
                "shards' latent layout"
            )

    def _step(self, batch: dict[str, Any], stage: str) -> EmbedderLossOutput:
        latents = batch["latents"]
        self._check_latents(latents)
        b = latents.shape[0]
        frames = rearrange(latents, "b t c h w -> (b t) c h w")
        recon, z = self.net(frames)  # (B*T, C, H, W), (B*T, D)
        pairs = self._revisit_pairs(batch, z) if self.criterion.contrastive_weight > 0 else None
        out = self.criterion(recon, frames, rearrange(z, "(b t) d -> b t d", b=b), pairs)
        on_step = stage == "train"
        if on_step and not self._logger_writes_this_step():
            return out  # on-step values the logger would not write: skip Lightning's per-call cost
        scalars = {"loss": out.total, "recon": out.recon, "wtd": out.wtd, "smooth": out.smooth}
        if out.contrastive is not None:
            scalars["contrastive"] = out.contrastive
        for k, cos in enumerate(out.cos_per_offset, start=1):
            scalars[f"cos_offset_{k}"] = cos
        self.log_dict(
            {f"{stage}/{name}": value for name, value in scalars.items()},
            on_step=on_step,
            on_epoch=not on_step,
            batch_size=b,
            prog_bar=False,
            sync_dist=True,  # averaged over ranks under DDP (a no-op on one device)
        )
        return out

    def _revisit_pairs(self, batch: dict[str, Any], z: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Embeddings ``[B*2T, D]`` of window + partner frames and block-diagonal pair masks.

        Frames of different clips in the batch are negatives of each other (different videos).
        """
        if "revisit_latents" not in batch:
            return None
        b = batch["latents"].shape[0]
        partners = self.net.encoder(rearrange(batch["revisit_latents"], "b t c h w -> (b t) c h w"))
        emb = torch.cat([rearrange(z, "(b t) d -> b t d", b=b),
                         rearrange(partners, "(b t) d -> b t d", b=b)], dim=1)  # (B, 2T, D)
        pos = torch.block_diag(*batch["positives"].bool())
        same_clip = torch.block_diag(*torch.ones_like(batch["positives"], dtype=torch.bool))
        neg = torch.block_diag(*batch["negatives"].bool()) | ~same_clip
        return rearrange(emb, "b n d -> (b n) d"), pos, neg

    def _logger_writes_this_step(self) -> bool:
        """Whether the Trainer's logger writes on-step values at this step (log_every_n_steps)."""
        trainer = self._trainer
        if trainer is None:
            return True
        every = max(int(trainer.log_every_n_steps), 1)
        step = self.global_step + 1
        last = trainer.is_last_batch or (trainer.max_steps > 0 and step >= trainer.max_steps)
        return step % every == 0 or trainer.should_stop or last

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:  # noqa: D102
        return self._step(batch, "train").total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:  # noqa: D102
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:  # noqa: D102
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:  # noqa: D102
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        scheduler = self.scheduler(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.hparams.scheduler_interval,
                "monitor": "train/loss",
            },
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the net's ``AEConfig`` so ``lrag export`` / ``load_embedder`` can rebuild it."""
        checkpoint[CKPT_CONFIG_KEY] = asdict(self.net.config)
