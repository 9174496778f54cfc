"""Plain ``lrag fit|validate|test|predict --help`` served from a cache, without importing Lightning.

LightningCLI builds its help from Lightning, torch and every lrag class a config may name:
about 7 s of CPU on the 2-core machine, for a text that changes only when that code does. The
first plain ``--help`` of a command (nothing else on the command line) renders it live and
stores it in ``$XDG_CACHE_HOME/lrag/help`` (``~/.cache/lrag/help``); later ones print the file.

The file name is ``<command>-<terminal width>-<key>.txt``; the key hashes the installed lrag
sources, the versions of the packages that shape the text (:data:`KEY_PACKAGES`) and Python's
version. Any change gives a new key, hence a cache miss and a live render, which removes the
files of older keys. ``--help`` with ``--config`` or other options is always rendered live.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Sequence

__all__ = ["KEY_PACKAGES", "cache_dir", "cache_key", "cached_help", "is_plain_help", "render_live"]

#: Distributions whose code writes the Lightning help text (jsonargparse reads docstrings and
#: stubs through the last two when they are installed).
KEY_PACKAGES = ("lightning", "jsonargparse", "torch", "docstring-parser", "typeshed-client")
HELP_FLAGS = ("-h", "--help")
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def is_plain_help(args: Sequence[str]) -> bool:
    """``["predict", "--help"]``: a command and a help flag, nothing else."""
    return len(args) == 2 and args[1] in HELP_FLAGS


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lrag/help``, or ``~/.cache/lrag/help`` when the variable is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lrag" / "help"


def _versions() -> dict[str, str]:
    found = {}
    for name in KEY_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def cache_key(package_dir: Path = PACKAGE_DIR, versions: dict[str, str] | None = None) -> str:
    """A 16-hex-digit key of the code that writes the Lightning help texts.

    Args:
        package_dir: The lrag package whose ``*.py`` files are hashed (path and content).
        versions: Package versions; default the installed :data:`KEY_PACKAGES`.
    """
    digest = hashlib.sha256()
    versions = _versions() if versions is None else versions
    header = [sys.version.split()[0]] + [f"{k}={versions[k]}" for k in sorted(versions)]
    digest.update("\n".join(header).encode())
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(b"\0" + path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def render_live(command: str) -> str:
    """The help text of ``lrag <command> --help`` as LightningCLI prints it (imports Lightning)."""
    from lrag.commands.lightning_cli import run_lightning

    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        # The console script's sys.argv holds the same two words: not the mistake Lightning warns of.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        try:
            run_lightning([command, "--help"])
        except SystemExit as err:  # argparse ends --help with exit(0)
            if err.code not in (None, 0):
                raise
    return out.getvalue()


def cached_help(command: str) -> str:
    """The help text of ``lrag <command> --help``: from the cache, else rendered and stored.

    A cache that cannot be written (read-only home) only costs speed: the live text is returned.
    """
    width = shutil.get_terminal_size().columns  # what argparse wraps to
    folder, key = cache_dir(), cache_key()
    path = folder / f"{command}-{width}-{key}.txt"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    text = render_live(command)
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"{command}-*.txt"):  # texts of older code, any width
            if not stale.name.endswith(f"-{key}.txt"):
                stale.unlink()
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # a reader never sees half a file
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return text
