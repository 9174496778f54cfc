"""One finished block, from the GPU loop to disk and store: the hand-over and the writer's sink.

:func:`hand_over` runs in the sampling loop. It starts the device->host copies of everything the
block persists (latents, descriptors, retrieval, decoded frames) into page-locked buffers with
``non_blocking=True`` and records one CUDA event after them, so the loop never waits for the GPU
(the buffers come from torch's caching host allocator: after the first blocks no new page-locked
memory is allocated; at most ``queue depth + 2`` blocks are alive at once).

:class:`BlockPersister` is the sink of :class:`lrag.runs.writer.BlockWriter`. It waits on the
block's event, then writes in the order a resume relies on: the NaN/Inf check (nothing of a bad
block is written), the float32 block file and the block shard, the video chunk, the store rows
(``frames``, ``retrievals``: a block listed there always has its files), then the per-block
scalars and the progress bar. A failure names the run, the block and the file or table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lrag.memory.store import MemoryStore
from lrag.runs.faults import check_finite
from lrag.runs.resume import VideoRun
from lrag.runs.rows import frame_rows, retrieval_rows
from lrag.runs.writer import PersistenceError
from lrag.sampling.sampler import BlockResult

__all__ = ["BlockPersister", "HostBlock", "hand_over", "to_host"]


def to_host(tensor: Tensor) -> Tensor:
    """A host copy of ``tensor`` that the caller may read only after the block's event.

    CUDA tensors are copied with ``non_blocking=True`` into page-locked memory (the host does not
    wait); CPU tensors are cloned, so the sampler may reuse its buffers.
    """
    if tensor.device.type == "cuda":
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return host.copy_(tensor.detach(), non_blocking=True)
    return tensor.detach().clone()


@dataclass
class HostBlock:
    """A finished block as handed to the writer (host tensors, valid after :meth:`wait`).

    Attributes:
        result: The block in video coordinates; ``latents [1, f, C, H, W]``, ``descriptors
            [1, f, D]`` and the retrieval's ``frames``/``scores`` ``[1, k]`` are host tensors.
        frames: Decoded uint8 video frames of the block ``[T, H', W', 3]`` (host).
        pool_frames: Frames in the retrieval pool after the block (a per-block scalar).
        kv_bytes: Bytes of stored K/V after the block (a per-block scalar).
        ready: Event recorded after the copies (None on CPU: the copies are done).
    """

    result: BlockResult
    frames: Tensor
    pool_frames: int
    kv_bytes: int
    ready: Any = None

    def wait(self) -> None:
        """Block until the device->host copies of this block are complete."""
        if self.ready is not None:
            self.ready.synchronize()


def hand_over(result: BlockResult, frames: Tensor, pool_frames: int, kv_bytes: int) -> HostBlock:
    """Start the host copies of a finished block (no device sync).

    Args:
        result: The block in video coordinates (batch of one video).
        frames: Its decoded uint8 frames ``[1, T, H', W', 3]`` on the compute device.
        pool_frames: :attr:`RetrievalMemory.pool_size` after the block.
        kv_bytes: :meth:`RetrievalMemory.stored_bytes` after the block.
    """
    record = result.retrieval
    if record is not None:
        record = dataclasses.replace(record, frames=to_host(record.frames), scores=to_host(record.scores))
    host = dataclasses.replace(
        result, latents=to_host(result.latents), retrieval=record,
        descriptors=None if result.descriptors is None else to_host(result.descriptors))
    ready = None
    if result.latents.device.type == "cuda":
        ready = torch.cuda.Event(blocking=True)  # the writer sleeps on it instead of spinning a core
        ready.record(torch.cuda.current_stream(result.latents.device))
    return HostBlock(host, to_host(frames[0]), pool_frames, kv_bytes, ready)


@contextlib.contextmanager
def _writing(run: VideoRun, block: int, target: str) -> Iterator[None]:
    """Turn a failure while writing ``target`` into one :class:`PersistenceError` naming it."""
    try:
        yield
    except Exception as err:
        kept = f"blocks 0..{block - 1} are kept" if block else "no block was finished"
        raise PersistenceError(
            f"run {run.run_id}: writing block {block} failed at {target}: {type(err).__name__}: "
            f"{err}. The run was stopped and marked failed; {kept}. Fix the cause (disk space, "
            f"permissions, the store folder) and continue with `lrag predict --config ... "
            f"--resume {run.run_id}`."
        ) from err


@dataclass
class BlockPersister:
    """Writes :class:`HostBlock` s of one run (the :class:`~lrag.runs.writer.BlockWriter` sink).

    Args:
        run: The run being generated (its outputs; ``frames_done`` / ``seconds`` are updated).
        store: The LanceDB run memory.
        descriptor: The ``frames.descriptor`` tag of the run (:func:`lrag.runs.rows.descriptor_tag`).
        log_metrics: ``(metrics, step) -> None`` for the per-block scalars, or None.
        started: ``time.perf_counter()`` when sampling started (for the progress frames/s).
    """

    run: VideoRun
    store: MemoryStore
    descriptor: str
    log_metrics: Callable[[dict[str, float], int], None] | None = None
    started: float = field(default_factory=time.perf_counter)
    #: ``time.perf_counter()`` when each block was fully persisted (benchmarks: e2e throughput).
    done_at: list[float] = field(default_factory=list)

    def __call__(self, item: HostBlock) -> None:
        """Persist one block (see the module docstring for the order)."""
        item.wait()
        run, result = self.run, item.result
        latents = result.latents[0]  # one run per sampler call: batch of 1
        check_finite(latents, run.run_id, result.block, result.start_frame)
        out = run.outputs
        with _writing(run, result.block, f"the block files {out.blocks_dir}/block-{result.block:05d}.*"):
            location = out.write_block(result.block, result.start_frame, latents)
        frames = item.frames.numpy()
        with _writing(run, result.block, f"the video {out.dir / 'video.mp4'}"):
            out.write_video_frames(frames)
        rows = frame_rows(run.run_id, result, location, frames, self.descriptor)
        with _writing(run, result.block, f"the store tables frames/retrievals of {self.store.uri}"):
            self.store.add_block(run.run_id, result.block, rows, retrieval_rows(run.run_id, result))
        run.frames_done += latents.shape[0]
        run.seconds += result.seconds
        self.done_at.append(time.perf_counter())
        self._report(item)

    def _report(self, item: HostBlock) -> None:
        """Per-block scalars (TensorBoard) and the progress bar; after the block is durable."""
        run, result = self.run, item.result
        f = result.latents.shape[1]
        metrics = {"block_seconds": result.seconds, "frames_per_s": f / max(result.seconds, 1e-9)}
        if result.retrieval is not None and result.retrieval.scores.numel():
            scores = result.retrieval.scores[0].float()
            metrics |= {"retrieval_top_score": scores.max().item(),
                        "retrieval_mean_score": scores.mean().item()}
        metrics["memory_pool_frames"] = float(item.pool_frames)
        metrics["memory_kv_mib"] = item.kv_bytes / 2**20
        if self.log_metrics is not None:
            self.log_metrics({f"{run.run_id}/{k}": v for k, v in metrics.items()}, result.block)
        if run.progress is not None:
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            run.progress.update(run.task, advance=1, fps=run.frames_done / elapsed)
