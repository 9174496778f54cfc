"""The command-line options of ``lrag export``, per model kind, as plain data (no torch).

:data:`EXPORT_OPTIONS` is the one table of export kinds and the options each reads;
:mod:`lrag.checkpoints.exporters` pairs every kind with its ``matches``/``export`` functions
(which need torch) and :mod:`lrag.commands.export` builds its parser from this table alone, so
``lrag export --help`` answers without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_GENERATOR_PRESET", "EXPORT_OPTIONS", "GENERATOR_DTYPES", "Option"]


@dataclass(frozen=True)
class Option:
    """A command-line option an exporter reads (``--name``); plain data, the CLI builds the parser.

    Attributes:
        name: Option name without dashes.
        type: Value type as jsonargparse understands it (e.g. ``str | None``).
        default: Default value.
        help: One line; options of the same name from several exporters share one flag.
    """

    name: str
    type: Any
    default: Any
    help: str


#: Stored dtypes of an exported generator, by torch dtype name.
GENERATOR_DTYPES = ("bfloat16", "float16", "float32")
#: The WanConfig preset of an upstream generator checkpoint unless ``--preset`` says otherwise.
DEFAULT_GENERATOR_PRESET = "wan_1_3b"
# The names of lrag.nets.wan.PRESETS, which imports torch; a test keeps the two in step.
_PRESET_NAMES = "wan_1_3b, golden_tiny, tiny"

#: Every exportable kind, in the order ``--kind`` lists them and options are added.
EXPORT_OPTIONS: dict[str, tuple[Option, ...]] = {
    "embedder": (),
    "backbone_fit": (
        Option("fit_config", str | None, None,
               "backbone_fit: the `lrag fit` YAML (or Lightning's config.yaml) of a checkpoint that records "
               "no backbone_config; its model.init_args.backbone config is exported."),
        Option("preset", str | None, None,
               "backbone_fit: last resort for a checkpoint without backbone_config and --fit_config: a "
               f"WanConfig preset, one of {_PRESET_NAMES}."),
    ),
    "generator": (
        Option("lora", str | None, None,
               "generator: LongLive LoRA adapter file ({'generator_lora': ...} or a bare adapter dict); merged "
               "into the base weights as W + (alpha/r) B A."),
        Option("lora_alpha", float | None, None,
               "generator: LoRA alpha; default alpha = rank (LongLive's scaling 1)."),
        Option("prefer_ema", bool, True,
               "generator: use 'generator_ema' when the checkpoint has it (else 'generator')."),
        Option("dtype", str, "bfloat16", f"generator: stored dtype, one of {', '.join(GENERATOR_DTYPES)}."),
        Option("preset", str | None, None,
               f"generator: the WanConfig preset describing the architecture (default "
               f"{DEFAULT_GENERATOR_PRESET}, the Wan2.1-T2V-1.3B backbone)."),
    ),
}
