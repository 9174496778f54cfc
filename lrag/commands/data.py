"""``lrag data``: make, import and inspect latent shard sets.

    lrag data synth DST --clips N --frames T [--kind patterns|world] ...
    lrag data import SRC DST [--channels 16] [--skip-bad]                 (.pt/.npy latents)
    lrag data import SRC DST --vae PATH [--height 480 --width 832] ...    (videos, Wan VAE)
    lrag data inspect PATH [--json] [--skip-bad]
    lrag data collect RUNS... DST [--shard-size 16]                       (predict runs -> shards)

``synth`` and ``import`` write into a hidden sibling of DST and swap the new shards in only when
everything succeeded (:mod:`lrag.data.staging`): a failed or interrupted run leaves DST as it was.
"""

from __future__ import annotations

import json
import logging
import math
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

import numpy as np
from jsonargparse import ArgumentParser, Namespace

# Shards, latent files and video import pull in torch: imported where a subcommand runs, so
# `lrag data --help` answers at once.
from lrag.data.staging import StagingError, check_destination, staged_shard_dir
from lrag.data.synthetic import KINDS, SYNTH_FPS, synth_clips

if TYPE_CHECKING:
    from lrag.data.shards import ShardWriter

log = logging.getLogger(__name__)

#: Channels a latent file must have unless --channels says otherwise (Wan2.1's VAE: 16).
LATENT_CHANNELS = 16

#: Video-import flags: (flag, attribute, default). ``None`` on the parser tells "not given"
#: apart from the default, so a latent import can refuse flags it would ignore.
VIDEO_FLAGS = (("--height", "height", 480), ("--width", "width", 832),
               ("--clip-frames", "clip_frames", 0), ("--frame-stride", "frame_stride", 1),
               ("--device", "device", "auto"), ("--vae-dtype", "vae_dtype", "float32"))


def _common_output_args(parser: ArgumentParser) -> None:
    parser.add_argument("--shard-size", type=int, default=64, help="Clips per shard.")
    parser.add_argument("--prefix", type=str, default="latents",
                        help="Shard file-name prefix: DST/{prefix}-{index:06d}.tar.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace DST's existing {prefix}-*.tar shards (only once the new set "
                             "is complete); without it such shards make the command refuse.")


def _add_video_args(imp: ArgumentParser) -> None:
    imp.add_argument("--vae", type=str | None, default=None,
                     help="Local diffusers AutoencoderKLWan folder (or a Wan checkout with vae/): "
                          "import videos (.mp4/.webm/.mkv/.mov/.avi, PNG-frame folders) instead "
                          "of latent files.")
    imp.add_argument("--height", type=int | None, default=None,
                     help="Videos: pixel height the VAE sees (multiple of 8; default 480).")
    imp.add_argument("--width", type=int | None, default=None,
                     help="Videos: pixel width (multiple of 8; default 832). Frames are scaled to "
                          "cover height x width, then centre-cropped.")
    imp.add_argument("--clip-frames", type=int | None, default=None,
                     help="Videos: latent frames per clip; 0 (default) = one clip per video.")
    imp.add_argument("--frame-stride", type=int | None, default=None,
                     help="Videos: keep every N-th source frame (default 1).")
    imp.add_argument("--device", type=str | None, default=None,
                     help="Videos: auto (GPU when present, default), cpu, cuda, cuda:1, ...")
    imp.add_argument("--vae-dtype", type=Literal["float32", "bfloat16", "float16"] | None,
                     default=None, help="Videos: VAE weight dtype (default float32).")


