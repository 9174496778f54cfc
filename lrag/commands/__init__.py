"""The non-Lightning subcommands of ``lrag`` (data, memory, export, eval).

Each module exposes ``build_parser() -> jsonargparse.ArgumentParser`` and ``main(args)``;
``lrag.cli`` dispatches to them and lists them in ``lrag --help``.
"""
