"""A finished block as store rows: its frames (descriptor, shard location, preview) and retrievals.

The sampler counts frames from the blank prefix on (``sink_mode: blank``); runs, the store and
the shards count from the video's first frame, so block results are shifted first.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lrag.data.shards import ShardLocation
from lrag.memory.bank import RetrievalRecord
from lrag.memory.schema import FrameRow, RetrievalRow
from lrag.runs.outputs import png_preview
from lrag.sampling.sampler import BlockResult

__all__ = ["descriptor_tag", "frame_rows", "retrieval_rows", "shift_result"]


def shift_result(result: BlockResult, prefix: int, frames_per_block: int) -> BlockResult:
    """A block result in video coordinates: frame and block indices minus the blank prefix.

    Retrieved frames of the prefix get negative indices (they are blank, never persisted).
    """
    if not prefix:
        return result
    record: RetrievalRecord | None = result.retrieval
    if record is not None:
        record = dataclasses.replace(record, query_frame=record.query_frame - prefix,
                                     frames=record.frames - prefix)
    return dataclasses.replace(result, block=result.block - prefix // frames_per_block,
                               start_frame=result.start_frame - prefix, retrieval=record)


def retrieval_rows(run_id: str, result: BlockResult) -> list[RetrievalRow]:
    """Store rows of a block's retrieval (one per rank; none for a block without retrieval)."""
    record = result.retrieval
    if record is None:
        return []
    frames, scores = record.frames[0].tolist(), record.scores[0].tolist()
    return [RetrievalRow(run_id=run_id, block_index=result.block, query_frame=int(record.query_frame),
                         rank=rank, retrieved_frame=int(frame), score=float(score))
            for rank, (frame, score) in enumerate(zip(frames, scores))]


def descriptor_tag(memory: Any, hashes: dict[str, str]) -> str:
    """The ``frames.descriptor`` value of a run: the memory's descriptor, ``ae`` tagged with the
    embedder's hash and ``gen_keys`` with the backbone's hash, layers and query side (the store
    never compares frames of different descriptors).

    Args:
        memory: The retrieval memory (its ``descriptor`` names the embedding space).
        hashes: The generator's weight hashes (:meth:`GeneratorModule.checkpoint_hashes`).
    """
    descriptor = str(getattr(memory, "descriptor", "avg_pool"))
    if descriptor == "ae":
        descriptor += ":" + hashes.get("embedder", "unhashed")[:12]
    elif descriptor == "gen_keys":  # the key space is the backbone's, at these layers
        keys = memory.generator_keys
        descriptor += (f":{hashes.get('backbone_weights', 'unhashed')[:12]}"
                       f":{','.join(map(str, keys.layers))}:{keys.query}")
    return descriptor


def frame_rows(run_id: str, result: BlockResult, location: ShardLocation, frames: np.ndarray,
               descriptor: str) -> list[FrameRow]:
    """Store rows of a block's frames: descriptor embedding, shard location and PNG preview.

    Args:
        run_id: The run.
        result: The block in video coordinates (:func:`shift_result`).
        location: Where the block's shard was written.
        frames: The block's decoded uint8 frames ``[T, H', W', 3]``.
        descriptor: :func:`descriptor_tag` of the run (used when the block has descriptors).
    """
    f = result.latents.shape[1]
    if result.descriptors is not None:
        embeddings = result.descriptors[0].float().cpu().numpy()
    else:  # native memories may compute no descriptor: spatial mean is zero-safe
        descriptor = "avg_pool"
        embeddings = result.latents[0].float().mean(dim=(-2, -1)).cpu().numpy()
    # Decoders may change the frame rate (the Wan VAE makes 4 frames per latent frame).
    pick = np.linspace(0, len(frames) - 1, f).round().astype(int) if f > 1 else [0]
    return [
        FrameRow(run_id=run_id, frame_index=result.start_frame + j,
                 block_index=result.block, embedding=embeddings[j].astype(np.float32),
                 shard=location.shard, key=location.key,
                 preview_png=png_preview(frames[pick[j]]), descriptor=descriptor)
        for j in range(f)
    ]
