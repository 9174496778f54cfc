"""The subcommands of ``lrag``: data, memory, export, eval, demo, and the LightningCLI (lightning_cli).

Each module exposes ``build_parser() -> jsonargparse.ArgumentParser`` and ``main(args)``;
``lrag.cli`` dispatches to them and lists them in ``lrag --help``.
"""
