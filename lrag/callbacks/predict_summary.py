"""``PredictSummary``: tells the user where ``lrag predict`` put things and what to try next.

Under several ranks every rank collects its own runs; at the end they are gathered to rank 0,
which prints one summary for all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch.distributed as dist

__all__ = ["PredictSummary", "gather_runs", "summary_lines"]


def gather_runs(run_ids: list[str], dirs: list[str]) -> tuple[list[str], list[str]]:
    """Every rank's ``(run_ids, dirs)``, rank 0's first; this rank's own without a process group.

    A collective: under a process group every rank must call it.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(run_ids), list(dirs)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (list(run_ids), list(dirs)))
    return [r for ids, _ in parts for r in ids], [d for _, ds in parts for d in ds]


def summary_lines(dirs: list[str], run_ids: list[str], store_uri: str, tb_dir: str | None,
                  eval_config: str | None) -> list[str]:
    """The closing message of a predict run, one line per entry.

    Args:
        dirs: Run directories written.
        run_ids: Their run ids (same order).
        store_uri: LanceDB store of the runs.
        tb_dir: TensorBoard log root, if a TensorBoard logger ran.
        eval_config: Config for ``lrag eval`` to suggest, if any.
    """
    lines = ["", "lrag predict finished:"]
    for run_dir in dirs:
        lines.append(f"  video + latents  {Path(run_dir) / 'video.mp4'}  ({run_dir}/latents-*.tar, "
                     "retrievals.png)")
    lines.append(f"  memory store     {store_uri}  (tables runs, frames, retrievals)")
    if tb_dir is not None:
        lines.append(f"  TensorBoard      {tb_dir}")
    run = run_ids[-1] if run_ids else "RUN_ID"
    query = (f"SELECT block_index, query_frame, rank, retrieved_frame, round(score, 3) AS score "
             f"FROM retrievals WHERE run_id = '{run}' ORDER BY score DESC LIMIT 10")
    lines += ["", "Try next:",
              f"  lrag memory sql --db {store_uri} \"{query}\"",
              f"  lrag memory runs --db {store_uri}"]
    if tb_dir is not None:
        lines.append(f"  tensorboard --logdir {tb_dir}")
    if eval_config is not None:
        lines.append(f"  lrag eval --config {eval_config}")
    return lines


class PredictSummary(L.Callback):
    """Prints the outputs of ``lrag predict`` (videos, store, logs) and follow-up commands.

    Expects ``predict_step`` outputs like ``GeneratorModule``'s: ``{"run_ids": [...], "dirs": [...]}``.

    Args:
        eval_config: Config suggested for ``lrag eval`` (None: no suggestion).
    """

    def __init__(self, eval_config: str | None = "configs/eval/demo.yaml") -> None:
        self.eval_config = eval_config
        self.run_ids: list[str] = []
        self.dirs: list[str] = []

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                             batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # noqa: D102
        if isinstance(outputs, dict):
            self.run_ids += list(outputs.get("run_ids", []))
            self.dirs += list(outputs.get("dirs", []))

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        run_ids, dirs = gather_runs(self.run_ids, self.dirs)  # every rank takes part
        if trainer.global_rank != 0:
            return
        store = getattr(pl_module, "hparams", {}).get("store_uri", "runs/memory.lancedb")
        logger = trainer.logger
        tb_dir = getattr(logger, "root_dir", None) if logger is not None else None
        # User-facing CLI output, not logging: it is the answer to "where is my video?".
        print("\n".join(summary_lines(dirs, run_ids, store, tb_dir, self.eval_config)))
