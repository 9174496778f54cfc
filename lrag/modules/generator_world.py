"""Knob checks, world conditioning, trained-weight loading and store rows for :class:`GeneratorModule`.

Sampling a camera-conditioned backbone has to repeat what training did
(:class:`lrag.modules.backbone_fit.BackboneFitModule`) and what ``lrag eval`` does
(:func:`lrag.eval.runner.generate_video`): with ``sink_mode: blank`` one block of zero frames is
put in front of the video (given to the sampler as already-finished latents), its frames have
no place (NaN position) and no motion, and every other frame gets the world's camera. The
helpers here build those per-video tensors and move the sampler's block results back to video
coordinates (the blank prefix is never persisted).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lrag.assets import resolve_asset
from lrag.data.prompts import WorldSpec, check_prompt_schedule, prompt_at
from lrag.data.run_outputs import png_preview
from lrag.data.shards import ShardLocation
from lrag.memory.bank import RetrievalRecord
from lrag.memory.store import FrameRow, RetrievalRow
from lrag.modules.backbone_io import BackboneFitInfo, load_backbone_fit
from lrag.modules.nets.checkpoints import checkpoint_hash, load_backbone_weights
from lrag.modules.sampler import BlockResult

log = logging.getLogger(__name__)

__all__ = ["PER_FRAME_META", "check_knobs", "context_schedule", "effective_schedule", "frame_rows", "load_generator_weights", "progress_bar", "retrieval_rows", "set_world", "shift_result", "truncate_meta",
           "world_from_meta"]

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
#: Ground-truth fields of a world clip's meta that hold one entry per latent frame.
PER_FRAME_META = ("positions", "camera", "visible_landmarks", "objects", "revisits")
#: GeneratorModule knobs that should equal the backbone's training values.
_MATCH_TRAINING = ("frames_per_block", "positions", "memory_position", "sink_mode")


def camera_mode(backbone: nn.Module) -> str:
    """``"none"`` for a plain backbone, else the ``CameraConditioned`` mode."""
    return getattr(backbone, "camera", "none")


def load_generator_weights(backbone: nn.Module, path: str, field: str, knobs: dict[str, Any]
                           ) -> tuple[str, BackboneFitInfo | None]:
    """Load ``path`` (``asset:`` names allowed) strictly into ``backbone``.

    A camera-conditioned backbone takes a ``BackboneFitModule`` checkpoint or its export;
    a plain backbone takes any generator checkpoint (:func:`load_backbone_weights`).

    Args:
        backbone: The injected backbone.
        path: Config value of ``field``.
        field: Config field name, for error messages.
        knobs: The generator's knobs; differences from training knobs are logged.

    Returns:
        ``(sha256 of the file, training info or None)``.
    """
    path = resolve_asset(path, field)
    if hasattr(backbone, "camera"):
        info = load_backbone_fit(backbone, path)
        for name in _MATCH_TRAINING:
            trained = info.knobs.get(name)
            if trained is not None and knobs.get(name) != trained:
                log.warning("%s: %s=%r at sampling but %r in training (%s)", field, name,
                            knobs.get(name), trained, path)
    else:
        load_backbone_weights(backbone, path)
        info = None
    return checkpoint_hash(path), info


def truncate_meta(meta: dict[str, Any], frames: int) -> dict[str, Any]:
    """The ground truth of the first ``frames`` frames (per-frame lists cut, the rest kept)."""
    out = dict(meta)
    for key in PER_FRAME_META:
        if isinstance(out.get(key), list):
            out[key] = out[key][:frames]
    if isinstance(out.get("revisits"), list):
        out["revisits"] = [[j for j in r if j < frames] for r in out["revisits"]]
    return out


def world_from_meta(meta: dict[str, Any]) -> WorldSpec:
    """Rebuild a :class:`WorldSpec` from the ``world.json`` of a run directory (resume)."""
    return WorldSpec(int(meta["world"]["world_id"]),
                     torch.tensor(meta["positions"], dtype=torch.float32),
                     torch.tensor(meta["camera"], dtype=torch.float32), meta)


def set_world(backbone: nn.Module, memory: Any, world: WorldSpec | None, num_frames: int,
              prefix: int, device: torch.device) -> None:
    """Give the backbone (and a pose-oracle memory) the camera of every global frame.

    Args:
        backbone: Backbone, possibly ``CameraConditioned``.
        memory: The retrieval memory; a ``GroundTruthMemory`` gets the viewport positions.
        world: The video's world, or None (text prompt only).
        num_frames: Frames of the video (without the prefix).
        prefix: Blank frames in front of the video.
        device: Sampling device.

    Raises:
        ValueError: A camera-conditioned backbone without a world, or a too short trajectory.
    """
    if world is None:
        if camera_mode(backbone) != "none":
            raise ValueError(
                f"the backbone is camera-conditioned (camera={camera_mode(backbone)!r}) and needs a "
                "camera path per video: use data: class_path: lrag.data.prompts.WorldPromptDataModule."
            )
        return
    if world.positions.shape[0] < num_frames:
        raise ValueError(f"world {world.world_seed}: trajectory of {world.positions.shape[0]} frames, "
                         f"the video has {num_frames}; raise data.init_args.num_frames.")
    pos = torch.cat([torch.full((prefix, 2), math.nan), world.positions[:num_frames].float()])[None]
    cam = torch.cat([torch.zeros(prefix, 2), world.camera[:num_frames].float()])[None]
    if hasattr(backbone, "set_camera"):
        backbone.set_camera(cam.to(device), pos.to(device))
    if hasattr(memory, "set_positions"):
        memory.set_positions(pos.to(device))


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


def frame_rows(run_id: str, result: BlockResult, location: ShardLocation, frames: np.ndarray, memory: Any,
               checkpoint_hashes: Callable[[], dict[str, str]]) -> list[FrameRow]:
    """Store rows of a block's frames: descriptor embedding, shard location and PNG preview.

    Args:
        run_id: The run.
        result: The block in video coordinates (:func:`shift_result`).
        location: Where the block's shard was written.
        frames: The block's decoded uint8 frames ``[T, H', W', 3]``.
        memory: The retrieval memory (its ``descriptor`` names the embedding space).
        checkpoint_hashes: The generator's weight hashes; called only for an ``ae`` descriptor,
            which is tagged with the embedder's hash.
    """
    f = result.latents.shape[1]
    descriptor = "avg_pool"  # the store never compares frames of different descriptors
    if result.descriptors is not None:
        embeddings = result.descriptors[0].float().cpu().numpy()
        descriptor = str(getattr(memory, "descriptor", descriptor))
        if descriptor == "ae":
            descriptor += ":" + checkpoint_hashes().get("embedder", "unhashed")[:12]
    else:  # native memories may compute no descriptor: spatial mean is zero-safe
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


def blank_prefix(prefix: int, channels: int, height: int, width: int, device: torch.device) -> Tensor:
    """Zero latents ``[1, prefix, C, H, W]`` of the blank sink block."""
    return torch.zeros(1, prefix, channels, height, width, device=device)


def check_knobs(num_frames: int, frames_per_block: int, window: int, sink: int, budget: str,
                 run_name: str | None, sink_mode: str = "first") -> None:
    """Raise ``ValueError`` naming the first invalid ``GeneratorModule`` knob."""
    if frames_per_block < 1 or num_frames < frames_per_block or num_frames % frames_per_block:
        raise ValueError(
            f"GeneratorModule: num_frames={num_frames} must be a positive multiple of "
            f"frames_per_block={frames_per_block}."
        )
    if not 0 <= sink < window:
        raise ValueError(f"GeneratorModule: need 0 <= sink ({sink}) < window ({window}).")
    if budget not in ("replace", "add"):
        raise ValueError(f"GeneratorModule: budget={budget!r}; use 'replace' or 'add'.")
    if sink_mode not in ("first", "blank"):
        raise ValueError(f"GeneratorModule: sink_mode={sink_mode!r}; use 'first' or 'blank'.")
    if run_name is not None and not _RUN_NAME.match(run_name):
        raise ValueError(f"GeneratorModule: run_name={run_name!r}; use letters, digits, '_' "
                         "and '-' only (it becomes a directory and a shard key).")


def progress_bar(enabled: bool):
    """A rich progress bar on stderr (blocks done, frames/s); a no-op when disabled."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("blocks  {task.fields[fps]:.2f} frames/s"), TimeElapsedColumn(),
                    console=Console(stderr=True), disable=not enabled)