def build_parser() -> ArgumentParser:
    """The ``lrag data`` parser with its ``synth``, ``import`` and ``inspect`` subcommands."""
    parser = ArgumentParser(prog="lrag data", description="Latent shards: synth, import, inspect, collect.")
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

    imp = ArgumentParser(description="Turn a folder of .pt/.npy latent tensors [T,C,H,W] (or, "
                                     "with --vae, of videos) into shards; .pt files load with "
                                     "torch.load(weights_only=True).")
    imp.add_argument("src", type=str, help="Folder searched recursively for inputs.")
    imp.add_argument("dst", type=str, help="Output folder for the shards.")
    imp.add_argument("--channels", type=int | None, default=None,
                     help="Latent files: required latent channels C (default 16; with --vae the "
                          "VAE decides).")
    imp.add_argument("--fps", type=float, default=float(SYNTH_FPS),
                     help="Latent files: frames per second recorded in each clip's metadata. "
                          "Videos: frame rate of PNG-frame folders (video files state their own).")
    imp.add_argument("--skip-bad", action="store_true",
                     help="Name and skip bad files instead of stopping at the first one.")
    _add_video_args(imp)
    _common_output_args(imp)
    subcommands.add_subcommand("import", imp, help="Import latent files or videos.")

    inspect = ArgumentParser(description="Counts, shapes, dtype and value stats of a shard set.")
    inspect.add_argument("path", type=str, help="Folder of shards, glob, or one .tar.")
    inspect.add_argument("--json", action="store_true",
                         help="Print the summary as JSON instead of a table.")
    inspect.add_argument("--skip-bad", action="store_true",
                         help="Leave out empty/truncated/corrupt shards with a warning naming "
                              "each (default: stop with an error naming the first).")
    subcommands.add_subcommand("inspect", inspect, help="Summarise a shard set.")

    collect = ArgumentParser(description="Gather the latents of finished `lrag predict` runs "
                                         "(each run's latents-000000.tar) into training shards.")
    collect.add_argument("sources", type=str, nargs="+",
                         help="Predict out_dir folders (runs/) or run folders, then DST last.")
    collect.add_argument("--min-frames", type=int, default=1,
                         help="Leave out runs with fewer latent frames.")
    _common_output_args(collect)
    subcommands.add_subcommand("collect", collect, help="Predict runs -> embedder-training shards.")
    return parser


def _refuse(command: str, flag: str, value: object, rule: str) -> None:
    raise SystemExit(f"lrag data {command}: {flag} {value}: {rule}.")


def _check_output_flags(command: str, cfg: Namespace) -> None:
    if cfg.shard_size < 1:
        _refuse(command, "--shard-size", cfg.shard_size, "must be >= 1 clip per shard")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", cfg.prefix):
        _refuse(command, "--prefix", repr(cfg.prefix), "use letters, digits, '_' or '-' only")


def _check_synth_flags(cfg: Namespace) -> None:
    for flag, value in (("--clips", cfg.clips), ("--frames", cfg.frames),
                        ("--channels", cfg.channels), ("--height", cfg.height),
                        ("--width", cfg.width)):
        if value < 1:
            _refuse("synth", flag, value, "must be >= 1")
    if cfg.seed < 0:
        _refuse("synth", "--seed", cfg.seed, "must be >= 0")
    _check_output_flags("synth", cfg)


def _check_import_flags(cfg: Namespace) -> None:
    if cfg.channels is not None and cfg.channels < 1:
        _refuse("import", "--channels", cfg.channels, "must be >= 1")
    if not math.isfinite(cfg.fps) or cfg.fps <= 0:
        _refuse("import", "--fps", cfg.fps, "must be a finite number > 0")
    _check_output_flags("import", cfg)
    given = [flag for flag, attr, _ in VIDEO_FLAGS if cfg[attr] is not None]
    if cfg.vae is None and given:
        raise SystemExit(f"lrag data import: {', '.join(given)} only apply to video import; pass "
                         "--vae PATH to encode videos, or drop them for latent files.")
    if cfg.vae is not None and cfg.channels is not None:
        raise SystemExit("lrag data import: --channels applies to latent files only; with --vae "
                         "the VAE decides the channels.")


@contextmanager
def _staged_writer(dst: str, cfg: Namespace) -> Iterator["ShardWriter"]:
    """A shard writer into a staging sibling of ``dst``, swapped in only if the block succeeds."""
    from lrag.data.shards import ShardWriter

    with staged_shard_dir(dst, cfg.prefix, cfg.overwrite) as staging:
        with ShardWriter(staging, prefix=cfg.prefix, max_clips_per_shard=cfg.shard_size) as writer:
            yield writer


def run_synth(cfg: Namespace) -> list[str]:
    """Write ``cfg.clips`` procedural clips; returns the shard names."""
    _check_synth_flags(cfg)
    clips = synth_clips(cfg.kind, cfg.clips, cfg.frames, cfg.channels, cfg.height, cfg.width,
                        cfg.seed)
    with _staged_writer(cfg.dst, cfg) as writer:
        for key, latents, meta in clips:
            writer.write(key, latents, meta)
    print(f"wrote {cfg.clips} clips in {len(writer.shards)} shard(s) to {cfg.dst}")
    return writer.shards


