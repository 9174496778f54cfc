"""A side-by-side video of two runs of one world: ground truth | native | retrieval.

``lrag demo compare RAG_RUN NATIVE_RUN`` (``make demo`` runs it) writes, into the retrieval
run's folder::

    compare.mp4   H.264, one output frame per latent frame
    compare.gif   the same at ``gif_scale`` (for READMEs and issues)
    compare.png   one still: a revisit frame where retrieval brought back the place's frames

Each panel is the codec's decode of a latent frame, upscaled nearest-neighbour to at least
``min_panel`` pixels (the demo's 64-px decode becomes 256 px). The ground-truth panel renders
the run's world (``world.json``: world seed, config and camera path) through the same codec.
Below the panels: whether the camera is revisiting a place it left more than ``window`` frames
ago (ground truth ``revisits``; a sliding window alone cannot remember it), and the frames the
memory retrieved for the current block (the ``retrievals`` rows of the store) as thumbnails.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from einops import repeat

from lrag.data.shards import iter_clips
from lrag.data.video import VideoWriter
from lrag.data.world import World
from lrag.data.world_config import WorldConfig
from lrag.memory.store import MemoryStore

log = logging.getLogger(__name__)

__all__ = ["CompareError", "CompareData", "ComparePaths", "build_codec", "compose_frame", "load_compare",
           "run_model_args", "truth_latents", "write_compare"]

#: Layout of one output frame (pixels): title bar above the panels, caption + thumbnails below.
HEADER = 24
FOOTER = 96
BORDER = 5
THUMB = 64
REVISIT_RGB = (255, 140, 0)
TEXT_RGB = (235, 235, 235)
BACKGROUND_RGB = (20, 20, 24)


class CompareError(ValueError):
    """The runs cannot be compared (missing files, different worlds or lengths)."""


@dataclass
class CompareData:
    """Everything one comparison video shows, decoded to uint8 RGB ``[T, h, w, 3]``."""

    truth: np.ndarray
    native: np.ndarray
    rag: np.ndarray
    rag_run: str
    native_run: str
    frames_per_block: int
    memory_size: int
    #: Per frame, earlier frames showing the same place more than ``window`` frames ago.
    revisits: list[list[int]]
    #: Per block, the retrieved frames and their scores, by rank.
    retrievals: dict[int, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        """Frames of the video (the three arms have the same length)."""
        return int(self.truth.shape[0])


@dataclass
class ComparePaths:
    """Files written by :func:`write_compare`."""

    mp4: Path
    gif: Path
    png: Path
    still_frame: int


def run_model_args(run_dir: Path) -> dict[str, Any]:
    """``model.init_args`` of a run folder's ``config.yaml``."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise CompareError(f"{path} is missing; is {run_dir} a folder written by `lrag predict`?")
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return config.get("model", {}).get("init_args", {})


def build_codec(model_args: dict[str, Any]) -> torch.nn.Module:
    """The run's codec from its config (``model.init_args.codec``: class_path + init_args)."""
    spec = model_args.get("codec") or {}
    module, _, name = str(spec.get("class_path", "")).rpartition(".")
    if not module:
        raise CompareError("the run's config.yaml has no model.init_args.codec.class_path")
    return getattr(importlib.import_module(module), name)(**(spec.get("init_args") or {}))


