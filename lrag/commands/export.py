"""``lrag export CKPT OUT.safetensors``: weights + config for sampling time.

What a checkpoint holds decides how it is exported: the exporters of
:data:`lrag.checkpoints.exporters.EXPORTERS` are tried in order and the one whose ``matches``
accepts the checkpoint's content (never its file name) writes the file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from jsonargparse import ArgumentParser, Namespace

from lrag.checkpoints.export_options import EXPORT_OPTIONS, Option

if TYPE_CHECKING:
    from lrag.checkpoints.exporters import Exporter

# lrag.checkpoints.exporters and .io import torch (seconds): imported where a checkpoint is read,
# so `lrag export --help` is built from the plain option table and answers at once.

log = logging.getLogger(__name__)

KINDS = tuple(EXPORT_OPTIONS)


def _options() -> dict[str, Option]:
    """Every exporter option once; a name several exporters read gets their helps joined."""
    merged: dict[str, Option] = {}
    for options in EXPORT_OPTIONS.values():
        for opt in options:
            if opt.name in merged:
                first = merged[opt.name]
                opt = Option(opt.name, first.type, first.default, f"{first.help} {opt.help}")
            merged[opt.name] = opt
    return merged


def build_parser() -> ArgumentParser:
    """The ``lrag export`` argument parser (kind-specific options come from :data:`EXPORT_OPTIONS`)."""
    parser = ArgumentParser(
        prog="lrag export",
        description="Export a checkpoint (Lightning .ckpt or an upstream .pt) to safetensors with "
        "its config in the metadata. The model kind is detected from the checkpoint's content.",
    )
    parser.add_argument("ckpt", type=str, help="Checkpoint to export (read with weights_only=True).")
    parser.add_argument("out", type=str, help="Output file; must end with .safetensors.")
    parser.add_argument("--kind", type=str | None, default=None,
                        help=f"Force a model kind instead of detecting it; one of: {', '.join(KINDS)}.")
    for opt in _options().values():
        parser.add_argument(f"--{opt.name}", type=opt.type, default=opt.default, help=opt.help)
    return parser


def select_exporter(ckpt: dict[str, Any], source: Path, kind: str | None = None) -> Exporter:
    """The exporter for ``kind``, or the one whose ``matches`` accepts ``ckpt``."""
    from lrag.checkpoints.exporters import EXPORTERS
    from lrag.checkpoints.io import CheckpointError

    if kind is not None:
        for exporter in EXPORTERS:
            if exporter.kind == kind:
                return exporter
        raise CheckpointError(f"--kind {kind!r}: unknown; choose one of {', '.join(KINDS)}")
    found = [e for e in EXPORTERS if e.matches(ckpt)]
    if len(found) != 1:
        what = "no exporter recognises" if not found else "several exporters match"
        raise CheckpointError(
            f"{source}: {what} this checkpoint (top-level keys: {sorted(map(str, ckpt))[:10]}); "
            f"pass --kind (one of {', '.join(KINDS)}) if you know what it holds"
        )
    return found[0]


def export(ckpt_path: str | Path, out: str | Path, kind: str | None = None,
           options: Namespace | dict[str, Any] | None = None) -> str:
    """Export ``ckpt_path`` to ``out``; returns a one-line summary.

    Raises:
        CheckpointError: Unreadable (pickle-only), unrecognised or mismatched checkpoints.
    """
    from lrag.checkpoints.io import CheckpointError, read_checkpoint

    source, out = Path(ckpt_path), Path(out)
    if out.suffix != ".safetensors":
        raise CheckpointError(f"output {out}: use a .safetensors file name")
    values = dict(vars(options) if isinstance(options, Namespace) else options or {})
    ckpt = read_checkpoint(source)
    exporter = select_exporter(ckpt, source, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = exporter.export(ckpt, source, out, values)
    log.info("exported %s -> %s (%s)", source, out, summary)
    return summary


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``lrag export``."""
    parser = build_parser()
    cfg = parser.parse_args(args)  # --help and bad options end here, before torch is imported
    from lrag.checkpoints.io import CheckpointError

    try:
        summary = export(cfg.ckpt, cfg.out, cfg.kind, cfg)
    except (CheckpointError, FileNotFoundError) as err:
        raise SystemExit(f"lrag export: {err}") from None
    print(f"wrote {cfg.out} ({summary})")