def _key_for(rel: Path) -> str:
    # Keep the suffix in the key so a.pt and a.npy cannot collide; dots are not allowed in keys.
    return re.sub(r"[^A-Za-z0-9_\-]", "_", rel.as_posix())


@dataclass
class ImportReport:
    """What ``lrag data import`` did."""

    written: int = 0
    shards: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _print_import(report: ImportReport, dst: str, what: str) -> None:
    print(f"imported {report.written} clip(s) {what}into {len(report.shards)} shard(s) in {dst}; "
          f"skipped {len(report.skipped)}")
    for path in report.skipped:
        print(f"  skipped {path}")


def _import_latents(cfg: Namespace, src: Path) -> ImportReport:
    from lrag.data.latent_files import LATENT_SUFFIXES, load_latent_file
    from lrag.data.shards import LatentFormatError

    files = sorted(p for p in src.rglob("*") if p.suffix in LATENT_SUFFIXES)
    if not files:
        raise SystemExit(f"lrag data import: no {'/'.join(LATENT_SUFFIXES)} files under {src}"
                         " (for videos pass --vae PATH).")
    report = ImportReport()
    with _staged_writer(cfg.dst, cfg) as writer:
        for path in files:
            try:
                latents = load_latent_file(path, channels=cfg.channels or LATENT_CHANNELS)
            except LatentFormatError as err:
                if not cfg.skip_bad:
                    raise
                log.warning("skipping %s", err)
                report.skipped.append(str(path))
                continue
            rel = path.relative_to(src)
            meta = {"source": rel.as_posix(), "prompt": "", "frame_offset": 0, "fps": cfg.fps}
            writer.write(_key_for(rel), latents, meta)
            report.written += 1
    report.shards = writer.shards
    _print_import(report, cfg.dst, "")
    return report


def _import_videos(cfg: Namespace, src: Path) -> ImportReport:
    from lrag.data.vae_encode import WanVideoEncoder, resolve_device
    from lrag.data.video_import import (
        VideoImportSettings,
        check_settings,
        import_videos,
        plan_videos,
    )
    from lrag.data.video_sources import find_video_sources

    opts = {attr: default if cfg[attr] is None else cfg[attr] for _, attr, default in VIDEO_FLAGS}
    settings = VideoImportSettings(height=opts["height"], width=opts["width"],
                                   clip_frames=opts["clip_frames"],
                                   frame_stride=opts["frame_stride"], frame_folder_fps=cfg.fps)
    try:
        check_settings(settings)
    except ValueError as err:
        raise SystemExit(f"lrag data import: {err}") from err
    sources = find_video_sources(src)
    if not sources:
        raise SystemExit(f"lrag data import: no videos (.mp4/.webm/.mkv/.mov/.avi or folders of "
                         f".png frames) under {src}.")
    check_destination(cfg.dst, cfg.prefix, cfg.overwrite)
    device = resolve_device(opts["device"])
    # Every source is decoded once before the VAE is loaded: a bad file fails in seconds.
    plans, skipped = plan_videos(sources, settings, cfg.skip_bad)
    report = ImportReport(skipped=[path for path, _ in skipped])
    if not plans:
        raise SystemExit(f"lrag data import: all {len(sources)} video(s) under {src} are bad; "
                         "nothing written.")
    encoder = WanVideoEncoder.from_folder(cfg.vae, device=str(device), dtype=opts["vae_dtype"])
    print(f"encoding {len(plans)} video(s) at {settings.width}x{settings.height} with the VAE in "
          f"{cfg.vae} on {encoder.device}:")
    for plan in plans:
        print(f"  {plan.describe(settings)}")
    with _staged_writer(cfg.dst, cfg) as writer:
        report.written = import_videos(plans, encoder, settings, Path(cfg.vae).name,
                                       writer.write)
    report.shards = writer.shards
    _print_import(report, cfg.dst, f"from {len(plans)} video(s) ")
    return report


def run_import(cfg: Namespace) -> ImportReport:
    """Import latent files (or, with ``--vae``, videos) under ``cfg.src`` into shards in ``cfg.dst``.

    Nothing in DST changes unless the whole import succeeds; a bad file stops it with a message
    naming the file, or is skipped and listed with ``--skip-bad``.
    """
    _check_import_flags(cfg)
    src = Path(cfg.src)
    if not src.is_dir():
        what = "does not exist" if not src.exists() else "is not a folder"
        raise SystemExit(f"lrag data import: SRC {cfg.src!r} {what}; pass the folder holding "
                         "the inputs.")
    check_destination(cfg.dst, cfg.prefix, cfg.overwrite)
    return _import_videos(cfg, src) if cfg.vae is not None else _import_latents(cfg, src)


