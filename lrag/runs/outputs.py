"""Everything ``lrag predict`` writes into one run directory, ``<out_dir>/<run_id>/``.

Layout::

    config.yaml                     resolved config of the process that started the run
    blocks/block-00007-000000.tar   WebDataset shard, ONE clip = block 7 (float16 [f, C, H, W]),
                                    closed (renamed from .tar.tmp) as soon as the block finishes
    blocks/block-00007.safetensors  the same block in float32: what ``--resume`` replays, so a
                                    resumed run continues bit-identically (float16 would not)
    latents-000000.tar              the whole video as ONE clip (key = run id), float16
                                    [F, C, H, W]: directly usable as embedder training data
    video.mp4                       decoded through the codec, H.264 yuv420p
    retrievals.png                  retrieved frame index vs block
    world.json                      ground truth of a procedural-world run (camera path,
                                    landmarks, revisits; ``generate_world_clip``'s meta), also
                                    in the consolidated clip's JSON as ``ground_truth``

A block is durable once its ``.safetensors`` and ``.tar`` are renamed into place; the store rows
are written after both, so a block listed in the store always has its latents on disk.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lrag.data.shards import ShardLocation, ShardWriter
from lrag.data.video import VideoWriter
from lrag.runs.truth import truth_json

log = logging.getLogger(__name__)

__all__ = ["RunOutputs", "png_preview", "plot_retrievals"]

_BLOCK_FILE = re.compile(r"^block-(\d{5})[-.]")


def png_preview(frame: np.ndarray, max_side: int = 64) -> bytes:
    """Encode a uint8 ``[H, W, 3]`` frame as a small PNG (longest side <= ``max_side``)."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame), mode="RGB")
    scale = max_side / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def preload_plotting() -> threading.Thread:
    """Import matplotlib on a daemon thread while a video is sampled.

    The import (~0.6 s) would otherwise sit between the last block and the end of
    ``lrag predict``, where it is ~5 % of a 120-frame video at full size; during sampling the
    host thread mostly waits for the GPU.
    """
    def load() -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401

    thread = threading.Thread(target=load, name="lrag-preload-matplotlib", daemon=True)
    thread.start()
    return thread