def _decode(codec: torch.nn.Module, latents: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 ``[T, h, w, 3]`` of latents ``[T, C, H, W]``."""
    x = torch.as_tensor(latents, dtype=torch.float32)[None]
    return codec.decode(x)[0].cpu().numpy()


def _run_latents(run_dir: Path) -> np.ndarray:
    shards = sorted(run_dir.glob("latents-*.tar"))
    if not shards:
        raise CompareError(f"{run_dir} has no latents-*.tar: the run did not finish; resume it "
                           "with `lrag predict ... --resume RUN_ID`.")
    return next(iter(iter_clips([str(s) for s in shards]))).latents.astype(np.float32)


def truth_latents(truth: dict[str, Any]) -> np.ndarray:
    """The world's own view along the run's camera path, ``[T, C, H, W]`` float32."""
    world = World.from_seed(int(truth["world"]["world_id"]), WorldConfig(**truth["world"]["config"]))
    return np.stack([world.render(x, y, t) for t, (x, y) in enumerate(truth["positions"])])


def _far_revisits(truth: dict[str, Any], window: int) -> list[list[int]]:
    return [[j for j in earlier if t - j > window] for t, earlier in enumerate(truth["revisits"])]


def _retrievals(db: str, run_id: str) -> dict[int, list[tuple[int, float]]]:
    rows = MemoryStore(db, read_only=True).retrievals(run_id).to_pylist()
    out: dict[int, list[tuple[int, float]]] = {}
    for row in sorted(rows, key=lambda r: (r["block_index"], r["rank"])):
        out.setdefault(int(row["block_index"]), []).append((int(row["retrieved_frame"]), float(row["score"])))
    return out


def load_compare(rag_dir: str | Path, native_dir: str | Path, db: str) -> CompareData:
    """Decode both runs and render the ground truth of their (shared) world.

    Args:
        rag_dir: Folder of the retrieval run (``<out_dir>/<run_id>``).
        native_dir: Folder of the native run of the same world (``memory_size: 0``).
        db: The memory store holding the retrieval run's ``retrievals`` rows.

    Raises:
        CompareError: A folder is not a finished world run, or the runs differ in world/length.
    """
    rag_dir, native_dir = Path(rag_dir), Path(native_dir)
    rag_cfg, native_cfg = run_model_args(rag_dir), run_model_args(native_dir)
    truths = []
    for run_dir in (rag_dir, native_dir):
        path = run_dir / "world.json"
        if not path.is_file():
            raise CompareError(f"{path} is missing: compare needs runs of a procedural world "
                               "(data: lrag.data.prompts.WorldPromptDataModule).")
        truths.append(json.loads(path.read_text(encoding="utf-8")))
    if truths[0]["world"]["world_id"] != truths[1]["world"]["world_id"] or \
            truths[0]["positions"] != truths[1]["positions"]:
        raise CompareError(f"{rag_dir.name} and {native_dir.name} show different worlds or camera "
                           "paths; run both with the same data.init_args.world_seeds.")
    codec = build_codec(rag_cfg)
    rag, native = _decode(codec, _run_latents(rag_dir)), _decode(codec, _run_latents(native_dir))
    truth = _decode(codec, truth_latents(truths[0]))
    if not len(rag) == len(native) == len(truth):
        raise CompareError(f"frame counts differ: retrieval {len(rag)}, native {len(native)}, "
                           f"ground truth {len(truth)}; use the same num_frames for both runs.")
    sampling = rag_cfg.get("sampling") or {}
    memory = (rag_cfg.get("memory") or {}).get("init_args") or {}
    native_k = ((native_cfg.get("memory") or {}).get("init_args") or {}).get("memory_size", 0)
    if native_k:
        log.warning("%s retrieves %s frames per block; it is not a native run", native_dir.name, native_k)
    return CompareData(truth=truth, native=native, rag=rag, rag_run=rag_dir.name,
                       native_run=native_dir.name,
                       frames_per_block=int(sampling.get("frames_per_block", 3)),
                       memory_size=int(memory.get("memory_size", 0)),
                       revisits=_far_revisits(truths[0], int(sampling.get("window", 10))),
                       retrievals=_retrievals(db, rag_dir.name))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _upscale(frame: np.ndarray, factor: int) -> np.ndarray:
    return repeat(frame, "h w c -> (h a) (w b) c", a=factor, b=factor)


def compose_frame(data: CompareData, t: int, min_panel: int = 256) -> np.ndarray:
    """Output frame ``t``: uint8 ``[HEADER + panel + FOOTER, 3 * panel, 3]``.

    ``panel`` is the decoded frame size times the smallest integer factor reaching
    ``min_panel`` pixels (nearest-neighbour, so latent cells stay sharp squares).
    """
    from PIL import Image, ImageDraw

    h, w = data.truth.shape[1:3]
    factor = max(1, math.ceil(min_panel / min(h, w)))
    ph, pw = h * factor, w * factor
    canvas = Image.new("RGB", (3 * pw, HEADER + ph + FOOTER), BACKGROUND_RGB)
    draw = ImageDraw.Draw(canvas)
    font, small = _font(14), _font(11)
    block = t // data.frames_per_block
    revisit = data.revisits[t] if t < len(data.revisits) else []
    titles = [f"ground truth  frame {t}/{data.num_frames - 1}", "native (window only)",
              f"retrieval (K={data.memory_size})  block {block}"]
    for i, (frames, title) in enumerate(zip((data.truth, data.native, data.rag), titles)):
        x0 = i * pw
        canvas.paste(Image.fromarray(_upscale(frames[t], factor)), (x0, HEADER))
        if revisit:  # the same border on every panel: compare how each arm shows the place
            draw.rectangle([x0, HEADER, x0 + pw - 1, HEADER + ph - 1], outline=REVISIT_RGB,
                           width=BORDER)
        draw.text((x0 + 6, 4), title, fill=TEXT_RGB, font=font)
    y = HEADER + ph + 6
    if revisit:
        first = min(revisit)
        draw.text((6, y), f"REVISIT: same place as frame {first}", fill=REVISIT_RGB, font=font)
        draw.text((6, y + 20), f"{t - first} frames ago, outside the window", fill=REVISIT_RGB, font=small)
    else:
        draw.text((6, y), "new view", fill=TEXT_RGB, font=font)
    if revisit:  # the native arm's own frame of the earlier visit: does it look the same?
        image = Image.fromarray(data.native[first]).resize((THUMB, max(1, THUMB * h // w)), Image.NEAREST)
        canvas.paste(image, (pw + 6, y))
        draw.multiline_text((pw + THUMB + 14, y), f"its own frame {first}\n(same place)\nvs. frame {t}",
                            fill=REVISIT_RGB, font=small)
    else:
        draw.text((pw + 6, y), f"{data.native_run}", fill=TEXT_RGB, font=small)
    hits = data.retrievals.get(block, [])
    if not hits:
        draw.text((2 * pw + 6, y), "no retrieval (memory still empty)", fill=TEXT_RGB, font=small)
    else:
        draw.multiline_text((2 * pw + 6, y), "retrieved\nfor this\nblock:", fill=TEXT_RGB, font=small)
    x = 2 * pw + 70
    for frame, score in hits:
        image = Image.fromarray(data.rag[frame]).resize((THUMB, max(1, THUMB * h // w)), Image.NEAREST)
        if x + image.width > 3 * pw:
            break  # more retrieved frames than fit: the first ranks are shown
        canvas.paste(image, (x, y))
        colour = REVISIT_RGB if frame in revisit else TEXT_RGB
        draw.text((x, y + image.height + 2), f"f{frame} {score:.2f}", fill=colour, font=small)
        x += image.width + 8
    return np.asarray(canvas)


def _still_frame(data: CompareData) -> int:
    """A revisit frame whose block retrieved a frame of that place, else any revisit, else the middle."""
    hit = [t for t in range(data.num_frames) if set(data.revisits[t])
           & {f for f, _ in data.retrievals.get(t // data.frames_per_block, [])}]
    any_revisit = [t for t in range(data.num_frames) if data.revisits[t]]
    return (hit or any_revisit or [data.num_frames // 2])[0]


def write_compare(data: CompareData, out_dir: str | Path, fps: float = 8.0, min_panel: int = 256,
                  gif_scale: float = 0.5) -> ComparePaths:
    """Write ``compare.mp4``, ``compare.gif`` and ``compare.png`` into ``out_dir``.

    Args:
        data: From :func:`load_compare`.
        out_dir: Output folder (the retrieval run's folder under ``make demo``).
        fps: Frames per second of both videos (8: a latent frame stays long enough to see).
        min_panel: Smallest panel side in pixels.
        gif_scale: Size of the GIF relative to the mp4 (GIFs of the full size are large).
    """
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = [compose_frame(data, t, min_panel) for t in range(data.num_frames)]
    with VideoWriter(out / "compare.mp4", fps=fps) as writer:
        writer.write(np.stack(frames))
    size = (round(frames[0].shape[1] * gif_scale), round(frames[0].shape[0] * gif_scale))
    gif = [Image.fromarray(f).resize(size, Image.NEAREST).quantize(colors=128) for f in frames]
    gif[0].save(out / "compare.gif", save_all=True, append_images=gif[1:],
                duration=round(1000 / fps), loop=0, optimize=False)
    still = _still_frame(data)
    Image.fromarray(frames[still]).save(out / "compare.png", optimize=True)
    return ComparePaths(out / "compare.mp4", out / "compare.gif", out / "compare.png", still)
