"""Fault injection for ``lrag data``: every kind of corrupt input file, through ``lrag.cli.main``.

Each case asserts that the command ends with ``SystemExit`` carrying a one-line message that names
the bad file, that no traceback is printed, that no pickle payload ran, and that the stored shard
set (and its parent folder) is byte-for-byte what it was before.

Permission-denied cases need a user that file modes apply to: as root they run the same command
in a subprocess as ``nobody`` (setpriv), otherwise in process.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lrag.cli import main

REPO = Path(__file__).resolve().parents[2]
KINDS = ["garbage", "truncated", "empty", "pickled", "directory"]
AS_ROOT = os.geteuid() == 0


class _Payload:
    """Unpickling this touches ``marker``: proof that a loader executed pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _tree_hash(*folders: Path) -> dict[str, str]:
    """sha256 of every file under ``folders`` and of the names in their parents."""
    out = {}
    for folder in folders:
        out[f"names:{folder.parent}"] = ",".join(sorted(p.name for p in folder.parent.iterdir()))
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _make_bad(path: Path, kind: str, good: bytes, marker: Path) -> None:
    """Turn ``path`` into a bad input of ``kind``; ``good`` is a valid file of the same type."""
    if kind == "garbage":
        path.write_bytes(b"\x07not what it says\x00" * 64)
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "pickled":
        payload = _Payload(marker)
        if path.suffix == ".npy":
            np.save(path, np.array([payload], dtype=object), allow_pickle=True)
        elif path.suffix == ".pt":
            torch.save(payload, path)
        elif path.suffix == ".tar":  # a shard whose latents member is an object array
            with tarfile.open(path, "w") as tar:
                for name, data in (("k.latents.npy", _npy_object_bytes(payload)),
                                   ("k.json", b"{}")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, _bytes_io(data))
        else:
            path.write_bytes(pickle.dumps(payload))
    elif kind == "directory":
        path.mkdir()
        (path / "inside.txt").write_text("a folder where a file should be")
    elif kind == "permission":
        path.write_bytes(good)
        path.chmod(0)
    else:
        raise ValueError(kind)


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)


