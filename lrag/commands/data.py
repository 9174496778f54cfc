"""``lrag data``: make, import and inspect latent shard sets.

    lrag data synth DST --clips N --frames T [--kind patterns|world] ...
    lrag data import SRC DST [--channels 16] [--skip-bad]
    lrag data inspect PATH [--json]
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from jsonargparse import ArgumentParser, Namespace

from lrag.data.shards import (
    LatentFormatError,
    ShardWriter,
    iter_clips,
    resolve_shards,
    validate_latents,
)
from lrag.data.synthetic import KINDS, SYNTH_FPS, synth_clips

log = logging.getLogger(__name__)

LATENT_SUFFIXES = (".pt", ".npy")


def _common_output_args(parser: ArgumentParser) -> None:
    parser.add_argument("--shard-size", type=int, default=64, help="Clips per shard.")
    parser.add_argument("--prefix", type=str, default="latents",
                        help="Shard file-name prefix: DST/{prefix}-{index:06d}.tar.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Delete DST's existing {prefix}-*.tar shards first (else refuse).")


def build_parser() -> ArgumentParser:
    """The ``lrag data`` parser with its ``synth``, ``import`` and ``inspect`` subcommands."""
    parser = ArgumentParser(prog="lrag data", description="Latent shards: synth, import, inspect.")
    subcommands = parser.add_subcommands(dest="command")

    synth = ArgumentParser(description="Write procedural latent clips as shards (deterministic).")
    synth.add_argument("dst", type=str, help="Output folder for the shards.")
    synth.add_argument("--clips", type=int, default=16, help="Number of clips.")
    synth.add_argument("--frames", type=int, default=48, help="Latent frames per clip.")
    synth.add_argument("--channels", type=int, default=16, help="Latent channels C.")
    synth.add_argument("--height", type=int, default=8, help="Latent rows H.")
    synth.add_argument("--width", type=int, default=8, help="Latent columns W.")
    synth.add_argument("--seed", type=int, default=0, help="Seed; same seed, same bytes.")
    synth.add_argument("--kind", type=Literal[KINDS], default="patterns",
                       help="patterns: moving waves with scene cuts/returns; world: procedural "
                            "world with ground truth (lrag.data.world).")
    _common_output_args(synth)
    subcommands.add_subcommand("synth", synth, help="Write procedural latent clips.")

    imp = ArgumentParser(description="Turn a folder of .pt/.npy latent tensors [T,C,H,W] into "
                                     "shards; .pt files load with torch.load(weights_only=True).")
    imp.add_argument("src", type=str, help="Folder searched recursively for *.pt and *.npy.")
    imp.add_argument("dst", type=str, help="Output folder for the shards.")
    imp.add_argument("--channels", type=int, default=16, help="Required latent channels C.")
    imp.add_argument("--fps", type=float, default=float(SYNTH_FPS),
                     help="Frames per second recorded in each clip's metadata.")
    imp.add_argument("--skip-bad", action="store_true",
                     help="Log and skip bad files instead of stopping at the first one.")
    _common_output_args(imp)
    subcommands.add_subcommand("import", imp, help="Import .pt/.npy latent files.")

    inspect = ArgumentParser(description="Counts, shapes, dtype and value stats of a shard set.")
    inspect.add_argument("path", type=str, help="Folder of shards, glob, or one .tar.")
    inspect.add_argument("--json", action="store_true",
                         help="Print the summary as JSON instead of a table.")
    subcommands.add_subcommand("inspect", inspect, help="Summarise a shard set.")
    return parser


def _prepare_dst(dst: str, prefix: str, overwrite: bool) -> None:
    folder = Path(dst)
    existing = sorted(folder.glob(f"{prefix}-*.tar")) if folder.is_dir() else []
    if existing and not overwrite:
        raise SystemExit(f"{dst} already holds {len(existing)} '{prefix}-*.tar' shard(s); "
                         "pass --overwrite to replace them or choose another folder/--prefix.")
    for path in existing:
        path.unlink()


def run_synth(cfg: Namespace) -> list[str]:
    """Write ``cfg.clips`` procedural clips; returns the shard names."""
    _prepare_dst(cfg.dst, cfg.prefix, cfg.overwrite)
    clips = synth_clips(cfg.kind, cfg.clips, cfg.frames, cfg.channels, cfg.height, cfg.width,
                        cfg.seed)
    with ShardWriter(cfg.dst, prefix=cfg.prefix, max_clips_per_shard=cfg.shard_size) as writer:
        for key, latents, meta in clips:
            writer.write(key, latents, meta)
    print(f"wrote {cfg.clips} clips in {len(writer.shards)} shard(s) to {cfg.dst}")
    return writer.shards


def load_latent_file(path: Path) -> np.ndarray:
    """Load one ``.npy`` (no pickles) or ``.pt`` (``weights_only=True``, a single tensor).

    Raises:
        LatentFormatError: unreadable file, pickled objects, or not a single tensor.
    """
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as err:
        raise LatentFormatError(
            f"{path}: cannot load with weights_only=True ({str(err).splitlines()[0]}); the file "
            "holds pickled Python objects. Re-save the latents with torch.save(tensor).") from err
    except (ValueError, OSError, EOFError) as err:
        raise LatentFormatError(f"{path}: unreadable ({err}); expected a numpy .npy array "
                                "saved without pickles (np.save(path, arr)).") from err
    if not isinstance(obj, torch.Tensor):
        raise LatentFormatError(f"{path}: holds a {type(obj).__name__}, expected a single tensor "
                                "[T, C, H, W]; save it with torch.save(latents).")
    return validate_latents(obj, source=str(path))


def _key_for(rel: Path) -> str:
    # Keep the suffix in the key so a.pt and a.npy cannot collide; dots are not allowed in keys.
    return re.sub(r"[^A-Za-z0-9_\-]", "_", rel.as_posix())


@dataclass
class ImportReport:
    """What ``lrag data import`` did."""

    written: int = 0
    shards: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def run_import(cfg: Namespace) -> ImportReport:
    """Import every ``.pt``/``.npy`` under ``cfg.src``; see the module docstring.

    On a bad file without ``--skip-bad`` the open shard is finalised (every accepted clip stays
    readable) and the error names the file.
    """
    src = Path(cfg.src)
    if not src.is_dir():
        raise SystemExit(f"lrag data import: SRC {cfg.src!r} is not a folder.")
    files = sorted(p for p in src.rglob("*") if p.suffix in LATENT_SUFFIXES and p.is_file())
    if not files:
        raise SystemExit(f"lrag data import: no {'/'.join(LATENT_SUFFIXES)} files under {src}.")
    _prepare_dst(cfg.dst, cfg.prefix, cfg.overwrite)
    report = ImportReport()
    with ShardWriter(cfg.dst, prefix=cfg.prefix, max_clips_per_shard=cfg.shard_size) as writer:
        for path in files:
            try:
                latents = load_latent_file(path)
                validate_latents(latents, source=str(path), channels=cfg.channels)
                rel = path.relative_to(src)
                meta = {"source": rel.as_posix(), "prompt": "", "frame_offset": 0, "fps": cfg.fps}
                writer.write(_key_for(rel), latents, meta)
            except LatentFormatError as err:
                if not cfg.skip_bad:
                    raise
                log.warning("skipping %s", err)
                report.skipped.append(str(path))
                continue
            report.written += 1
    report.shards = writer.shards
    print(f"imported {report.written} clip(s) into {len(report.shards)} shard(s) in {cfg.dst}; "
          f"skipped {len(report.skipped)}")
    return report


@dataclass
class ShardSetSummary:
    """Counts and value statistics of a shard set (``lrag data inspect``)."""

    shards: int = 0
    clips: int = 0
    frames: int = 0
    min_frames: int | None = None
    max_frames: int | None = None
    shapes: dict[str, int] = field(default_factory=dict)  # "C x H x W" -> clips
    dtypes: dict[str, int] = field(default_factory=dict)
    mean: float = float("nan")
    std: float = float("nan")
    min: float = float("nan")
    max: float = float("nan")
    non_finite: int = 0


def summarize(path: str) -> ShardSetSummary:
    """Read every clip of ``path`` once and summarise it (float64 accumulation)."""
    shards = resolve_shards(path)
    out = ShardSetSummary(shards=len(shards))
    total = total_sq = 0.0
    count = 0
    low, high = np.inf, -np.inf
    for clip in iter_clips(shards, validate=False):
        arr = clip.latents
        out.clips += 1
        out.frames += arr.shape[0]
        out.min_frames = min(out.min_frames or arr.shape[0], arr.shape[0])
        out.max_frames = max(out.max_frames or 0, arr.shape[0])
        shape = " x ".join(str(s) for s in arr.shape[1:])
        out.shapes[shape] = out.shapes.get(shape, 0) + 1
        out.dtypes[str(arr.dtype)] = out.dtypes.get(str(arr.dtype), 0) + 1
        finite = arr[np.isfinite(arr)].astype(np.float64)
        out.non_finite += int(arr.size - finite.size)
        if finite.size:
            total += float(finite.sum())
            total_sq += float(np.square(finite).sum())
            count += finite.size
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    if count:
        out.mean = total / count
        out.std = float(np.sqrt(max(total_sq / count - out.mean**2, 0.0)))
        out.min, out.max = low, high
    return out


def _print_summary(path: str, summary: ShardSetSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"latent shards: {path}")
    table.add_column("field")
    table.add_column("value", justify="right")
    for name, value in asdict(summary).items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
        table.add_row(name, str(value))
    Console(width=100).print(table)


def run_inspect(cfg: Namespace) -> ShardSetSummary:
    """Print the summary of ``cfg.path`` (table or JSON) and return it."""
    try:
        summary = summarize(cfg.path)
    except FileNotFoundError as err:
        raise SystemExit(f"lrag data inspect: {err}") from err
    if cfg.json:
        print(json.dumps(asdict(summary), indent=2))
    else:
        _print_summary(cfg.path, summary)
    return summary


def main(args: Sequence[str] | None = None) -> Any:
    """Parse ``args`` (without the leading ``data``) and run the subcommand; returns its result.

    Format errors in the data become ``SystemExit`` with the message (exit status 1).
    """
    parser = build_parser()
    cfg = parser.parse_args(list(args) if args is not None else None)
    command = cfg.command
    runner = {"synth": run_synth, "import": run_import, "inspect": run_inspect}[command]
    try:
        return runner(cfg[command])
    except LatentFormatError as err:
        raise SystemExit(f"lrag data {command}: {err}") from err
