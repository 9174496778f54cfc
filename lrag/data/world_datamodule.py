"""Procedural-world clips with ground truth, for training a small backbone (``lrag fit``).

Clips come from :func:`lrag.data.world.generate_world_clip`: a viewport moving over a latent
world map, with the viewport position of every frame. The position is what the training
objective needs to choose *which* far-past frames to put in the memory slots (frames showing
the same place) and what the camera conditioning is made of. Worlds are rendered once at
``setup`` (a few MB at the demo size); each sample is a random window of one clip.

For fast training the loader yields only *indices* (clip and start of every window of a
batch); :meth:`WorldDataModule.on_after_batch_transfer` slices the windows out of a copy of
all clips kept on the training device, so a step moves a few bytes to the GPU, not the batch.

World seeds ``seed_offset .. seed_offset + num_worlds - 1`` are training worlds; evaluation
must use other seeds (``lrag eval`` checks this against the checkpoint's hyper-parameters).
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lrag.data.world_config import WorldConfig
from lrag.data.world import generate_world_clip

log = logging.getLogger(__name__)

__all__ = ["WorldClipDataset", "WorldDataModule", "WorldIndexBatches", "render_world", "world_prompt"]


def world_prompt(meta: dict[str, Any]) -> str:
    """The text prompt of a world clip: its style only.

    The world id is left out on purpose: evaluation worlds are unseen, so a prompt naming the
    world would be a token the text encoder never saw in training.
    """
    return f"a latent world in style {meta['world']['style_id']}"


def render_world(seed: int, frames: int, config: WorldConfig) -> dict[str, Any]:
    """One world clip as tensors: ``latents [T,C,H,W]``, ``positions [T,2]``, ``camera [T,2]``.

    Args:
        seed: World seed (also the trajectory seed).
        frames: Latent frames.
        config: World settings.

    Returns:
        ``{"latents", "positions", "camera", "prompt", "meta"}``.
    """
    latents, meta = generate_world_clip(seed, frames, config)
    return {
        "latents": torch.from_numpy(latents),
        "positions": torch.tensor(meta["positions"], dtype=torch.float32),
        "camera": torch.tensor(meta["camera"], dtype=torch.float32),
        "prompt": world_prompt(meta),
        "meta": meta,
    }


class WorldClipDataset(IterableDataset):
    """Endless random windows of pre-rendered world clips.

    Args:
        clips: Rendered clips from :func:`render_world`.
        window_frames: Frames per sample.
        seed: Seed of the window sampler (each worker adds its id).
    """

    def __init__(self, clips: list[dict[str, Any]], window_frames: int, seed: int = 0) -> None:
        if not clips:
            raise ValueError("WorldClipDataset: no clips; set num_worlds >= 1.")
        short = [i for i, c in enumerate(clips) if c["latents"].shape[0] < window_frames]
        if short:
            raise ValueError(
                f"WorldClipDataset: clip {short[0]} has {clips[short[0]]['latents'].shape[0]} frames, "
                f"fewer than window_frames={window_frames}; raise clip_frames."
            )
        self.clips, self.window_frames, self.seed = clips, window_frames, seed
        self._passes = 0  # a new stream per epoch, still reproducible from the seed

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        rng = np.random.default_rng([self.seed, 0 if info is None else info.id, self._passes])
        self._passes += 1
        n = self.window_frames
        while True:
            clip = self.clips[int(rng.integers(len(self.clips)))]
            start = int(rng.integers(clip["latents"].shape[0] - n + 1))
            yield {
                "latents": clip["latents"][start : start + n],
                "positions": clip["positions"][start : start + n],
                "camera": clip["camera"][start : start + n],
                "prompt": clip["prompt"],
            }


class WorldIndexBatches(IterableDataset):
    """Endless batches of window indices: ``{"clip": [B], "start": [B], "prompt": [B] strings}``.

    Args:
        clip_frames: Frames of every clip (all clips have the same length).
        prompts: Prompt of each clip.
        window_frames: Frames per window.
        batch_size: Windows per batch.
        seed: Seed of the sampler (each worker adds its id).
        rank: Global rank of this process under DDP; each (rank, worker) draws its own stream.
    """

    def __init__(self, clip_frames: int, prompts: list[str], window_frames: int, batch_size: int,
                 seed: int = 0, rank: int = 0) -> None:
        if not prompts:
            raise ValueError("WorldIndexBatches: no clips; set num_worlds >= 1.")
        self.clip_frames, self.prompts = clip_frames, prompts
        self.window_frames, self.batch_size, self.seed = window_frames, batch_size, seed
        self.rank = rank
        self._passes = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        # Stream id rank * workers + worker: distinct over ranks and workers (identical streams
        # on two ranks would only repeat work), and the old worker id on one device.
        stream = self.rank * workers + worker
        seq = np.random.SeedSequence([self.seed, stream, self._passes])
        gen = torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0]) % 2**63)
        self._passes += 1
        while True:
            clip = torch.randint(len(self.prompts), (self.batch_size,), generator=gen)
            start = torch.randint(self.clip_frames - self.window_frames + 1, (self.batch_size,), generator=gen)
            yield {"clip": clip, "start": start, "prompt": [self.prompts[i] for i in clip.tolist()]}


class WorldDataModule(L.LightningDataModule):
    """Training windows over procedural worlds (see the module docstring).

    Args:
        num_worlds: Training worlds (distinct seeds).
        seed_offset: First training world seed; evaluation worlds must lie outside
            ``[seed_offset, seed_offset + num_worlds)``.
        clip_frames: Frames rendered per world (one trajectory each).
        window_frames: Frames per training sample: the sampled window; must exceed the
            attention window so that evicted frames exist for memory exposure.
        batch_size: Samples per optimiser step over all devices; each of ``world_size`` devices
            gets ``batch_size // world_size`` (must divide evenly), from its own random stream.
        steps_per_epoch: Optimiser steps per epoch, on any number of devices (the stream is
            endless; every rank takes this many batches).
        height: Latent frame height (world ``frame_height``).
        width: Latent frame width.
        channels: Latent channels.
        revisit_min: Shortest loop/out-and-back period of trajectories, in frames; keep it
            above the attention window so revisits need the memory.
        revisit_max: Longest period, in frames.
        num_workers: DataLoader workers (0 is fine: samples are slices of tensors).
        seed: Seed of the window sampler.
    """

    def __init__(
        self,
        num_worlds: int = 64,
        seed_offset: int = 0,
        clip_frames: int = 96,
        window_frames: int = 48,
        batch_size: int = 8,
        steps_per_epoch: int = 100,
        height: int = 8,
        width: int = 8,
        channels: int = 16,
        revisit_min: int = 16,
        revisit_max: int = 40,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if num_worlds < 1 or batch_size < 1 or steps_per_epoch < 1:
            raise ValueError(
                f"WorldDataModule: num_worlds ({num_worlds}), batch_size ({batch_size}) and "
                f"steps_per_epoch ({steps_per_epoch}) must be >= 1."
            )
        if window_frames > clip_frames:
            raise ValueError(
                f"WorldDataModule: window_frames={window_frames} > clip_frames={clip_frames}; "
                "raise clip_frames or lower window_frames."
            )
        self.world_config = WorldConfig(frame_height=height, frame_width=width, channels=channels,
                                        revisit_min=revisit_min, revisit_max=revisit_max)
        self.clips: list[dict[str, Any]] = []
        self._stacked: dict[str, dict[str, Tensor]] = {}  # per device: all clips stacked

    @property
    def train_seeds(self) -> range:
        """World seeds used for training."""
        return range(self.hparams.seed_offset, self.hparams.seed_offset + self.hparams.num_worlds)

    def setup(self, stage: str | None = None) -> None:  # noqa: D102
        if not self.clips:
            self.clips = [render_world(s, self.hparams.clip_frames, self.world_config)
                          for s in self.train_seeds]
            log.info("rendered %d training worlds of %d frames", len(self.clips), self.hparams.clip_frames)

    def train_dataloader(self) -> DataLoader:  # noqa: D102
        hp = self.hparams
        prompts = [c["prompt"] for c in self.clips]
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if hp.batch_size % world:
            raise ValueError(f"WorldDataModule: batch_size={hp.batch_size} is not divisible by "
                             f"world_size={world}; use a multiple of the device count.")
        dataset = WorldIndexBatches(hp.clip_frames, prompts, hp.window_frames,
                                    hp.batch_size // world, hp.seed, rank)
        return DataLoader(_Limited(dataset, hp.steps_per_epoch), batch_size=None, num_workers=hp.num_workers)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Turn an index batch into windows on the batch's device (see :meth:`materialize`)."""
        return self.materialize(batch)

    def materialize(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``{"clip", "start", "prompt"}`` -> ``latents [B,T,C,H,W]``, ``positions``, ``camera``, ``prompt``.

        The clips are copied to the device of ``batch["clip"]`` once; later batches are one
        gather each, with no host round trip.
        """
        if "clip" not in batch:
            return batch
        if not self.clips:
            raise RuntimeError("WorldDataModule: call setup() before materialize().")
        device = batch["clip"].device
        store = self._stacked.get(str(device))
        if store is None:
            store = {k: torch.stack([c[k] for c in self.clips]).to(device) for k in ("latents", "positions", "camera")}
            self._stacked[str(device)] = store
        clip = batch["clip"][:, None]
        frames = batch["start"][:, None] + torch.arange(self.hparams.window_frames, device=device)
        out = {k: v[clip, frames] for k, v in store.items()}
        out["prompt"] = list(batch["prompt"])
        return out


class _Limited(IterableDataset):
    """First ``count`` items of an endless stream, so an epoch has a fixed length."""

    def __init__(self, dataset: IterableDataset, count: int) -> None:
        self.dataset, self.count = dataset, count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers = 1 if info is None else info.num_workers
        for i, item in enumerate(self.dataset):
            if i >= self.count // workers:
                return
            yield item

    def __len__(self) -> int:
        return self.count
