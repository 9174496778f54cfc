"""Shipped weights of the embedded default (tiny backbone + tiny embedder).

Config values of the form ``asset:<file>`` name a file of this package folder, so a config
works from any working directory and from an installed wheel. The files are made by
``scripts/make_assets.sh`` (``make assets``); ``docs/assets.md`` says how they were trained.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ASSET_PREFIX", "ASSETS", "AssetMissingError", "asset_path", "resolve_asset"]

ASSET_PREFIX = "asset:"
#: The shipped files and what makes them.
ASSETS = {
    "backbone_tiny.safetensors": "the tiny camera-conditioned backbone (`lrag export` of a "
                                 "BackboneFitModule checkpoint from configs/backbone/demo.yaml)",
    "backbone_tiny_frozen.safetensors": "the same backbone trained without memory exposure (the frozen-"
                                        "generator baseline of configs/eval/frozen.yaml; docs/assets.md)",
    "embedder_tiny.safetensors": "the tiny frame embedder (`lrag export` of an EmbedderModule "
                                 "checkpoint from configs/embedder/world.yaml)",
}


class AssetMissingError(FileNotFoundError):
    """A shipped weight file is not in the package folder; the message says how to make it."""


def asset_path(name: str) -> Path:
    """Path of the shipped file ``name`` (need not exist)."""
    return Path(__file__).resolve().parent / name


def resolve_asset(path: str, field: str = "path") -> str:
    """Turn ``asset:<file>`` into the package file's path; other paths pass through.

    Args:
        path: A config value.
        field: Config field name, for the error message.

    Raises:
        AssetMissingError: An ``asset:`` file is missing.
    """
    if not path.startswith(ASSET_PREFIX):
        return path
    name = path[len(ASSET_PREFIX):]
    target = asset_path(name)
    if not target.is_file():
        what = ASSETS.get(name, "a shipped weight file")
        raise AssetMissingError(
            f"{field}: {path} is missing: expected {what} at {target}. Run `make assets` "
            f"(scripts/make_assets.sh) from the repository root to train and export it, or copy "
            f"an exported .safetensors file to {target}."
        )
    return str(target)
