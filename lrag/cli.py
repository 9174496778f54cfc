"""The ``lrag`` command.

``lrag fit|validate|test|predict`` is a LightningCLI: model and data are composed from YAML by
``class_path``/``init_args``. ``lrag data|memory|export|eval`` are plain jsonargparse
subcommands living in :mod:`lrag.commands`.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from lightning.pytorch.cli import LightningCLI

#: Extra subcommands: name -> (module, one-line help). Modules are imported lazily so that
#: ``lrag memory sql`` does not pay for importing Lightning models.
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("lrag.commands.data", "Latent shards: synth, import, inspect."),
    "memory": ("lrag.commands.memory", "Inspect run memories: runs, show, search, read-only SQL."),
    "export": ("lrag.commands.export", "Export a checkpoint's weights and config to safetensors."),
    "eval": ("lrag.commands.eval", "A/B evaluation of retrieval against the native baseline."),
}

LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "Train a model (embedder or small backbone) from a YAML config.",
    "validate": "Run one validation epoch.",
    "test": "Run one test epoch.",
    "predict": "Sample long videos (writes runs/<run_id>/ and the LanceDB memory).",
}


class LragCLI(LightningCLI):
    """LightningCLI with lrag's extra ``predict --resume RUN_ID`` option."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: D102
        parser.add_argument(
            "--resume",
            type=str | None,
            default=None,
            help="predict only: id of an interrupted run to continue from its store and shards.",
        )

    def before_predict(self) -> None:  # noqa: D102
        resume = self.config["predict"].get("resume")
        if resume is not None:
            if not hasattr(self.model, "set_resume"):
                raise SystemExit(
                    f"--resume {resume}: model {type(self.model).__name__} cannot resume runs; "
                    "use a GeneratorModule config."
                )
            self.model.set_resume(resume)


def _print_overview() -> None:
    lines = ["usage: lrag <command> [options]", "", "Lightning commands (--config FILE.yaml):"]
    lines += [f"  {name:<10}{text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += ["", "Other commands:"]
    lines += [f"  {name:<10}{text}" for name, (_, text) in EXTRA_COMMANDS.items()]
    lines += ["", "Run `lrag <command> --help` for the options of one command."]
    print("\n".join(lines))


def run_lightning(args: Sequence[str]) -> LragCLI:
    """Run a Lightning subcommand; returns the CLI object (tests read its trainer/model)."""
    return LragCLI(
        model_class=None,
        datamodule_class=None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=list(args),
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=True,
    )


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``lrag`` console script; ``args`` defaults to ``sys.argv[1:]``."""
    args = list(sys.argv[1:] if args is None else args)
    if not args or args[0] in ("-h", "--help"):
        _print_overview()
        return
    if args[0] in EXTRA_COMMANDS:
        module = importlib.import_module(EXTRA_COMMANDS[args[0]][0])
        module.main(args[1:])
        return
    if args[0] not in LIGHTNING_COMMANDS:
        raise SystemExit(
            f"lrag: unknown command {args[0]!r}; choose one of "
            f"{', '.join([*LIGHTNING_COMMANDS, *EXTRA_COMMANDS])} (see `lrag --help`)."
        )
    run_lightning(args)


if __name__ == "__main__":
    main()
