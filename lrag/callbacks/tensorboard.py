"""``PredictTensorBoard``: what a ``lrag predict`` run did, as TensorBoard images and scalars.

``GeneratorModule`` logs its live per-block scalars (``frames_per_s``, ``block_seconds``,
``retrieval_top_score``, ``retrieval_mean_score``, memory pool and KV size) while it samples.
When a video is finished this callback adds, under the run id:

- scalars per block (step = block): ``retrieval_min_score``, ``retrieved_age_mean|min|max``
  (how many frames back the retrieved frames lie: ``query_frame - retrieved_frame``) and
  ``retrieved_frames`` (how many were retrieved);
- scalars per run: ``run_frames_per_s`` and ``run_seconds``;
- images: ``retrievals`` (the run's ``retrievals.png``) and ``frames`` (a strip of evenly spaced
  frame previews from the store's ``frames.preview_png``).

It reads what the run persisted (the store and the run folder), so it needs no hook inside the
sampling loop. Only rank 0 logs (Lightning's loggers are rank-0 only).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_only

from lrag.memory.store import MemoryStore

log = logging.getLogger(__name__)

__all__ = ["PredictTensorBoard", "block_retrieval_scalars", "frame_strip"]


def block_retrieval_scalars(rows: dict[str, Sequence]) -> dict[int, dict[str, float]]:
    """Per block: lowest score and the age of the retrieved frames.

    Args:
        rows: ``retrievals`` columns ``block_index, query_frame, retrieved_frame, score``.

    Returns:
        ``{block: {"retrieval_min_score", "retrieved_age_mean", "retrieved_age_min",
        "retrieved_age_max", "retrieved_frames"}}`` for every block that retrieved something.
    """
    by_block: dict[int, list[tuple[int, float]]] = {}
    for block, query, frame, score in zip(rows["block_index"], rows["query_frame"],
                                          rows["retrieved_frame"], rows["score"], strict=True):
        by_block.setdefault(int(block), []).append((int(query) - int(frame), float(score)))
    out = {}
    for block, hits in sorted(by_block.items()):
        ages = np.array([a for a, _ in hits], dtype=np.float64)
        out[block] = {"retrieval_min_score": min(s for _, s in hits),
                      "retrieved_age_mean": float(ages.mean()), "retrieved_age_min": float(ages.min()),
                      "retrieved_age_max": float(ages.max()), "retrieved_frames": float(len(hits))}
    return out


def frame_strip(previews: Sequence[bytes], count: int = 12, height: int = 64, gap: int = 2) -> np.ndarray:
    """``count`` evenly spaced PNG previews side by side: uint8 ``[height, W, 3]``.

    Previews are scaled to ``height`` nearest-neighbour (latent cells stay sharp).
    """
    from PIL import Image

    if not previews:
        raise ValueError("frame_strip: no previews")
    picks = np.unique(np.linspace(0, len(previews) - 1, min(count, len(previews))).round().astype(int))
    tiles = []
    for i in picks:
        image = Image.open(io.BytesIO(previews[i])).convert("RGB")
        width = max(1, round(image.width * height / image.height))
        tiles.append(np.asarray(image.resize((width, height), Image.NEAREST)))
        tiles.append(np.zeros((height, gap, 3), np.uint8))
    return np.concatenate(tiles[:-1], axis=1)


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class PredictTensorBoard(L.Callback):
    """Logs each finished ``lrag predict`` video to TensorBoard (see the module docstring).

    Expects ``predict_step`` outputs like ``GeneratorModule``'s (``{"run_ids", "dirs"}``) and a
    module with ``hparams.store_uri``. Does nothing without a TensorBoard logger.

    Args:
        strip_frames: Frames in the ``frames`` image strip.
    """

    def __init__(self, strip_frames: int = 12) -> None:
        if strip_frames < 1:
            raise ValueError(f"PredictTensorBoard: strip_frames={strip_frames}; use >= 1.")
        self.strip_frames = strip_frames

    @rank_zero_only
    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                             batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # noqa: D102
        logger = trainer.logger
        writer = getattr(logger, "experiment", None) if logger is not None else None
        if not hasattr(writer, "add_image") or not isinstance(outputs, dict):
            return
        # Through lancedb, which the predict run has loaded anyway (the read-only path needs pylance).
        store = MemoryStore(pl_module.hparams.store_uri)
        stats = {s["run_id"]: s for s in getattr(pl_module, "run_stats", [])}
        for run_id, run_dir in zip(outputs.get("run_ids", []), outputs.get("dirs", []), strict=True):
            self._log_run(writer, logger, store, run_id, Path(run_dir), stats.get(run_id))
        writer.flush()

    def _log_run(self, writer: Any, logger: Any, store: MemoryStore, run_id: str, run_dir: Path,
                 stats: dict[str, Any] | None) -> None:
        per_block = block_retrieval_scalars(store.retrievals(run_id).to_pydict())
        for block, values in per_block.items():
            logger.log_metrics({f"{run_id}/{k}": v for k, v in values.items()}, step=block)
        if stats is not None:
            logger.log_metrics({f"{run_id}/run_frames_per_s": stats["frames_per_s"],
                                f"{run_id}/run_seconds": stats["seconds"]}, step=0)
        plot = run_dir / "retrievals.png"
        if plot.is_file():
            writer.add_image(f"{run_id}/retrievals", _png(plot), 0, dataformats="HWC")
        previews = [p for p in store.frames(run_id)["preview_png"].to_pylist() if p]
        if previews:
            strip = frame_strip(previews, self.strip_frames)
            writer.add_image(f"{run_id}/frames", strip, 0, dataformats="HWC")
        log.info("TensorBoard: %s: %d blocks with retrievals, %d previews", run_id, len(per_block),
                 len(previews))
