"""LatentShardDataModule: split by shard, windows, padding, determinism, worker layouts, epochs."""

from __future__ import annotations

import io
import logging
import tarfile

import lightning as L
import numpy as np
import pytest
import torch

from lrag.data.datamodule import LatentShardDataModule, split_shards, take_window, window_start
from lrag.data.shards import LatentFormatError, ShardWriter, iter_clips


def _write_ramps(folder, num_clips: int, per_shard: int, frames=lambda i: 10 + i) -> None:
    """Clip i has frames[t] == 100 * i + t, so a window reveals its key and start."""
    with ShardWriter(folder, max_clips_per_shard=per_shard) as writer:
        for i in range(num_clips):
            t = frames(i)
            ramp = (100 * i + np.arange(t, dtype=np.float32))[:, None, None, None]
            writer.write(f"clip{i:03d}", np.broadcast_to(ramp, (t, 2, 1, 1)), {})


def _frame_ids(batch) -> np.ndarray:
    return batch["latents"][:, :, 0, 0, 0].numpy()


def test_take_window_pads_with_last_frame():
    clip = np.arange(3, dtype=np.float16).reshape(3, 1, 1, 1)
    out = take_window(clip, 0, 5)
    assert out.dtype == np.float32
    assert out[:, 0, 0, 0].tolist() == [0, 1, 2, 2, 2]
    assert take_window(clip, 1, 2)[:, 0, 0, 0].tolist() == [1, 2]


def test_window_start_is_pure_and_in_range():
    starts = {window_start(20, 8, seed=3, epoch=e, key="k") for e in range(30)}
    assert starts <= set(range(13)) and len(starts) > 3
    assert window_start(20, 8, 3, 5, "k") == window_start(20, 8, 3, 5, "k")
    assert window_start(5, 8, 3, 5, "k") == 0