def _npy_object_bytes(obj: object) -> bytes:
    buf = _bytes_io(b"")
    np.save(buf, np.array([obj], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _run(argv: list[str], capsys) -> tuple[str, str]:
    """Run ``lrag`` with ``argv`` in process; returns (SystemExit message, everything printed)."""
    with pytest.raises(SystemExit) as err:
        main(argv)
    printed = capsys.readouterr()
    assert isinstance(err.value.code, str), f"exit code {err.value.code!r}, not a message"
    return err.value.code, printed.out + printed.err


_MANY = """
import json, sys
from lrag.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
        codes.append(None)
    except SystemExit as exit_:
        codes.append(exit_.code)
print(json.dumps(codes))
"""


def _run_unprivileged(argvs: list[list[str]], home: Path) -> tuple[list, str]:
    """Run several ``lrag`` commands in one subprocess as ``nobody``; (exit codes, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home)}
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-c", _MANY, json.dumps(argvs)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.fixture
def world():
    """A world-writable scratch folder (so ``nobody`` can use it) with SRC and a stored DST."""
    root = Path(tempfile.mkdtemp(prefix="lrag-faults-", dir="/tmp"))
    root.chmod(0o777)
    src, store = root / "src", root / "store"
    src.mkdir()
    np.save(src / "a.npy", np.ones((3, 16, 2, 2), np.float32))
    torch.save(torch.ones(2, 16, 2, 2), src / "b.pt")
    main(["data", "synth", str(store / "dst"), "--clips", "4", "--frames", "3", "--shard-size",
          "2"])
    for path in [root, *root.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    yield root
    for path in root.rglob("*"):
        path.chmod(0o777 if path.is_dir() else 0o666)
    shutil.rmtree(root)


def _check(message: str, printed: str, bad: Path, marker: Path, before: dict, after: dict):
    assert str(bad) in message, message
    assert "Traceback" not in printed and "Traceback" not in message
    assert len(message.splitlines()) <= 2, message
    assert not marker.exists(), "a pickle payload was executed"
    assert after == before


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
@pytest.mark.parametrize("kind", KINDS)
def test_import_of_a_bad_latent_file(world, capsys, kind, suffix):
    src, dst, marker = world / "src", world / "store" / "dst", world / "pwned"
    good = (src / ("a.npy" if suffix == ".npy" else "b.pt")).read_bytes()
    bad = src / f"c{suffix}"
    _make_bad(bad, kind, good, marker)
    before = _tree_hash(dst)
    message, printed = _run(["data", "import", str(src), str(dst), "--overwrite"], capsys)
    _check(message, printed, bad, marker, before, _tree_hash(dst))
    expected = {"garbage": "not a", "truncated": "truncated", "empty": "empty file",
                "pickled": "object", "directory": "is a directory"}[kind]
    if kind == "pickled" and suffix == ".pt":
        expected = "pickled Python objects"
    assert expected in message, message


@pytest.mark.parametrize("kind", KINDS)
def test_inspect_of_a_bad_shard(world, capsys, kind):
    dst, marker = world / "store" / "dst", world / "pwned"
    good = (dst / "latents-000000.tar").read_bytes()
    bad = dst / "latents-000002.tar"
    _make_bad(bad, kind, good, marker)
    before = _tree_hash(dst)
    message, printed = _run(["data", "inspect", str(dst)], capsys)
    _check(message, printed, bad, marker, before, _tree_hash(dst))
    assert "--skip-bad" in message


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "directory"])
def test_video_import_of_a_bad_video(world, capsys, kind):
    from lrag.data.video import write_video

    src, dst, marker = world / "videos", world / "store" / "dst", world / "pwned"
    src.mkdir()
    frames = np.random.default_rng(0).integers(0, 255, (9, 16, 16, 3), dtype=np.uint8)
    good = write_video(world / "good.mp4", frames, fps=8).read_bytes()
    (src / "a.mp4").write_bytes(good)
    bad = src / "b.mp4"
    _make_bad(bad, kind, good, marker)
    before = _tree_hash(dst)
    # Every video is decoded before the VAE is loaded, so an empty --vae folder is never opened.
    (world / "vae").mkdir()
    message, printed = _run(["data", "import", str(src), str(dst), "--vae", str(world / "vae"),
                             "--overwrite", "--height", "16", "--width", "16"], capsys)
    _check(message, printed, bad, marker, before, _tree_hash(dst))


def test_skip_bad_skips_every_kind_of_bad_latent_file(world, capsys):
    src, dst, marker = world / "src", world / "store" / "dst", world / "pwned"
    goods = {".npy": (src / "a.npy").read_bytes(), ".pt": (src / "b.pt").read_bytes()}
    bad = []
    for kind in KINDS:
        for suffix, good in goods.items():
            path = src / f"{kind}{suffix}"
            _make_bad(path, kind, good, marker)
            bad.append(str(path))
    main(["data", "import", str(src), str(dst), "--overwrite", "--skip-bad"])
    out = capsys.readouterr().out
    assert "imported 2 clip(s)" in out and f"skipped {len(bad)}" in out
    assert all(path in out for path in bad) and not marker.exists()
    summary = main(["data", "inspect", str(dst), "--json"]) or json.loads(capsys.readouterr().out)
    assert summary["clips"] == 2


@pytest.mark.slow
def test_permission_denied_is_named_by_every_command(world, capsys):
    """Unreadable .npy, .pt, shard and video; as root the commands run as ``nobody``."""
    from lrag.data.video import write_video

    marker, dst = world / "pwned", world / "store" / "dst"
    bad = {}
    for name, source in (("npy", "a.npy"), ("pt", "b.pt")):
        folder = world / f"src_{name}"
        folder.mkdir()
        shutil.copy(world / "src" / source, folder / source)
        bad[name] = folder / f"c.{name}"
        shutil.copy(world / "src" / source, bad[name])
    videos = world / "videos"
    videos.mkdir()
    frames = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    write_video(videos / "a.mp4", frames, fps=8)
    bad["video"] = videos / "b.mp4"
    shutil.copy(videos / "a.mp4", bad["video"])
    bad["shard"] = dst / "latents-000001.tar"
    (world / "vae").mkdir()
    for path in [world, *world.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    for path in bad.values():
        path.chmod(0)
    before = _tree_hash(dst)
    argvs = [["data", "import", str(world / "src_npy"), str(dst), "--overwrite"],
             ["data", "import", str(world / "src_pt"), str(dst), "--overwrite"],
             ["data", "import", str(videos), str(dst), "--vae", str(world / "vae"),
              "--overwrite", "--height", "16", "--width", "16"],
             ["data", "inspect", str(dst)]]
    if AS_ROOT:  # root reads mode-000 files, so only another user can see the refusal
        assert shutil.which("setpriv"), "running as root needs setpriv to test permissions"
        codes, printed = _run_unprivileged(argvs, world)
    else:
        codes, printed = [], ""
        for argv in argvs:
            code, out = _run(argv, capsys)
            codes.append(code)
            printed += out
    for code, path in zip(codes, [bad["npy"], bad["pt"], bad["video"], bad["shard"]]):
        assert isinstance(code, str) and str(path) in code, code
        assert "permission denied" in code.lower(), code
    assert "Traceback" not in printed and not marker.exists()
    for path in bad.values():
        path.chmod(0o666)
    assert _tree_hash(dst) == before