def effective_schedule(prompt: str, schedule: list[dict] | None, frames_per_block: int,
                       num_frames: int) -> list[dict]:
    """A video's prompt schedule, checked against the block grid, starting at frame 0.

    Args:
        prompt: The video's prompt; it applies until the first switch (unless one is at 0).
        schedule: ``[{"frame", "prompt"}, ...]`` from the data module, or None (no switching).
        frames_per_block: Switches happen at block starts only.
        num_frames: Frames of the video; a switch at or after it would never apply.

    Returns:
        ``[]`` without a schedule, else the schedule with ``{"frame": 0, "prompt": prompt}``
        in front when its first switch is later than frame 0.

    Raises:
        ValueError: naming the entry whose frame is off the block grid or past the video.
    """
    if not schedule:
        return []
    schedule = check_prompt_schedule(schedule)
    for i, entry in enumerate(schedule):
        frame = entry["frame"]
        if frame % frames_per_block or frame >= num_frames:
            raise ValueError(
                f"prompt_schedule[{i}] = {entry!r}: frame must be a multiple of frames_per_block="
                f"{frames_per_block} below num_frames={num_frames} (switches happen at block starts)."
            )
    head = [] if schedule[0]["frame"] == 0 else [{"frame": 0, "prompt": prompt}]
    return head + schedule


def context_schedule(schedule: list[dict], text_encoder: Any, prefix: int, device: torch.device
                     ) -> tuple[Tensor, Any]:
    """Encode every prompt of ``schedule`` once: ``(context at frame 0, frame -> context | None)``.

    The sampler counts frames from the blank prefix on; prefix frames take the frame-0 prompt.
    The callable is None for a single prompt (no switch, no re-caching).
    """
    prompts = list(dict.fromkeys(e["prompt"] for e in schedule))
    contexts = {p: text_encoder([p]).to(device) for p in prompts}
    first = contexts[prompt_at(schedule, prompts[0], 0)]
    if len(prompts) == 1:
        return first, None
    return first, lambda frame: contexts[prompt_at(schedule, prompts[0], max(frame - prefix, 0))]
