"""``lrag export CKPT OUT.safetensors``: weights + config for sampling time.

What a checkpoint holds decides how it is exported: every model kind registers an
:class:`Exporter` whose ``matches`` looks at the checkpoint's content (never its file name).
The embedder exporter lives here; other kinds (backbone, LoRA merge) register theirs with
:func:`register_exporter` from their own module, listed in ``EXPORTER_MODULES``.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from jsonargparse import ArgumentParser, Namespace

from lrag.modules.nets.autoencoder import (
    CKPT_CONFIG_KEY,
    CheckpointError,
    embedder_from_checkpoint,
    read_checkpoint,
    save_embedder,
)

log = logging.getLogger(__name__)

#: Modules imported before dispatch so that their ``register_exporter`` calls run.
EXPORTER_MODULES: list[str] = ["lrag.modules.backbone_io", "lrag.modules.nets.generator_export"]


@dataclass(frozen=True)
class Exporter:
    """One exportable model kind.

    Attributes:
        kind: Name shown to the user and accepted by ``--kind``.
        matches: ``checkpoint dict -> bool``: does this checkpoint hold this kind?
        export: ``(checkpoint, source path, out path, parsed options) -> summary line``.
        add_arguments: Optional hook adding kind-specific options to the parser.
    """

    kind: str
    matches: Callable[[dict[str, Any]], bool]
    export: Callable[[dict[str, Any], Path, Path, Namespace], str]
    add_arguments: Callable[[ArgumentParser], None] | None = None


EXPORTERS: dict[str, Exporter] = {}


def register_exporter(exporter: Exporter) -> Exporter:
    """Add ``exporter`` to the registry; a kind can be registered once."""
    if exporter.kind in EXPORTERS and EXPORTERS[exporter.kind] is not exporter:
        raise ValueError(f"exporter kind {exporter.kind!r} is already registered")
    EXPORTERS[exporter.kind] = exporter
    return exporter


def _is_embedder(ckpt: dict[str, Any]) -> bool:
    if CKPT_CONFIG_KEY in ckpt and "state_dict" in ckpt:
        return True
    model = ckpt.get("model")
    return isinstance(model, dict) and "config" in ckpt and any(
        str(k).startswith("encoder.conv_stack.") for k in model
    )


def _export_embedder(ckpt: dict[str, Any], source: Path, out: Path, options: Namespace) -> str:
    model = embedder_from_checkpoint(ckpt, str(source))
    save_embedder(model, out)
    cfg = model.config
    return (f"embedder: {len(model.state_dict())} tensors, {cfg.in_channels}x{cfg.spatial_h}x"
            f"{cfg.spatial_w} -> {cfg.latent_dim}")


register_exporter(Exporter(kind="embedder", matches=_is_embedder, export=_export_embedder))


def _load_exporter_modules() -> None:
    for name in EXPORTER_MODULES:
        importlib.import_module(name)


def build_parser() -> ArgumentParser:
    """The ``lrag export`` argument parser (kind-specific options come from the registry)."""
    _load_exporter_modules()
    parser = ArgumentParser(
        prog="lrag export",
        description="Export a checkpoint (Lightning .ckpt or an upstream .pt) to safetensors with "
        "its config in the metadata. The model kind is detected from the checkpoint's content.",
    )
    parser.add_argument("ckpt", type=str, help="Checkpoint to export (read with weights_only=True).")
    parser.add_argument("out", type=str, help="Output file; must end with .safetensors.")
    parser.add_argument(
        "--kind",
        type=str | None,
        default=None,
        help=f"Force a model kind instead of detecting it; one of: {', '.join(EXPORTERS)}.",
    )
    for exporter in sorted(EXPORTERS.values(), key=_module_rank):
        if exporter.add_arguments is not None:
            exporter.add_arguments(parser)
    return parser


def _module_rank(exporter: Exporter) -> int:
    # Options are added in EXPORTER_MODULES order whatever the import order was, so a later
    # module can extend an option an earlier one declared (e.g. a shared --preset).
    module = getattr(exporter.export, "__module__", "")
    return EXPORTER_MODULES.index(module) if module in EXPORTER_MODULES else -1


def select_exporter(ckpt: dict[str, Any], source: Path, kind: str | None = None) -> Exporter:
    """The exporter for ``kind``, or the one whose ``matches`` accepts ``ckpt``."""
    if kind is not None:
        if kind not in EXPORTERS:
            raise CheckpointError(f"--kind {kind!r}: unknown; choose one of {', '.join(EXPORTERS)}")
        return EXPORTERS[kind]
    found = [e for e in EXPORTERS.values() if e.matches(ckpt)]
    if len(found) != 1:
        what = "no exporter recognises" if not found else "several exporters match"
        raise CheckpointError(
            f"{source}: {what} this checkpoint (top-level keys: {sorted(map(str, ckpt))[:10]}); "
            f"pass --kind (one of {', '.join(EXPORTERS)}) if you know what it holds"
        )
    return found[0]


def export(ckpt_path: str | Path, out: str | Path, kind: str | None = None,
           options: Namespace | None = None) -> str:
    """Export ``ckpt_path`` to ``out``; returns a one-line summary.

    Raises:
        CheckpointError: Unreadable (pickle-only), unrecognised or mismatched checkpoints.
    """
    source, out = Path(ckpt_path), Path(out)
    if out.suffix != ".safetensors":
        raise CheckpointError(f"output {out}: use a .safetensors file name")
    _load_exporter_modules()
    ckpt = read_checkpoint(source)
    exporter = select_exporter(ckpt, source, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = exporter.export(ckpt, source, out, options or Namespace())
    log.info("exported %s -> %s (%s)", source, out, summary)
    return summary


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``lrag export``."""
    parser = build_parser()
    cfg = parser.parse_args(args)
    try:
        summary = export(cfg.ckpt, cfg.out, cfg.kind, cfg)
    except (CheckpointError, FileNotFoundError) as err:
        raise SystemExit(f"lrag export: {err}") from None
    print(f"wrote {cfg.out} ({summary})")
