"""``lrag demo compare RAG_RUN NATIVE_RUN``: the side-by-side video of ``make demo``.

    lrag demo compare RAG_RUN NATIVE_RUN [--runs runs] [--db runs/memory.lancedb] [--out DIR]

Both runs must show the same procedural world (``configs/predict/demo.yaml`` once as is and
once with ``--model.init_args.memory.init_args.memory_size 0``). Writes ``compare.mp4``,
``compare.gif`` and ``compare.png`` (see :mod:`lrag.runs.compare`) into ``DIR`` (default: the
retrieval run's folder).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from jsonargparse import ArgumentParser

__all__ = ["build_parser", "main"]


def build_parser() -> ArgumentParser:
    """The ``lrag demo`` parser with its ``compare`` subcommand."""
    parser = ArgumentParser(prog="lrag demo", description="What the demo shows.")
    commands = parser.add_subcommands(dest="command")
    compare = ArgumentParser(description="Side by side: ground truth | native | retrieval, with "
                                         "frame index, revisit marker and retrieved thumbnails.")
    compare.add_argument("rag_run", type=str, help="Run id of the retrieval run.")
    compare.add_argument("native_run", type=str, help="Run id of the native run (memory_size 0) "
                                                      "of the same world.")
    compare.add_argument("--runs", type=str, default="runs",
                         help="Folder holding the run folders (model.init_args.out_dir).")
    compare.add_argument("--db", type=str, default="runs/memory.lancedb",
                         help="Memory store with the retrieval run's retrievals rows.")
    compare.add_argument("--out", type=str | None, default=None,
                         help="Output folder (default: the retrieval run's folder).")
    compare.add_argument("--fps", type=float, default=8.0, help="Frames per second of the videos.")
    compare.add_argument("--panel", type=int, default=256,
                         help="Smallest panel side in pixels (nearest-neighbour upscale).")
    compare.add_argument("--gif-scale", type=float, default=0.5, help="GIF size relative to the mp4.")
    commands.add_subcommand("compare", compare, help="Write compare.mp4/.gif/.png of two runs.")
    return parser


def _check(cfg) -> None:
    for flag, value in (("--fps", cfg.fps), ("--panel", cfg.panel), ("--gif-scale", cfg.gif_scale)):
        if not value > 0:
            raise SystemExit(f"lrag demo compare: {flag} {value}: must be > 0.")
    for run in (cfg.rag_run, cfg.native_run):
        if not (Path(cfg.runs) / run).is_dir():
            raise SystemExit(f"lrag demo compare: no run folder {Path(cfg.runs) / run}; pass run "
                             "ids from `lrag memory runs` and --runs with their parent folder.")


def main(args: Sequence[str] | None = None) -> None:
    """Parse ``args`` (without the leading ``demo``) and write the comparison."""
    cfg = build_parser().parse_args(list(sys.argv[1:] if args is None else args))
    sub = cfg[cfg.command]
    _check(sub)
    from lrag.runs.compare import CompareError, load_compare, write_compare  # torch: import late

    runs = Path(sub.runs)
    try:
        data = load_compare(runs / sub.rag_run, runs / sub.native_run, sub.db)
        paths = write_compare(data, sub.out or runs / sub.rag_run, sub.fps, sub.panel, sub.gif_scale)
    except CompareError as err:
        raise SystemExit(f"lrag demo compare: {err}") from None
    print(f"comparison: {paths.mp4}  {paths.gif}  still (frame {paths.still_frame}): {paths.png}")
