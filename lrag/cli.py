"""The ``lrag`` command.

``lrag fit|validate|test|predict`` is a LightningCLI (:mod:`lrag.commands.lightning_cli`): model
and data are composed from YAML by ``class_path``/``init_args``. ``lrag data|memory|export|eval|demo``
are plain jsonargparse subcommands living in :mod:`lrag.commands`. Nothing heavy is imported here:
``lrag --help`` must answer without torch, Lightning or LanceDB; plain ``lrag fit|predict --help``
is served from a cache of LightningCLI's text (:mod:`lrag.commands.help_cache`).
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

#: Extra subcommands: name -> (module, one-line help). Modules are imported only when their
#: command runs, so ``lrag --help`` and ``lrag memory sql`` never import torch or Lightning.
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("lrag.commands.data", "Latent shards: synth, import, inspect, collect."),
    "memory": ("lrag.commands.memory", "Inspect run memories: runs, show, search, read-only SQL."),
    "export": ("lrag.commands.export", "Export a checkpoint's weights and config to safetensors."),
    "eval": ("lrag.commands.eval", "A/B evaluation of retrieval against the native baseline."),
    "demo": ("lrag.commands.demo", "Side-by-side video: ground truth | native | retrieval (compare)."),
}

LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "Train a model (embedder or small backbone) from a YAML config.",
    "validate": "Run one validation epoch.",
    "test": "Run one test epoch.",
    "predict": "Sample long videos (writes runs/<run_id>/ and the LanceDB memory).",
}


def _print_overview() -> None:
    lines = ["usage: lrag <command> [options]", "", "Lightning commands (--config FILE.yaml):"]
    lines += [f"  {name:<10}{text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += ["", "Other commands:"]
    lines += [f"  {name:<10}{text}" for name, (_, text) in EXTRA_COMMANDS.items()]
    lines += ["", "Run `lrag <command> --help` for the options of one command."]
    print("\n".join(lines))


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``lrag`` console script; ``args`` defaults to ``sys.argv[1:]``.

    Errors a person can act on end in one message, without a traceback (``--debug`` shows it):
    see :mod:`lrag.errors`.
    """
    from lrag.errors import run_command

    run_command(_dispatch, args)


def _dispatch(args: Sequence[str] | None = None) -> None:
    """Run one ``lrag`` command (:func:`main` without the error handling)."""
    from lrag.commands.help_cache import cached_help, is_plain_help

    from_argv = args is None
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
    if is_plain_help(args):  # LightningCLI's help without importing it (but for the first time)
        print(cached_help(args[0]), end="")
        return
    from lrag.commands.lightning_cli import run_lightning  # torch + Lightning: seconds to import

    # Lightning warns when given both argv and args, so the console script passes None.
    run_lightning(None if from_argv else args)


if __name__ == "__main__":
    main()
