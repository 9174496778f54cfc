"""``lrag eval``: A/B evaluation of retrieval against the native baseline on held-out worlds.

``lrag eval --config configs/eval/demo.yaml [--seeds 1000 1001 ...]`` generates every world
once per variant (native, retrieval per descriptor and budget) and writes ``report.md``,
``report.json``, plots and TensorBoard scalars to ``out_dir``. See :mod:`lrag.eval.runner`.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from typing import Sequence

from jsonargparse import ActionConfigFile, ArgumentParser

from lrag.eval.runner import EvalSettings, run_eval

__all__ = ["build_parser", "main"]

_HELP = {
    "seeds": "World seeds to evaluate (must not be training worlds).",
    "num_frames": "Latent frames generated per world (a multiple of frames_per_block).",
    "backbone_preset": "Tiny backbone preset (lrag.nets.wan).",
    "backbone_checkpoint": "Backbone-fit weights: `lrag export` .safetensors, asset:<file> (shipped) or a "
                           "BackboneFitModule .ckpt; null = random initialisation of backbone_preset.",
    "backbone_fit_config": "`lrag fit` YAML of a .ckpt that records no backbone_config (older checkpoints).",
    "camera": "Camera conditioning of the checkpoint: none | motion | position (must match training).",
    "text_len": "Prompt tokens of the TinyTextEncoder (as in training).",
    "budgets": "Attention budget modes to compare: replace and/or add.",
    "descriptors": "Retrieval variants: avg_pool, oracle (camera-path ground truth), ae:<path>.",
    "sink_mode": "blank (a zero block is the sink, as in training) | first.",
    "train_seeds": "Extra seeds known to be training worlds (checked against seeds).",
    "sink_swap": "Sink-swap check: a world seed (not evaluated) whose first frame replaces the blank sink "
                 "frame in every variant; null = blank sink as in training.",
    "out_dir": "Folder for report.md, report.json, plots and tb/.",
    "device": "Torch device, e.g. cpu or cuda.",
}


def build_parser() -> ArgumentParser:
    """The ``lrag eval`` parser: one option per :class:`EvalSettings` field, plus ``--config``."""
    parser = ArgumentParser(prog="lrag eval", description=__doc__.splitlines()[0], exit_on_error=True)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with these options.")
    defaults, hints = EvalSettings(), typing.get_type_hints(EvalSettings)
    for f in dataclasses.fields(EvalSettings):
        help_text = _HELP.get(f.name, f"See EvalSettings.{f.name} (as in training).")
        if hints[f.name] == list[int]:  # `--seeds 1000 1001` as well as `--seeds [1000,1001]`
            parser.add_argument(f"--{f.name}", type=int, nargs="+", default=getattr(defaults, f.name),
                                help=help_text)
        else:
            parser.add_argument(f"--{f.name}", type=hints[f.name], default=getattr(defaults, f.name),
                                help=help_text)
    return parser


def main(args: Sequence[str] | None = None) -> None:
    """Parse ``args`` and run the evaluation; prints where the report went."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = build_parser().parse_args(list(args) if args is not None else None)
    fields = {f.name for f in dataclasses.fields(EvalSettings)}
    settings = EvalSettings(**{k: v for k, v in vars(cfg).items() if k in fields})
    _, paths = run_eval(settings)
    print(paths.markdown.read_text())
    print(f"report: {paths.markdown}  json: {paths.json}  tensorboard: {paths.tensorboard}")