def test_split_is_deterministic_disjoint_and_keeps_a_val_shard():
    shards = [f"s{i}.tar" for i in range(7)]
    train, val = split_shards(shards, 0.2, seed=1)
    assert (train, val) == split_shards(list(reversed(shards)), 0.2, seed=1)
    assert len(val) == 1 and set(train) | set(val) == set(shards) and not set(train) & set(val)
    assert split_shards(["a.tar", "b.tar"], 0.01, 0)[1] != []
    assert split_shards(["a.tar"], 0.5, 0) == (["a.tar"], [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_shards(shards, 1.0, 0)


def test_missing_shards_error_names_folder_and_fix(tmp_path):
    dm = LatentShardDataModule(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere") as err:
        dm.setup("fit")
    assert "lrag data synth" in str(err.value)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_batches_are_contiguous_windows_and_cover_an_epoch(tmp_path, num_workers):
    _write_ramps(tmp_path, num_clips=12, per_shard=2, frames=lambda i: 4 + 2 * i)
    dm = LatentShardDataModule(str(tmp_path), seq_len=6, batch_size=3, num_workers=num_workers,
                               val_fraction=0.34, seed=5)
    dm.setup("fit")
    assert len(dm.val_shards) == 2 and len(dm.train_shards) == 4
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader)
    seen = set()
    for batch in batches:
        assert batch["latents"].dtype == torch.float32
        assert batch["latents"].shape == (3, 6, 2, 1, 1)
        for key, start, ids in zip(batch["key"], batch["start"].tolist(), _frame_ids(batch)):
            clip = int(key[4:])
            frames = 4 + 2 * clip
            expected = np.minimum(np.arange(start, start + 6), frames - 1) + 100 * clip
            np.testing.assert_array_equal(ids, expected)
            seen.add(key)
    assert len(seen) == 8  # every training clip at least once


def test_windows_are_deterministic_per_seed_and_change_across_epochs(tmp_path):
    _write_ramps(tmp_path, num_clips=6, per_shard=3, frames=lambda i: 40)

    def epochs(seed: int, n: int = 2) -> list[dict[str, int]]:
        dm = LatentShardDataModule(str(tmp_path), seq_len=4, batch_size=2, seed=seed,
                                   val_fraction=0.0)
        loader = dm.train_dataloader()
        return [{k: s for b in loader for k, s in zip(b["key"], b["start"].tolist())}
                for _ in range(n)]

    first = epochs(seed=7)
    assert first == epochs(seed=7)
    assert first[0] != first[1]
    assert first != epochs(seed=8)


def test_val_windows_fixed_and_unshuffled(tmp_path):
    _write_ramps(tmp_path, num_clips=8, per_shard=2, frames=lambda i: 30)
    dm = LatentShardDataModule(str(tmp_path), seq_len=5, batch_size=4, val_fraction=0.5)
    dm.setup("fit")
    runs = [[(k, s) for b in dm.val_dataloader() for k, s in zip(b["key"], b["start"].tolist())]
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 4
    assert [k for k, _ in runs[0]] == sorted(k for k, _ in runs[0])


def test_samples_per_epoch_sets_the_epoch_length(tmp_path):
    _write_ramps(tmp_path, num_clips=3, per_shard=3)
    dm = LatentShardDataModule(str(tmp_path), seq_len=4, batch_size=2, samples_per_epoch=10)
    loader = dm.train_dataloader()
    assert len(loader) == 5 and sum(len(b["key"]) for b in loader) == 10
    assert dm.val_dataloader() == []


class _MeanModel(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, batch["latents"].shape[0]))
        return ((batch["latents"] - self.w) ** 2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", ((batch["latents"] - self.w) ** 2).mean(), batch_size=len(batch["key"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_lightning_fit_terminates_each_epoch(tmp_path):
    _write_ramps(tmp_path / "shards", num_clips=10, per_shard=2)
    dm = LatentShardDataModule(str(tmp_path / "shards"), seq_len=4, batch_size=2, seed=0)
    model = _MeanModel()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    assert [e for e, _ in model.seen].count(0) == 4 and [e for e, _ in model.seen].count(1) == 4
    assert "val/loss" in trainer.callback_metrics


def _damage(path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                      "garbage": bytes(range(256)) * 8}[how])


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_bad_shard_stops_setup_naming_it_before_any_batch(tmp_path, how):
    _write_ramps(tmp_path, num_clips=6, per_shard=2)
    bad = tmp_path / "latents-000001.tar"
    _damage(bad, how)
    dm = LatentShardDataModule(str(tmp_path), seq_len=4, batch_size=2)
    with pytest.raises(LatentFormatError) as err:
        dm.setup("fit")
    assert str(bad) in str(err.value) and "bad_shards: skip" in str(err.value)
    assert dm.train_shards == []


def test_skip_leaves_bad_shards_out_with_a_warning_and_fit_runs_whole_epochs(tmp_path, caplog):
    _write_ramps(tmp_path, num_clips=12, per_shard=2)
    _damage(tmp_path / "latents-000002.tar", "truncated")
    _damage(tmp_path / "latents-000004.tar", "empty")
    dm = LatentShardDataModule(str(tmp_path), seq_len=4, batch_size=2, val_fraction=0.25,
                               bad_shards="skip")
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "latents-000002.tar" in warned and "latents-000004.tar" in warned
    good = {str(tmp_path / f"latents-00000{i}.tar") for i in (0, 1, 3, 5)}
    assert set(dm.train_shards) | set(dm.val_shards) == good and len(dm.val_shards) == 1
    model = _MeanModel()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    # 3 training shards x 2 clips / batch 2 = 3 batches in each epoch.
    assert [e for e, _ in model.seen] == [0, 0, 0, 1, 1, 1]


def test_skip_drops_a_sample_that_fails_to_decode_mid_epoch(tmp_path, caplog):
    _write_ramps(tmp_path, num_clips=2, per_shard=2)
    arr = np.ones((5, 2, 1, 1), np.float16)
    arr[2] = np.nan  # structurally valid, so only decoding finds it
    with tarfile.open(tmp_path / "latents-000001.tar", "w") as tar:
        for name, payload in (("nan.latents.npy", _npy_bytes(arr)), ("nan.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    keys = []
    dm = LatentShardDataModule(str(tmp_path), seq_len=4, batch_size=1, val_fraction=0.0,
                               shuffle_buffer=0, bad_shards="skip")
    with caplog.at_level(logging.WARNING):
        for batch in dm.train_dataloader():
            keys += batch["key"]
    assert "nan" not in keys and sorted(set(keys)) == ["clip000", "clip001"]
    assert "non-finite" in " ".join(r.getMessage() for r in caplog.records)
    strict = LatentShardDataModule(str(tmp_path), seq_len=4, batch_size=1, val_fraction=0.0,
                                   shuffle_buffer=0)
    with pytest.raises(LatentFormatError, match="latents-000001.tar: sample 'nan'"):
        list(strict.train_dataloader())


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


class _Trainer:
    """The two attributes the datamodule reads from its Trainer under DDP."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size


def _rank_epoch(folder, rank: int, world: int, monkeypatch, num_workers: int = 0):
    # WebDataset's split_by_node reads RANK/WORLD_SIZE when no process group is initialised,
    # as torchrun and Lightning's launcher set them for each rank.
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    dm = LatentShardDataModule(str(folder), seq_len=3, batch_size=4, num_workers=num_workers,
                               val_fraction=0.25, shuffle_buffer=0, seed=3)
    dm.trainer = _Trainer(world)
    loader = dm.train_dataloader()
    batches = list(loader)
    train_keys = {k for b in batches for k in b["key"]}
    val_keys = [k for b in dm.val_dataloader() for k in b["key"]]
    return batches, len(loader), train_keys, val_keys, dm


@pytest.mark.parametrize("num_workers", [0, 2])
def test_ranks_train_on_disjoint_shards_with_equal_batch_counts_when_uneven(tmp_path, monkeypatch,
                                                                          num_workers):
    # 7 shards -> 2 val + 5 train: 5 training shards over 2 ranks is uneven (3 + 2).
    _write_ramps(tmp_path, num_clips=14, per_shard=2, frames=lambda i: 6)
    epochs = [_rank_epoch(tmp_path, r, 2, monkeypatch, num_workers) for r in range(2)]
    dm = epochs[0][4]
    assert len(dm.train_shards) == 5 and len(dm.val_shards) == 2
    (b0, n0, k0, v0, _), (b1, n1, k1, v1, _) = epochs
    assert len(b0) == len(b1) == n0 == n1, "ranks must run the same number of batches"
    assert all(b["latents"].shape[0] == 2 for b in b0 + b1)  # global batch 4 over 2 ranks
    assert not k0 & k1, f"clips on both ranks: {sorted(k0 & k1)}"
    every = {clip.key for clip in iter_clips(dm.train_shards)}
    assert k0 | k1 == every, "together the ranks see every training clip"
    # Validation is replicated: each rank scores all validation clips, like one device.
    assert v0 == v1 and len(v0) == 4


def test_more_ranks_than_training_shards_is_refused(tmp_path, monkeypatch):
    _write_ramps(tmp_path, num_clips=4, per_shard=2)
    with pytest.raises(ValueError, match="at least one shard per device"):
        _rank_epoch(tmp_path, 0, 4, monkeypatch)
