"""The Lightning half of ``lrag``: ``fit|validate|test|predict`` through LightningCLI.

Kept apart from :mod:`lrag.cli` so that ``lrag --help`` and the non-Lightning commands never
import torch or Lightning (``lrag.cli`` imports this module only for a Lightning command).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI

__all__ = ["LragCLI", "explain_config_error", "run_lightning"]


#: Config groups whose keys are a class's constructor arguments (for "did you mean" hints).
_GROUP_CLASSES = {"trainer": "lightning.pytorch.Trainer"}
_UNKNOWN_KEY = re.compile(r"(?:Option|does not accept option) '([^']+)'")
_CLASS_PATH = re.compile(r"class_path '([\w.]+)'")


def _config_files(args: Sequence[str]) -> list[str]:
    """The YAML files named on the command line (``--config F``, ``-c F``, ``--x=F.yaml``)."""
    files = []
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
        elif arg.endswith((".yaml", ".yml")) and Path(arg).is_file() and arg not in files:
            files.append(arg)
    return files


def _accepted_keys(message: str, dotted_key: str) -> list[str]:
    """Constructor arguments of the innermost class the error is about (empty if unknown)."""
    paths = _CLASS_PATH.findall(message)
    group = re.search(r"Group '(\w+)'", message)
    group_name = group.group(1) if group else dotted_key.partition(".")[0] if "." in dotted_key else ""
    target = paths[-1] if paths else _GROUP_CLASSES.get(group_name, "")
    if not target:
        return []
    module, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(obj).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, TypeError, ValueError):
        return []


def explain_config_error(message: str, args: Sequence[str]) -> str:
    """Turn a jsonargparse error into one that names the key, the file and the fix."""
    command = args[0] if args else "fit"
    files = _config_files(args)
    unknown = _UNKNOWN_KEY.findall(message)
    if not unknown:
        where = f" (config files: {', '.join(files)})" if files else ""
        return f"lrag {command}: invalid configuration{where}:\n{message}\nSee `lrag {command} --help`."
    key = unknown[-1].rsplit(".", 1)[-1]
    hits = []
    for name in files:
        lines = Path(name).read_text().splitlines() if Path(name).is_file() else []
        hits += [f"{name}:{n}" for n, line in enumerate(lines, 1) if re.match(rf"\s*{re.escape(key)}\s*:", line)]
    location = f" at {', '.join(hits)}" if hits else (f" (config files: {', '.join(files)})" if files else "")
    accepted = _accepted_keys(message, unknown[-1])
    close = difflib.get_close_matches(key, accepted, n=1)
    fix = f"did you mean '{close[0]}'? " if close else ""
    listing = f"Accepted keys here: {', '.join(accepted)}. " if accepted else ""
    return (
        f"lrag {command}: unknown config key '{key}'{location}. {fix}Fix or remove it. {listing}"
        f"`lrag {command} --print_config` shows a complete valid config."
    )


class LragCLI(LightningCLI):
    """LightningCLI with clearer config errors and lrag's ``predict --resume RUN_ID`` option."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: D102
        parser.add_argument(
            "--resume",
            type=str | None,
            default=None,
            help="predict only: id of an interrupted run to continue from its store and shards.",
        )

    def parse_arguments(self, parser, args: Any) -> None:
        """Parse like LightningCLI, but report bad configs with the key, file and fix."""
        argv = list(sys.argv[1:] if args is None else args)
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            raise SystemExit(explain_config_error(str(err), argv)) from None

    def before_predict(self) -> None:  # noqa: D102
        resume = self.config["predict"].get("resume")
        if resume is not None:
            if not hasattr(self.model, "set_resume"):
                raise SystemExit(
                    f"--resume {resume}: model {type(self.model).__name__} cannot resume runs; "
                    "use a GeneratorModule config."
                )
            self.model.set_resume(resume)


def run_lightning(args: Sequence[str] | None) -> LragCLI:
    """Run a Lightning subcommand; returns the CLI object (tests read its trainer/model).

    Args:
        args: ``["fit", "--config", ...]``; ``None`` reads ``sys.argv[1:]`` (the console script).
    """
    return LragCLI(
        model_class=None,
        datamodule_class=None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if args is None else list(args),
        save_config_kwargs={"overwrite": True},
        # Raise instead of exiting, so parse_arguments can explain the error (key, file, fix).
        # prog: "usage: lrag predict" whatever started Python (console script, -m, tests).
        parser_kwargs={"exit_on_error": False, "prog": "lrag"},
        auto_configure_optimizers=True,
    )
