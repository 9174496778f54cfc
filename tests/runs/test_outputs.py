"""RunOutputs: the on-disk layout of one predict run (real WebDataset, PyAV, safetensors)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from lrag.runs.outputs import RunOutputs, png_preview
from lrag.data.shards import iter_clips
from lrag.data.video import probe_video


def _outputs(tmp_path, video=True) -> RunOutputs:
    return RunOutputs(tmp_path / "run-0", "run-0", {"prompt": "p", "seed": 3}, fps=8,
                      write_video=video)


def test_blocks_round_trip_exactly_and_shards_are_readable(tmp_path):
    out = _outputs(tmp_path)
    blocks = [torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(b))
              for b in range(3)]
    for b, lat in enumerate(blocks):
        loc = out.write_block(b, 3 * b, lat)
        assert (out.dir / loc.shard).is_file() and loc.key == f"block-{b:05d}"
    # float32 state is bit-exact (what --resume replays)
    assert torch.equal(out.read_blocks(2), torch.cat(blocks[:2]))
    clips = list(iter_clips(sorted(str(p) for p in out.blocks_dir.glob("*.tar"))))
    assert [c.meta["frame_offset"] for c in clips] == [0, 3, 6]
    assert clips[1].latents.dtype == np.float16 and clips[1].latents.shape == (3, 4, 2, 2)
    np.testing.assert_allclose(clips[2].latents, blocks[2].numpy(), rtol=1e-3, atol=1e-3)
    out.drop_blocks_from(1)
    assert sorted(p.name for p in out.blocks_dir.iterdir()) == [
        "block-00000-000000.tar", "block-00000.safetensors"]
    with pytest.raises(FileNotFoundError, match="block 1"):
        out.read_blocks(2)


def test_finish_writes_one_clip_video_and_plot(tmp_path):
    out = _outputs(tmp_path)
    latents = torch.randn(6, 4, 2, 2)
    out.write_video_frames(np.full((6, 16, 16, 3), 100, np.uint8))
    rows = {"block_index": [1, 1], "retrieved_frame": [0, 2], "score": [0.9, 0.5],
            "rank": [0, 1]}
    out.finish(latents, rows, num_blocks=2, frames_per_block=3)
    clips = list(iter_clips(str(out.dir / "latents-000000.tar")))
    assert len(clips) == 1 and clips[0].key == "run-0"
    assert clips[0].latents.shape == (6, 4, 2, 2) and clips[0].meta["prompt"] == "p"
    assert probe_video(out.dir / "video.mp4").frames == 6
    assert Image.open(out.dir / "retrievals.png").size[0] > 100


def test_abort_leaves_no_video(tmp_path):
    out = _outputs(tmp_path)
    out.write_video_frames(np.zeros((2, 8, 8, 3), np.uint8))
    out.abort()
    assert not list(out.dir.glob("video.mp4*"))


def test_png_preview_is_small_png():
    frame = np.random.default_rng(0).integers(0, 255, (128, 96, 3), dtype=np.uint8)
    image = Image.open(io.BytesIO(png_preview(frame, max_side=32)))
    assert image.format == "PNG" and max(image.size) == 32 and image.size == (24, 32)


def test_preload_plotting_imports_matplotlib_headless():
    import sys

    from lrag.runs.outputs import preload_plotting

    preload_plotting().join(timeout=60)
    assert "matplotlib.pyplot" in sys.modules
    assert sys.modules["matplotlib"].get_backend().lower() == "agg"
