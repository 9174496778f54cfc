"""Plain ``lrag fit|predict --help`` from the help cache: the same text as LightningCLI, no Lightning."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lrag.cli import main
from lrag.commands.help_cache import cache_dir, cache_key, cached_help, is_plain_help, render_live

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "100")
    return tmp_path / "cache" / "lrag" / "help"


def test_only_a_command_and_a_help_flag_is_plain_help() -> None:
    assert is_plain_help(["predict", "--help"]) and is_plain_help(["fit", "-h"])
    assert not is_plain_help(["predict", "--config", "x.yaml", "--help"])
    assert not is_plain_help(["predict"])


def test_cache_dir_follows_xdg(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "lrag" / "help"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "lrag" / "help"


def test_key_changes_with_the_sources_and_the_versions(tmp_path) -> None:
    pkg = tmp_path / "lrag"
    shutil.copytree(ROOT / "lrag", pkg, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    versions = {"lightning": "2.6.6", "jsonargparse": "4.53.0", "torch": "2.13.0"}
    key = cache_key(pkg, versions)
    assert key == cache_key(pkg, dict(versions))
    assert cache_key(pkg, {**versions, "jsonargparse": "4.54.0"}) != key
    doc = pkg / "modules" / "generator.py"
    doc.write_text(doc.read_text() + "\n# a changed docstring changes the help\n")
    assert cache_key(pkg, versions) != key
    (pkg / "modules" / "generator.py").rename(pkg / "modules" / "renamed.py")
    assert len({key, cache_key(pkg, versions)}) == 2


def _heavy_modules_after(args: list[str], env: dict[str, str]) -> tuple[str, str]:
    """stdout of ``lrag ARGS`` in a fresh interpreter, and the heavy packages it imported."""
    probe = ("import sys\nfrom lrag.cli import main\nmain(sys.argv[1:])\nsys.stderr.write('HEAVY=' + "
             "','.join(m for m in ('torch', 'lightning', 'lancedb') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr.rstrip().rpartition("HEAVY=")[2]


@pytest.mark.slow
def test_cached_text_is_the_live_lightning_help_and_needs_no_torch(cache_home, capsys) -> None:
    cache_home.mkdir(parents=True)
    stale = cache_home / "predict-100-0123456789abcdef.txt"
    stale.write_text("help of older code")
    for command in ("predict", "fit"):
        main([command, "--help"])  # a miss: rendered live and stored
        printed = capsys.readouterr().out
        files = list(cache_home.glob(f"{command}-100-*.txt"))
        assert len(files) == 1
        live = render_live(command)
        assert printed == live == files[0].read_text()
        assert f"usage: lrag [options] {command}" in live and "--model" in live
        # A fresh interpreter (the console script) prints the cached text without Lightning.
        out, heavy = _heavy_modules_after([command, "--help"], {**os.environ, "PYTHONPATH": str(ROOT)})
        assert out == live and heavy == ""
    assert not stale.exists()
    assert "--resume" in (cache_home / files[0].name.replace("fit", "predict", 1)).read_text()
    files[0].write_text("served from the file\n")  # a hit reads the file, Lightning is not asked
    assert cached_help("fit") == "served from the file\n"
