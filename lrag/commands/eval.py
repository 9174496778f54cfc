"""``lrag eval``: A/B evaluation of retrieval against the native baseline on held-out worlds.

``lrag eval --config configs/eval/demo.yaml [--seeds 1000 1001 ...]`` generates every world
once per variant (native, retrieval per descriptor and budget) and writes ``report.md``,
``report.json``, plots and TensorBoard logs to ``out_dir``. See :mod:`lrag.eval.runner`.

``lrag eval run RUN_ID [--db runs/memory.lancedb] [--out DIR]`` reports consistency against
time of one stored run (any backbone, no ground truth). See :mod:`lrag.eval.run_report`.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import typing
from typing import Sequence

from jsonargparse import ActionConfigFile, ArgumentParser

from lrag.eval.settings import EvalSettings

# lrag.eval.runner and run_report import torch (seconds): imported where they are used, so
# `lrag eval --help` and `lrag eval run --help` answer at once (EvalSettings is torch-free).

__all__ = ["build_parser", "build_run_parser", "main", "main_run"]


def build_parser() -> ArgumentParser:
    """The ``lrag eval`` parser: one option per :class:`EvalSettings` field, plus ``--config``."""
    parser = ArgumentParser(prog="lrag eval", description=__doc__.splitlines()[0], exit_on_error=True,
                            epilog="For one stored run (no ground truth): lrag eval run RUN_ID --help")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with these options.")
    defaults, hints = EvalSettings(), typing.get_type_hints(EvalSettings)
    for f in dataclasses.fields(EvalSettings):
        help_text = f.metadata["help"]
        if hints[f.name] == list[int]:  # `--seeds 1000 1001` as well as `--seeds [1000,1001]`
            parser.add_argument(f"--{f.name}", type=int, nargs="+", default=getattr(defaults, f.name),
                                help=help_text)
        else:
            parser.add_argument(f"--{f.name}", type=hints[f.name], default=getattr(defaults, f.name),
                                help=help_text)
    return parser


def build_run_parser() -> ArgumentParser:
    """The ``lrag eval run`` parser."""
    parser = ArgumentParser(prog="lrag eval run", exit_on_error=True,
                            description="Consistency against time of one stored run: descriptor "
                                        "self-similarity vs Δt, frame-statistics drift, flicker and "
                                        "what retrieval selected (report.md, report.json, run_report.png).")
    parser.add_argument("run_id", type=str, help="A run of the store (`lrag memory runs` lists them).")
    parser.add_argument("--db", type=str, default="runs/memory.lancedb", help="The memory store.")
    parser.add_argument("--out", type=str | None, default=None, help="Output folder (default <run_dir>/eval).")
    parser.add_argument("--run_dir", type=str | None, default=None,
                        help="The run folder with blocks/ (default: <out_dir>/<run_id> of the run's "
                             "config, else next to the store).")
    parser.add_argument("--max_gap", type=int | None, default=None,
                        help="Largest Δt of the self-similarity curve (default: the whole video).")
    return parser


def main_run(args: Sequence[str]) -> None:
    """``lrag eval run``: write the report of one stored run; prints where it went."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = build_run_parser().parse_args(list(args))
    from lrag.eval.run_report import RunReportError, load_run, write_run_report

    try:
        paths = write_run_report(load_run(cfg.db, cfg.run_id, cfg.run_dir), cfg.out, cfg.max_gap)
    except RunReportError as err:
        raise SystemExit(f"lrag eval run: {err}") from None
    print(paths.markdown.read_text())
    print(f"report: {paths.markdown}  json: {paths.json}  figure: {paths.figure}")


def main(args: Sequence[str] | None = None) -> None:
    """Parse ``args`` and run the evaluation (or ``run RUN_ID``); prints where the report went."""
    args = list(args) if args is not None else sys.argv[1:]
    if args and args[0] == "run":
        main_run(args[1:])
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = build_parser().parse_args(args)  # --help and bad options end here, before torch is imported
    from lrag.eval.runner import run_eval

    fields = {f.name for f in dataclasses.fields(EvalSettings)}
    settings = EvalSettings(**{k: v for k, v in vars(cfg).items() if k in fields})
    _, paths = run_eval(settings)
    print(paths.markdown.read_text())
    print(f"report: {paths.markdown}  json: {paths.json}  tensorboard: {paths.tensorboard}")
