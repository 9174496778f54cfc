"""The subcommands of ``lrag``: data, memory, export, eval, demo, and the LightningCLI (lightning_cli).

Each jsonargparse module (data, memory, export, eval, demo) exposes ``build_parser() ->
jsonargparse.ArgumentParser`` and ``main(args)``; ``lrag.cli`` dispatches to them and lists them in
``lrag --help``. ``lightning_cli`` is imported only for fit/validate/test/predict.
"""
