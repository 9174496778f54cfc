"""StopOnNonFiniteLoss: training stops at the first NaN loss, and the message names the step."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from lrag.callbacks.finite_loss import NonFiniteLossError, StopOnNonFiniteLoss


class NaNAfter(BoringModel):
    """BoringModel whose loss turns NaN from global step ``step`` on."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.nan_step = step

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        if self.global_step >= self.nan_step:
            out["loss"] = out["loss"] * torch.tensor(float("nan"))
        return out


def _trainer(tmp_path, callbacks) -> L.Trainer:
    return L.Trainer(default_root_dir=tmp_path, max_steps=10, logger=False, callbacks=callbacks,
                     enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)


def test_nan_loss_stops_training_at_its_step(tmp_path):
    model = NaNAfter(step=3)
    trainer = _trainer(tmp_path, [StopOnNonFiniteLoss()])
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at global step 3 .*batch 3"):
        trainer.fit(model)
    assert trainer.global_step == 4  # the NaN step's update ran; no later step did


def test_without_the_callback_training_runs_on_with_nan(tmp_path):
    trainer = _trainer(tmp_path, [])
    trainer.fit(NaNAfter(step=3))
    assert trainer.global_step == 10  # what the callback prevents


def test_bad_interval_is_named():
    with pytest.raises(ValueError, match="check_every_n_steps"):
        StopOnNonFiniteLoss(check_every_n_steps=0)
