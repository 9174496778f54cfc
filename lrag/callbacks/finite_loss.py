"""``StopOnNonFiniteLoss``: end training at the first NaN/Inf loss, naming the step.

Lightning's ``detect_anomaly`` slows every backward pass several times; checking the loss each
step is free. The run stops before the optimizer step of the next batch, so the last checkpoint
saved by ``ModelCheckpoint`` still holds finite weights to resume or export from.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

__all__ = ["NonFiniteLossError", "StopOnNonFiniteLoss"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf."""


def _loss(outputs: Any) -> torch.Tensor | float | None:
    if isinstance(outputs, dict):
        return outputs.get("loss")
    return outputs


class StopOnNonFiniteLoss(L.Callback):
    """Raise :class:`NonFiniteLossError` when a training step's loss is not finite.

    Args:
        check_every_n_steps: Check every n-th step (the check syncs the GPU once per check).
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"StopOnNonFiniteLoss.check_every_n_steps must be >= 1, got "
                             f"{check_every_n_steps}.")
        self.check_every_n_steps = check_every_n_steps
        self._step = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:  # noqa: D102
        self._step = trainer.global_step  # the step this batch's loss belongs to

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:  # noqa: D102
        if batch_idx % self.check_every_n_steps:
            return
        loss = _loss(outputs)
        if loss is None:
            return
        value = float(loss.detach().float().cpu()) if isinstance(loss, torch.Tensor) else float(loss)
        if math.isfinite(value):
            return
        ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or None
        saved = f"the last checkpoint is {ckpt}" if ckpt else "no checkpoint was saved yet"
        raise NonFiniteLossError(
            f"training loss is {value} at global step {self._step} (epoch "
            f"{trainer.current_epoch}, batch {batch_idx}); training stopped, {saved}. Lower "
            "model.init_args.lr, use trainer.gradient_clip_val, or trainer.precision: 32-true, "
            "then start again (or resume with --ckpt_path)."
        )
