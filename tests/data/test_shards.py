"""Latent shard writer/reader: round trip through real WebDataset tars, atomicity, validation."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch

from lrag.data.shards import (
    LatentFormatError,
    ShardLocation,
    ShardWriter,
    count_clips,
    iter_clips,
    resolve_shards,
    validate_latents,
)


def _clip(rng: np.random.Generator, frames: int = 5) -> np.ndarray:
    return rng.standard_normal((frames, 4, 3, 2)).astype(np.float32)


def test_round_trip_preserves_latents_meta_and_order(tmp_path):
    rng = np.random.default_rng(0)
    clips = {f"clip{i}": _clip(rng, frames=3 + i) for i in range(5)}
    locations = []
    with ShardWriter(tmp_path, prefix="x", max_clips_per_shard=2) as writer:
        for i, (key, arr) in enumerate(clips.items()):
            meta = {"source": f"src{i}", "prompt": "a cat", "frame_offset": 7 * i, "fps": 4.0,
                    "extra": [i]}
            locations.append(writer.write(key, arr, meta))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "x-000000.tar", "x-000001.tar", "x-000002.tar"]
    assert locations[2] == ShardLocation(shard="x-000001.tar", key="clip2")
    read = list(iter_clips(tmp_path))
    assert [c.key for c in read] == list(clips)
    for i, clip in enumerate(read):
        assert clip.latents.dtype == np.float16
        np.testing.assert_array_equal(clip.latents, clips[clip.key].astype(np.float16))
        assert clip.meta == {"source": f"src{i}", "prompt": "a cat", "frame_offset": 7 * i,
                             "fps": 4.0, "layout": "TCHW", "extra": [i]}
    assert [count_clips(tmp_path / f"x-00000{i}.tar") for i in range(3)] == [2, 2, 1]


def test_tar_members_follow_the_documented_names(tmp_path):
    with ShardWriter(tmp_path) as writer:
        writer.write("k0", torch.zeros(2, 3, 1, 1, dtype=torch.bfloat16), {})
    with tarfile.open(tmp_path / "latents-000000.tar") as tar:
        assert sorted(tar.getnames()) == ["k0.json", "k0.latents.npy"]
    (clip,) = iter_clips(tmp_path / "latents-000000.tar")
    assert clip.meta["source"] == "k0" and clip.meta["layout"] == "TCHW"


def test_crash_mid_shard_keeps_finished_shards_and_never_leaves_partial_tar(tmp_path):
    rng = np.random.default_rng(1)
    writer = ShardWriter(tmp_path, max_clips_per_shard=2)
    for i in range(3):
        writer.write(f"c{i}", _clip(rng), {})
    # Simulate kill -9: the writer is abandoned without close().
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["latents-000000.tar", "latents-000001.tar.tmp"]
    assert [c.key for c in iter_clips(tmp_path)] == ["c0", "c1"]
    # A new writer continues numbering instead of overwriting the leftover .tmp.
    with ShardWriter(tmp_path, max_clips_per_shard=2) as again:
        assert again.write("d0", _clip(rng), {}).shard == "latents-000002.tar"


def test_exception_inside_with_finalises_accepted_clips(tmp_path):
    rng = np.random.default_rng(2)
    with pytest.raises(LatentFormatError, match="non-finite"):
        with ShardWriter(tmp_path, max_clips_per_shard=10) as writer:
            writer.write("good", _clip(rng), {})
            bad = _clip(rng)
            bad[0, 0, 0, 0] = np.nan
            writer.write("bad", bad, {})
    assert [c.key for c in iter_clips(tmp_path)] == ["good"]
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("arr", "channels", "needle"),
    [
        (np.zeros((2, 4, 3)), None, "rank 3"),
        (np.zeros((1, 2, 4, 3, 3)), None, "drop the batch dimension"),
        (np.zeros((2, 5, 3, 3), np.float32), 4, "5 channels"),
        (np.zeros((2, 4, 3, 3), np.int64), None, "not floating"),
        (np.array([np.inf, 0.0], np.float32).reshape(2, 1, 1, 1), None, "1 non-finite"),
        ([[1.0]], None, "list"),
    ],
)
def test_validate_latents_names_source_and_problem(arr, channels, needle):
    with pytest.raises(LatentFormatError, match=needle) as info:
        validate_latents(arr, source="some/file.pt", channels=channels)
    assert "some/file.pt" in str(info.value)


def test_writer_rejects_bad_keys_duplicates_meta_and_float16_overflow(tmp_path):
    ok = np.zeros((1, 1, 1, 1), np.float32)
    with ShardWriter(tmp_path) as writer:
        with pytest.raises(LatentFormatError, match="first dot"):
            writer.write("a.b", ok, {})
        writer.write("a", ok, {})
        with pytest.raises(LatentFormatError, match="already written"):
            writer.write("a", ok, {})
        with pytest.raises(LatentFormatError, match="layout"):
            writer.write("b", ok, {"layout": "CTHW"})
        with pytest.raises(LatentFormatError, match="JSON"):
            writer.write("c", ok, {"when": object()})
        with pytest.raises(LatentFormatError, match="overflows float16"):
            writer.write("d", np.full((1, 1, 1, 1), 1e6, np.float32), {})
    assert [c.key for c in iter_clips(tmp_path)] == ["a"]


def test_resolve_shards_errors_on_empty_folder_and_accepts_globs(tmp_path):
    with pytest.raises(FileNotFoundError, match="lrag data synth"):
        resolve_shards(tmp_path)
    with ShardWriter(tmp_path, max_clips_per_shard=1) as writer:
        for i in range(3):
            writer.write(f"k{i}", np.ones((1, 1, 1, 1), np.float32), {})
    assert len(resolve_shards(str(tmp_path / "*.tar"))) == 3
    assert len(resolve_shards(str(tmp_path / "latents-{000000..000001}.tar"))) == 2


def test_corrupt_shard_member_gives_named_error(tmp_path):
    shard = tmp_path / "bad-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for name, payload in (("k.latents.npy", b"not an npy file"), ("k.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(LatentFormatError, match="corrupt") as err:
        list(iter_clips(shard))
    assert "bad-000000.tar" in str(err.value)
