"""LightningDataModule over latent shards: random contiguous windows of ``seq_len`` frames.

Pipeline (train): shard list -> split by node -> split by worker -> seeded shard shuffle ->
tar samples -> decode -> seeded sample shuffle buffer -> one window per clip -> batches.
Validation uses a fixed window per clip (it depends on ``seed`` and the key only), so
validation losses are comparable across epochs.

Under DDP (``--trainer.devices N``, ``num_nodes``) rank ``r`` trains on shards ``r, r + N, ...``
of the sorted training list (no shard on two ranks), split again over its workers. Every worker
stream repeats its shards until it has yielded its fixed share of the epoch, so every rank runs
the same number of batches even when the shard count is not a multiple of ``N`` (a rank with
fewer shards revisits them more often) - unequal batch counts would hang DDP's gradient sync.
"""

from __future__ import annotations

import logging
import math
import random
import zlib
from typing import Any, Iterator

import lightning as L
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from lrag.data.revisits import clip_truth, revisit_partners
from lrag.data.shard_check import BadShardPolicy, check_shards
from lrag.data.shards import Clip, LatentFormatError, decode_clip, resolve_shards

log = logging.getLogger(__name__)

#: Epoch index used for validation windows: fixed, so every validation pass sees the same frames.
_VAL_EPOCH = -1


def window_start(num_frames: int, seq_len: int, seed: int, epoch: int, key: str) -> int:
    """Start frame of a clip's window, a pure function of ``(seed, epoch, key)``.

    Independent of worker count and sample order, so windows are reproducible under any loader
    layout. Clips no longer than ``seq_len`` start at 0 (and are padded).
    """
    span = num_frames - seq_len
    if span <= 0:
        return 0
    rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch + 1, zlib.crc32(key.encode("utf-8"))])
    return int(rng.integers(0, span + 1))


def take_window(latents: np.ndarray, start: int, seq_len: int) -> np.ndarray:
    """``latents[start:start+seq_len]`` as float32; too-short clips repeat their last frame.

    Args:
        latents: ``[T, C, H, W]``.
        start: First frame.
        seq_len: Frames wanted.

    Returns:
        ``[seq_len, C, H, W]`` float32.
    """
    window = latents[start:start + seq_len].astype(np.float32)
    missing = seq_len - window.shape[0]
    if missing > 0:
        pad = np.repeat(window[-1:], missing, axis=0)
        window = np.concatenate([window, pad], axis=0)
    return window


def make_sample(clip: Clip, seq_len: int, seed: int, epoch: int,
                revisit_min_gap: int | None = None) -> dict[str, Any]:
    """One training sample from a clip: ``{"latents": [seq_len,C,H,W] float32, "key", "start"}``.

    With ``revisit_min_gap`` (clips with ground truth only) it also holds ``revisit_latents``
    ``[seq_len,C,H,W]`` (one partner frame per window frame) and the ``positives`` /
    ``negatives`` masks ``[2*seq_len, 2*seq_len]`` of :func:`lrag.data.revisits.revisit_partners`.
    """
    n = clip.latents.shape[0]
    start = window_start(n, seq_len, seed, epoch, clip.key)
    sample = {"latents": take_window(clip.latents, start, seq_len), "key": clip.key, "start": start}
    if revisit_min_gap is not None:
        truth = clip_truth(clip.meta, n, f"clip {clip.key!r}")
        rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch + 2, zlib.crc32(clip.key.encode("utf-8"))])
        partners, pos, neg = revisit_partners(truth, start, seq_len, revisit_min_gap, rng)
        sample.update(revisit_latents=clip.latents[partners].astype(np.float32), positives=pos, negatives=neg)
    return sample