def run_collect(cfg: Namespace) -> "CollectReport":
    """Write the clips of the finished runs under ``cfg.sources[:-1]`` as shards in the last."""
    from lrag.data.collect import CollectReport, collect_clips, find_run_clips

    if len(cfg.sources) < 2:
        raise SystemExit("lrag data collect: give at least one runs folder and then DST.")
    _check_output_flags("collect", cfg)
    if cfg.min_frames < 1:
        _refuse("collect", "--min-frames", cfg.min_frames, "must be >= 1")
    *sources, dst = cfg.sources
    try:
        clips, unfinished = find_run_clips(sources)
    except FileNotFoundError as err:
        raise SystemExit(f"lrag data collect: {err}") from err
    if not clips:
        raise SystemExit(f"lrag data collect: no finished run (*/latents-000000.tar) under "
                         f"{', '.join(sources)}.")
    check_destination(dst, cfg.prefix, cfg.overwrite)
    report = CollectReport(unfinished=[str(p) for p in unfinished])
    with _staged_writer(dst, cfg) as writer:
        for clip in collect_clips(clips, writer.write, cfg.min_frames):
            report.runs += 1
            report.frames += clip.latents.shape[0]
    print(f"collected {report.runs} run(s), {report.frames} latent frames, into "
          f"{len(writer.shards)} shard(s) in {dst}; {len(unfinished)} unfinished run(s) left out")
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
    skipped: list[str] = field(default_factory=list)  # bad shards left out (--skip-bad)


def summarize(path: str, skip_bad: bool = False) -> ShardSetSummary:
    """Check every shard of ``path``, then read every clip once and summarise (float64 sums).

    Raises:
        LatentFormatError: the first bad shard, unless ``skip_bad`` (then it is left out).
    """
    from lrag.data.shard_check import check_shards
    from lrag.data.shards import iter_clips, resolve_shards

    check = check_shards(resolve_shards(path), "skip" if skip_bad else "fail")
    shards = list(check.good)
    out = ShardSetSummary(shards=len(shards), skipped=list(check.bad))
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
        elif isinstance(value, list):
            value = ", ".join(value) or "-"
        table.add_row(name, str(value))
    Console(width=100).print(table)


def run_inspect(cfg: Namespace) -> ShardSetSummary:
    """Print the summary of ``cfg.path`` (table or JSON) and return it."""
    from lrag.data.shards import LatentFormatError

    try:
        summary = summarize(cfg.path, skip_bad=cfg.skip_bad)
    except FileNotFoundError as err:
        raise SystemExit(f"lrag data inspect: {err}") from err
    except LatentFormatError as err:
        hint = "" if cfg.skip_bad else " (pass --skip-bad to leave bad shards out)"
        raise SystemExit(f"lrag data inspect: {err}{hint}") from err
    if cfg.json:
        print(json.dumps(asdict(summary), indent=2))
    else:
        _print_summary(cfg.path, summary)
    return summary


def main(args: Sequence[str] | None = None) -> Any:
    """Parse ``args`` (without the leading ``data``) and run the subcommand; returns its result.

    Every error a user can cause (bad flags, bad input files, an unusable DST or VAE folder)
    becomes ``SystemExit`` with a one-line message naming the file or flag (exit status 1).
    """
    parser = build_parser()
    cfg = parser.parse_args(list(args) if args is not None else None)
    from lrag.data.shards import LatentFormatError
    from lrag.data.vae_encode import VAELoadError
    from lrag.data.video_sources import VideoFormatError

    command = cfg.command
    runner = {"synth": run_synth, "import": run_import, "inspect": run_inspect,
              "collect": run_collect}[command]
    try:
        return runner(cfg[command])
    except (LatentFormatError, VideoFormatError, VAELoadError, StagingError) as err:
        raise SystemExit(f"lrag data {command}: {err}") from err
    except PermissionError as err:
        raise SystemExit(f"lrag data {command}: {err.filename or ''}: permission denied "
                         f"({err.strerror}).") from err