def plot_retrievals(rows: dict[str, list], num_blocks: int, frames_per_block: int,
                    path: Path, title: str) -> Path:
    """Scatter retrieved frame index against block, coloured by score.

    Args:
        rows: Columns ``block_index, retrieved_frame, score, rank`` (e.g. a store table's
            ``to_pydict()``).
        num_blocks: Blocks in the run (x axis extent).
        frames_per_block: Latent frames per block (draws the query frame line).
        path: Output PNG.
        title: Plot title (the run id).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    blocks = np.arange(num_blocks)
    ax.plot(blocks, blocks * frames_per_block, color="0.6", lw=1, label="query frame")
    if rows.get("block_index"):
        points = ax.scatter(rows["block_index"], rows["retrieved_frame"], c=rows["score"],
                            cmap="viridis", s=30, zorder=3, label="retrieved frame")
        fig.colorbar(points, ax=ax, label="cosine score")
    else:
        ax.text(0.5, 0.5, "no retrievals (native run or memory never filled)",
                transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set(xlabel="block", ylabel="latent frame index", title=title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


class RunOutputs:
    """Writer and reader of one run directory (see the module docstring for the layout).

    Args:
        run_dir: ``<out_dir>/<run_id>``; created.
        run_id: The run's id (consolidated clip key, metadata).
        meta: JSON-serialisable metadata copied into every clip (prompt, fps, seed, ...).
        fps: Video frames per second.
        write_video: Whether to write ``video.mp4``.
    """

    def __init__(self, run_dir: str | Path, run_id: str, meta: dict[str, Any], fps: float,
                 write_video: bool = True) -> None:
        self.dir = Path(run_dir)
        self.blocks_dir = self.dir / "blocks"
        self.blocks_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self.meta = dict(meta)
        self.fps = fps
        self._video = VideoWriter(self.dir / "video.mp4", fps=fps) if write_video else None
        self._truth: dict[str, Any] | None = None

    @property
    def ground_truth_path(self) -> Path:
        """``world.json`` of this run."""
        return self.dir / "world.json"

    def write_ground_truth(self, truth: dict[str, Any]) -> Path:
        """Write the world's ground truth (JSON-serialisable meta) to ``world.json``.

        Block clips then carry the world seed, the consolidated clip the whole ground truth.
        """
        self._truth = truth
        tmp = self.ground_truth_path.with_name("world.json.tmp")
        tmp.write_text(truth_json(truth), encoding="utf-8")
        os.replace(tmp, self.ground_truth_path)
        return self.ground_truth_path

    def read_ground_truth(self) -> dict[str, Any] | None:
        """The ground truth of ``world.json`` (None for a run without a world)."""
        if self._truth is None and self.ground_truth_path.is_file():
            self._truth = json.loads(self.ground_truth_path.read_text(encoding="utf-8"))
        return self._truth

    def write_config(self, config_yaml: str) -> Path:
        """Write ``config.yaml`` (kept from the first start when resuming)."""
        path = self.dir / "config.yaml"
        if not path.exists():
            path.write_text(config_yaml, encoding="utf-8")
        return path

    def _state_path(self, block: int) -> Path:
        return self.blocks_dir / f"block-{block:05d}.safetensors"

    def write_block(self, block: int, start_frame: int, latents: torch.Tensor) -> ShardLocation:
        """Persist one finished block (float32 state, then its float16 shard).

        Args:
            block: Block index.
            start_frame: Global index of the block's first latent frame.
            latents: ``[f, C, H, W]`` clean latents of this run's block.

        Returns:
            The shard location; ``shard`` is relative to the run directory.
        """
        latents = latents.detach().to("cpu", torch.float32).contiguous()
        state = self._state_path(block)
        tmp = state.with_name(state.name + ".tmp")
        save_file({"latents": latents}, str(tmp),
                  metadata={"run_id": self.run_id, "block": str(block),
                            "start_frame": str(start_frame)})
        os.replace(tmp, state)
        meta = {**self.meta, "source": self.run_id, "frame_offset": start_frame, "block": block}
        if self._truth is not None:
            meta["world_seed"] = self._truth.get("world", {}).get("world_id")
        with ShardWriter(self.blocks_dir, prefix=f"block-{block:05d}",
                         max_clips_per_shard=1) as writer:
            loc = writer.write(f"block-{block:05d}", latents, meta)
        return ShardLocation(shard=f"blocks/{loc.shard}", key=loc.key)

    def read_blocks(self, num_blocks: int) -> torch.Tensor:
        """Float32 latents ``[F_done, C, H, W]`` of blocks ``0 .. num_blocks-1``."""
        parts = []
        for block in range(num_blocks):
            path = self._state_path(block)
            if not path.is_file():
                raise FileNotFoundError(
                    f"resume {self.run_id}: the store lists block {block} as finished but "
                    f"{path} is missing; the run directory was moved or pruned, so the run "
                    "cannot be resumed - start a new run."
                )
            parts.append(self._read_block(path, block))
        return torch.cat(parts) if parts else torch.empty(0)

    def _read_block(self, path: Path, block: int) -> torch.Tensor:
        """One block's float32 latents, refused unless the file is this run's block ``block``."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            latents = load_file(str(path))["latents"]
        except Exception as err:  # noqa: BLE001 - safetensors raises several kinds for garbage
            raise ValueError(
                f"resume {self.run_id}: {path} is not a readable block file ({err}); the run "
                "cannot be resumed from it - delete the run folder's blocks from that one on, or "
                "start a new run."
            ) from None
        if meta.get("run_id") != self.run_id or meta.get("block") != str(block):
            raise ValueError(
                f"resume {self.run_id}: {path} belongs to run {meta.get('run_id')!r} block "
                f"{meta.get('block')!r}, not to this run's block {block}; the run folder holds "
                "another run's files - restore them or start a new run."
            )
        return latents

    def drop_blocks_from(self, block: int) -> None:
        """Delete block files with index >= ``block`` (left by a run killed mid-block)."""
        for path in self.blocks_dir.iterdir():
            match = _BLOCK_FILE.match(path.name)
            if match and int(match.group(1)) >= block:
                log.info("resume %s: removing unfinished %s", self.run_id, path.name)
                path.unlink()

    def write_video_frames(self, frames: np.ndarray | torch.Tensor) -> None:
        """Append decoded uint8 ``[T, H, W, 3]`` frames to ``video.mp4`` (if enabled)."""
        if self._video is not None and len(frames):
            self._video.write(frames)

    def finish(self, latents: torch.Tensor, retrievals: dict[str, list], num_blocks: int,
               frames_per_block: int) -> None:
        """Write the consolidated clip, close the video and draw ``retrievals.png``.

        Args:
            latents: ``[F, C, H, W]`` the whole video.
            retrievals: The run's retrieval rows as columns.
            num_blocks: Blocks in the run.
            frames_per_block: Latent frames per block.
        """
        for stale in self.dir.glob("latents-*.tar*"):
            stale.unlink()  # a previous attempt's consolidated clip; rewrite it whole
        clip = latents.detach().float().cpu()
        # The clip (file I/O) and the plot (Python) overlap: both sit after the last block.
        with ThreadPoolExecutor(1, thread_name_prefix="lrag-clip") as pool:
            written = pool.submit(self._write_clip, clip)
            if self._video is not None:
                self._video.close()
            plot_retrievals(retrievals, num_blocks, frames_per_block, self.dir / "retrievals.png",
                            self.run_id)
            written.result()

    def _write_clip(self, clip: torch.Tensor) -> None:
        with ShardWriter(self.dir, prefix="latents", max_clips_per_shard=1) as writer:
            meta = {**self.meta, "source": self.run_id, "frame_offset": 0}
            if self._truth is not None:
                meta["ground_truth"] = self._truth
            writer.write(self.run_id, clip, meta)

    def abort(self) -> None:
        """Drop the partial video after a failure (blocks and store rows stay for resume)."""
        if self._video is not None:
            self._video.__exit__(RuntimeError, None, None)

    def remove(self) -> None:
        """Delete the whole run directory."""
        shutil.rmtree(self.dir, ignore_errors=True)