def collate_windows(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into ``{"latents": [B,T,C,H,W] float32, "key": list[str], "start": [B]}``."""
    shapes = {s["latents"].shape for s in samples}
    if len(shapes) > 1:
        keys = [(s["key"], s["latents"].shape) for s in samples]
        raise ValueError(f"clips in one batch differ in [C, H, W]: {keys}; a shard set must hold "
                         "one latent size (see `lrag data inspect`).")
    batch = {
        "latents": torch.from_numpy(np.stack([s["latents"] for s in samples])),
        "key": [s["key"] for s in samples],
        "start": torch.tensor([s["start"] for s in samples], dtype=torch.long),
    }
    for name in ("revisit_latents", "positives", "negatives"):
        if name in samples[0]:
            batch[name] = torch.from_numpy(np.stack([s[name] for s in samples]))
    return batch


class RandomWindows(wds.PipelineStage):
    """Pipeline stage: one window per clip, drawn with the pass number as the epoch.

    Each dataset copy (main process, or each persistent worker) counts its own passes, so the
    k-th pass of every copy uses epoch k.
    """

    def __init__(self, seq_len: int, seed: int, revisit_min_gap: int | None = None) -> None:
        self.seq_len = seq_len
        self.seed = seed
        self.revisit_min_gap = revisit_min_gap
        self.epoch = -1

    def run(self, src: Iterator[Clip]) -> Iterator[dict[str, Any]]:  # noqa: D102
        self.epoch += 1
        for clip in src:
            yield make_sample(clip, self.seq_len, self.seed, self.epoch, self.revisit_min_gap)


class _FixedWindow:
    """Picklable ``clip -> sample`` with the validation epoch (lambdas cannot cross to workers)."""

    def __init__(self, seq_len: int, seed: int, revisit_min_gap: int | None = None) -> None:
        self.seq_len, self.seed, self.revisit_min_gap = seq_len, seed, revisit_min_gap

    def __call__(self, clip: Clip) -> dict[str, Any]:
        return make_sample(clip, self.seq_len, self.seed, _VAL_EPOCH, self.revisit_min_gap)


def split_shards(shards: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train/val split by shard: at least one val shard when there are >= 2.

    Returns:
        ``(train, val)`` lists, each in sorted order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}: must be in [0, 1).")
    n_val = 0
    if len(shards) >= 2 and val_fraction > 0:
        n_val = min(len(shards) - 1, max(1, round(len(shards) * val_fraction)))
    order = sorted(shards)
    random.Random(seed).shuffle(order)
    return sorted(order[n_val:]), sorted(order[:n_val])


class LatentShardDataModule(L.LightningDataModule):
    """Random contiguous latent windows from WebDataset shards.

    Batches are ``{"latents": float32 [B, seq_len, C, H, W], "key": list[str], "start": long [B]}``
    (``start`` is the window's first frame in its clip).

    Args:
        data_dir: Folder of ``.tar`` shards, a glob, or a brace pattern.
        seq_len: Frames per window; shorter clips are padded by repeating their last frame.
        batch_size: Global batch size; each of ``world_size`` devices gets
            ``batch_size // world_size`` (must divide evenly).
        num_workers: DataLoader worker processes per device (capped at the shards per device).
        val_fraction: Fraction of shards held out for validation (at least one when there are
            two or more shards; none with a single shard).
        shuffle_buffer: Sample shuffle buffer size (0 disables sample shuffling).
        seed: Seed of the split, the shard/sample shuffles and the windows.
        samples_per_epoch: Training windows per epoch over all devices; ``None`` = one per
            training clip.
        bad_shards: Every shard is checked in :meth:`setup`, before the first epoch (empty,
            truncated, corrupt tar or ``.npy`` headers). ``"fail"`` stops there with an error
            naming the shard; ``"skip"`` leaves bad shards out with a warning naming each, and
            also skips (with a warning) any sample that still fails to decode mid-epoch.
        revisit_pairs: Also give every window frame a partner frame and the same-place masks
            (``revisit_latents``, ``positives``, ``negatives``; :mod:`lrag.data.revisits`) for
            the embedder's contrastive term. Needs clips with ground truth (procedural worlds).
        revisit_min_gap: Fewest frames between a positive pair (default: the eval's window, 10).
    """

    def __init__(self, data_dir: str, seq_len: int = 8, batch_size: int = 8, num_workers: int = 0,
                 val_fraction: float = 0.2, shuffle_buffer: int = 64, seed: int = 0,
                 samples_per_epoch: int | None = None,
                 bad_shards: BadShardPolicy = "fail", revisit_pairs: bool = False,
                 revisit_min_gap: int = 10) -> None:
        super().__init__()
        for name, value, low in (("seq_len", seq_len, 1), ("batch_size", batch_size, 1),
                                 ("num_workers", num_workers, 0),
                                 ("shuffle_buffer", shuffle_buffer, 0)):
            if value < low:
                raise ValueError(f"LatentShardDataModule: {name}={value} must be >= {low}.")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"LatentShardDataModule: samples_per_epoch={samples_per_epoch} must "
                             "be >= 1 or null.")
        if bad_shards not in ("fail", "skip"):
            raise ValueError(f"LatentShardDataModule: bad_shards={bad_shards!r} must be 'fail' or "
                             "'skip'.")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.samples_per_epoch = samples_per_epoch
        self.bad_shards = bad_shards
        self.revisit_min_gap = revisit_min_gap if revisit_pairs else None
        self.train_shards: list[str] = []
        self.val_shards: list[str] = []
        self.clip_counts: dict[str, int] = {}  # good shard -> clips, from the setup check

    def setup(self, stage: str | None = None) -> None:
        """Find the shards and split them (idempotent)."""
        if self.train_shards:
            return
        try:
            shards = resolve_shards(self.data_dir)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"LatentShardDataModule(data_dir={self.data_dir!r}): {err}") \
                from err
        try:
            self.clip_counts = check_shards(shards, self.bad_shards).good
        except LatentFormatError as err:
            hint = " (set bad_shards: skip to leave bad shards out)" \
                if self.bad_shards == "fail" else ""
            raise LatentFormatError(f"LatentShardDataModule(data_dir={self.data_dir!r}): {err}"
                                    f"{hint}") from err
        shards = list(self.clip_counts)
        self.train_shards, self.val_shards = split_shards(shards, self.val_fraction, self.seed)
        if not self.val_shards:
            log.warning("%s: only %d shard(s); no validation split (write more shards to get one)",
                        self.data_dir, len(shards))
        log.info("latent shards: %d train, %d val", len(self.train_shards), len(self.val_shards))

    @property
    def world_size(self) -> int:
        """Number of devices (1 outside a Trainer)."""
        trainer = getattr(self, "trainer", None)
        return trainer.world_size if trainer is not None else 1

    @property
    def device_batch_size(self) -> int:
        """Per-device batch size: the global ``batch_size`` split over ``world_size``."""
        if self.batch_size % self.world_size:
            raise ValueError(f"batch_size={self.batch_size} is not divisible by world_size="
                             f"{self.world_size}; use a multiple of the device count.")
        return self.batch_size // self.world_size

    @property
    def _handler(self):
        # "skip": a sample that passed the header check but fails to decode is logged and
        # dropped instead of ending the epoch; "fail": the library's default (re-raise).
        return _log_and_continue if self.bad_shards == "skip" else wds.reraise_exception

    def _workers(self, shards_per_rank: int) -> int:
        # A worker without shards would yield nothing, and with_epoch would spin on it.
        return min(self.num_workers, shards_per_rank)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, windowed, endless-per-worker stream cut to the epoch length."""
        self.setup()
        world = self.world_size
        per_rank_shards = len(self.train_shards) // world
        if per_rank_shards < 1:
            raise ValueError(f"{self.data_dir}: {len(self.train_shards)} training shard(s) for "
                             f"{world} devices; write at least one shard per device.")
        total = self.samples_per_epoch or sum(self.clip_counts[s] for s in self.train_shards)
        workers = self._workers(per_rank_shards)
        batch = self.device_batch_size
        # A whole number of batches per worker keeps len(loader) exact for Lightning's progress.
        batches_per_worker = math.ceil(math.ceil(total / world) / (max(workers, 1) * batch))
        per_worker = batches_per_worker * batch
        dataset = (
            wds.WebDataset(self.train_shards, shardshuffle=len(self.train_shards), detshuffle=True,
                           seed=self.seed, nodesplitter=wds.split_by_node,
                           workersplitter=wds.split_by_worker, empty_check=False,
                           handler=self._handler)
            .map(decode_clip, handler=self._handler)
            .compose(wds.detshuffle(self.shuffle_buffer, initial=self.shuffle_buffer,
                                    seed=self.seed) if self.shuffle_buffer > 0 else _identity)
            .compose(RandomWindows(self.seq_len, self.seed, self.revisit_min_gap))
            .with_epoch(per_worker)
            .with_length(per_worker * max(workers, 1), silent=True)
        )
        return DataLoader(dataset, batch_size=batch, num_workers=workers,
                          collate_fn=collate_windows, persistent_workers=workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        """One fixed window per validation clip, in shard order; ``[]`` without a val split.

        Every rank validates on *all* validation clips (shards are split over workers, not
        ranks): split by rank, uneven shard counts would give ranks different numbers of
        batches (or none), and the epoch-end metric sync would wait forever on a rank that
        logged nothing. Replicated, the synced ``val/*`` values equal a one-device run's.
        """
        self.setup()
        if not self.val_shards:
            return []
        workers = self._workers(len(self.val_shards))
        dataset = (
            wds.WebDataset(self.val_shards, shardshuffle=False, nodesplitter=None,
                           workersplitter=wds.split_by_worker, empty_check=False,
                           handler=self._handler)
            .map(decode_clip, handler=self._handler)
            .map(_FixedWindow(self.seq_len, self.seed, self.revisit_min_gap))
        )
        return DataLoader(dataset, batch_size=self.device_batch_size, num_workers=workers,
                          collate_fn=collate_windows, persistent_workers=workers > 0)


def _log_and_continue(exn: Exception) -> bool:
    """WebDataset handler for ``bad_shards="skip"``: log the error (it names shard and sample)."""
    log.warning("skipping a sample that cannot be read: %s", exn)
    return True


def _identity(src: Iterator[Any]) -> Iterator[Any]:
    return src
