"""Property-based tests (hypothesis) of the shard writer/reader and the shard check."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lrag.data.shard_check import verify_shard
from lrag.data.shards import LatentFormatError, ShardWriter, iter_clips

_SETTINGS = settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
_DTYPES = st.sampled_from([np.float16, np.float32, np.float64])


@st.composite
def clips(draw) -> np.ndarray | torch.Tensor:
    """A finite latent clip of random shape ``[T, C, H, W]`` and dtype (bfloat16 as a tensor)."""
    shape = draw(st.tuples(*[st.integers(1, 5)] * 4))
    if draw(st.booleans()):
        values = draw(arrays(np.float32, shape, elements=st.floats(-1e3, 1e3, width=32)))
        return torch.from_numpy(values).to(torch.bfloat16)
    dtype = draw(_DTYPES)
    width = {np.float16: 16, np.float32: 32, np.float64: 64}[dtype]
    return draw(arrays(dtype, shape, elements=st.floats(-6e4, 6e4, width=width)))


def _expected(arr: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(arr, torch.Tensor):
        arr = arr.float().numpy()
    return arr.astype(np.float16)


@_SETTINGS
@given(data=st.lists(st.tuples(clips(), st.text(max_size=12), st.integers(0, 10**9)),
                     min_size=1, max_size=5),
       per_shard=st.integers(1, 3))
def test_round_trip_preserves_every_clip(data, per_shard):
    with tempfile.TemporaryDirectory() as tmp:
        with ShardWriter(tmp, max_clips_per_shard=per_shard) as writer:
            for i, (arr, prompt, offset) in enumerate(data):
                writer.write(f"k{i}", arr, {"prompt": prompt, "frame_offset": offset})
        shards = sorted(Path(tmp).glob("*.tar"))
        assert len(shards) == -(-len(data) // per_shard)
        assert sum(verify_shard(s) for s in shards) == len(data)
        read = list(iter_clips(tmp))
    assert [c.key for c in read] == [f"k{i}" for i in range(len(data))]
    for clip, (arr, prompt, offset) in zip(read, data):
        assert clip.latents.dtype == np.float16
        np.testing.assert_array_equal(clip.latents, _expected(arr))
        assert (clip.meta["prompt"], clip.meta["frame_offset"]) == (prompt, offset)


def _one_shard(tmp: str) -> Path:
    rng = np.random.default_rng(0)
    with ShardWriter(tmp, max_clips_per_shard=8) as writer:
        for i in range(3):
            writer.write(f"c{i}", rng.standard_normal((2 + i, 3, 2, 2)), {"i": i})
    return Path(tmp) / "latents-000000.tar"


@_SETTINGS
@given(cut=st.floats(0, 1, exclude_max=True))
def test_a_truncated_shard_is_refused_or_still_reads_whole(cut):
    with tempfile.TemporaryDirectory() as tmp:
        shard = _one_shard(tmp)
        data = shard.read_bytes()
        shard.write_bytes(data[: int(len(data) * cut)])
        try:
            count = verify_shard(shard)
        except LatentFormatError as err:
            assert str(shard) in str(err)
            return
        # Only the end-of-archive padding was cut: the check passed, so reading must too.
        assert count == 3 and len(list(iter_clips(shard))) == 3


@_SETTINGS
@given(position=st.floats(0, 1, exclude_max=True), value=st.integers(0, 255))
@example(position=0.5786158509790551, value=0)  # a NUL in the .npy header dict: numpy's TokenError
def test_a_damaged_byte_gives_a_format_error_or_readable_clips(position, value):
    with tempfile.TemporaryDirectory() as tmp:
        shard = _one_shard(tmp)
        data = bytearray(shard.read_bytes())
        data[int(len(data) * position)] = value
        shard.write_bytes(bytes(data))
        try:
            verify_shard(shard)
            clips_read = list(iter_clips(shard))
        except LatentFormatError as err:
            assert str(shard) in str(err)
            return
        assert len(clips_read) <= 3
