"""The per-video progress bar of ``lrag predict`` (blocks done, frames/s)."""

from __future__ import annotations

__all__ = ["progress_bar"]


def progress_bar(enabled: bool):
    """A rich progress bar on stderr (blocks done, frames/s); a no-op when disabled."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("blocks  {task.fields[fps]:.2f} frames/s"), TimeElapsedColumn(),
                    console=Console(stderr=True), disable=not enabled)
