"""`lrag data synth|import|inspect` end to end through the real parser, shards and WebDataset."""

from __future__ import annotations

import io
import json
import re
import tarfile

import numpy as np
import pytest
import torch

from lrag.commands.data import main
from lrag.data.shards import iter_clips


class _NotATensor:
    """Pickled into a .pt file: must be refused by weights_only loading."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def _good(frames: int = 4, channels: int = 16) -> np.ndarray:
    return np.random.default_rng(frames).standard_normal((frames, channels, 2, 3)).astype(
        np.float32)


@pytest.fixture
def good_folder(tmp_path):
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    np.save(src / "a.npy", _good(3))
    torch.save(torch.from_numpy(_good(5)), src / "b.pt")
    torch.save(torch.from_numpy(_good(2)).to(torch.bfloat16), src / "nested" / "c.pt")
    return src


def test_synth_is_deterministic_and_inspect_reports_it(tmp_path, capsys):
    args = ["--clips", "5", "--frames", "7", "--channels", "4", "--height", "3", "--width", "2",
            "--shard-size", "2", "--seed", "3"]
    main(["synth", str(tmp_path / "a"), *args])
    main(["synth", str(tmp_path / "b"), *args])
    a, b = list(iter_clips(tmp_path / "a")), list(iter_clips(tmp_path / "b"))
    assert len(list((tmp_path / "a").glob("*.tar"))) == 3
    assert [c.key for c in a] == [c.key for c in b] and len(a) == 5
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.latents, y.latents)
    capsys.readouterr()
    main(["inspect", str(tmp_path / "a"), "--json"])
    summary = json.loads(capsys.readouterr().out)
    stacked = np.stack([c.latents.astype(np.float64) for c in a])
    assert summary["shards"] == 3 and summary["clips"] == 5 and summary["frames"] == 35
    assert summary["shapes"] == {"4 x 3 x 2": 5} and summary["dtypes"] == {"float16": 5}
    assert summary["mean"] == pytest.approx(stacked.mean(), abs=1e-9)
    assert summary["std"] == pytest.approx(stacked.std(), rel=1e-6)
    assert summary["max"] == pytest.approx(stacked.max()) and summary["non_finite"] == 0


def test_inspect_table_counts_non_finite_values(tmp_path, capsys):
    arr = np.ones((2, 1, 1, 2), np.float16)
    arr[0, 0, 0, 0] = np.nan
    arr[1, 0, 0, 1] = np.inf
    with tarfile.open(tmp_path / "x-000000.tar", "w") as tar:
        for name, payload in (("k.latents.npy", _npy_bytes(arr)), ("k.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    main(["inspect", str(tmp_path)])
    rows = {cells[0]: cells[1] for line in capsys.readouterr().out.splitlines()
            if len(cells := [c.strip() for c in line.strip("│ ").split("│")]) == 2}
    assert rows["non_finite"] == "2" and rows["clips"] == "1" and rows["frames"] == "2"
    assert rows["mean"] == "1" and rows["max"] == "1"


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_synth_refuses_to_mix_with_existing_shards(tmp_path):
    main(["synth", str(tmp_path), "--clips", "1", "--frames", "2"])
    with pytest.raises(SystemExit, match="--overwrite"):
        main(["synth", str(tmp_path), "--clips", "1", "--frames", "2"])
    main(["synth", str(tmp_path), "--clips", "2", "--frames", "2", "--overwrite"])
    assert len(list(iter_clips(tmp_path))) == 2


def test_import_round_trip(good_folder, tmp_path):
    dst = tmp_path / "dst"
    report = main(["import", str(good_folder), str(dst), "--shard-size", "2", "--fps", "8"])
    assert report.written == 3 and report.skipped == [] and len(report.shards) == 2
    clips = {c.key: c for c in iter_clips(dst)}
    assert set(clips) == {"a_npy", "b_pt", "nested_c_pt"}
    np.testing.assert_array_equal(clips["a_npy"].latents, _good(3).astype(np.float16))
    assert clips["nested_c_pt"].meta["source"] == "nested/c.pt"
    assert clips["b_pt"].meta["fps"] == 8.0 and clips["b_pt"].latents.shape == (5, 16, 2, 3)


def _bad_files() -> dict[str, object]:
    nan = _good(3)
    nan[1, 2, 0, 0] = np.nan
    return {
        "rank.npy": np.zeros((3, 16, 2), np.float32),
        "channels.npy": _good(3, channels=4),
        "dtype.npy": np.zeros((2, 16, 2, 2), np.int32),
        "nan.npy": nan,
        "pickled.pt": _NotATensor(),
        "dict.pt": {"latents": torch.zeros(2, 16, 2, 2)},
    }


def _write_bad(path, bad) -> None:
    if isinstance(bad, bytes):
        path.write_bytes(bad)
    elif path.suffix == ".npy":
        np.save(path, bad)
    else:
        torch.save(bad, path)


def _raw_bad_files(tmp_path) -> dict[str, bytes]:
    torch.save(torch.zeros(3, 16, 2, 2), tmp_path / "whole.pt")
    np.save(tmp_path / "whole.npy", np.zeros((3, 16, 2, 2), np.float32))
    pt, npy = (tmp_path / "whole.pt").read_bytes(), (tmp_path / "whole.npy").read_bytes()
    return {"garbage.npy": b"\x00junk" * 50, "garbage.pt": b"\x00junk" * 50,
            "truncated.npy": npy[: len(npy) // 2], "truncated.pt": pt[: len(pt) // 2],
            "empty.npy": b"", "empty.pt": b""}


@pytest.mark.parametrize(("name", "needle"), [
    ("rank.npy", "rank 3"), ("channels.npy", "4 channels"), ("dtype.npy", "not floating"),
    ("nan.npy", "non-finite"), ("pickled.pt", "weights_only"), ("dict.pt", "holds a dict"),
    ("garbage.npy", "not a .npy array (no NumPy header)"),
    ("garbage.pt", "not a torch.save file"), ("truncated.npy", "truncated (448 bytes"),
    ("truncated.pt", "truncated or corrupt torch.save archive"), ("empty.npy", "empty file"),
    ("empty.pt", "empty file"),
])
def test_import_rejects_bad_file_naming_it_and_writes_nothing(good_folder, tmp_path, name, needle):
    bad = {**_bad_files(), **_raw_bad_files(tmp_path)}[name]
    path = good_folder / f"z_{name}"  # sorts after the good files
    _write_bad(path, bad)
    dst = tmp_path / "dst"
    with pytest.raises(SystemExit, match=re.escape(needle)) as err:
        main(["import", str(good_folder), str(dst)])
    assert f"z_{name}" in str(err.value)
    assert not dst.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_import_skip_bad_skips_every_bad_file(good_folder, tmp_path):
    bad_files = {**_bad_files(), **_raw_bad_files(tmp_path)}
    for name, bad in bad_files.items():
        _write_bad(good_folder / name, bad)
    (good_folder / "folder.npy").mkdir()  # a directory with a latent suffix
    report = main(["import", str(good_folder), str(tmp_path / "dst"), "--skip-bad"])
    assert report.written == 3
    assert sorted(p.split("/")[-1] for p in report.skipped) == sorted([*bad_files, "folder.npy"])
    assert len(list(iter_clips(tmp_path / "dst"))) == 3


def _snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_failed_overwrite_keeps_the_old_destination_byte_identical(good_folder, tmp_path):
    """Issue 13, data loss 3: --overwrite used to delete DST's shards before reading any input."""
    dst = tmp_path / "dst"
    main(["synth", str(dst), "--clips", "4", "--frames", "3", "--shard-size", "2"])
    (dst / "notes.txt").write_text("kept")
    before = _snapshot(dst)
    (good_folder / "a.npy").write_bytes(b"not an array")  # the first file is bad
    with pytest.raises(SystemExit, match="a.npy"):
        main(["import", str(good_folder), str(dst), "--overwrite"])
    assert _snapshot(dst) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]  # no staging left


def test_overwrite_replaces_only_the_prefix_shards_once_complete(good_folder, tmp_path):
    dst = tmp_path / "dst"
    main(["synth", str(dst), "--clips", "6", "--frames", "3", "--shard-size", "2"])
    main(["synth", str(dst), "--clips", "1", "--frames", "3", "--prefix", "other"])
    (dst / "notes.txt").write_text("kept")
    report = main(["import", str(good_folder), str(dst), "--overwrite", "--shard-size", "64"])
    assert report.shards == ["latents-000000.tar"]
    assert sorted(p.name for p in dst.iterdir()) == [
        "latents-000000.tar", "notes.txt", "other-000000.tar"]
    assert sorted(c.key for c in iter_clips(dst / "latents-000000.tar")) == [
        "a_npy", "b_pt", "nested_c_pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


@pytest.mark.parametrize(("args", "needle"), [
    (["synth", "{dst}", "--clips", "-3"], "--clips -3: must be >= 1"),
    (["synth", "{dst}", "--frames", "0"], "--frames 0: must be >= 1"),
    (["synth", "{dst}", "--height", "-1"], "--height -1: must be >= 1"),
    (["synth", "{dst}", "--seed", "-2"], "--seed -2: must be >= 0"),
    (["synth", "{dst}", "--shard-size", "0"], "--shard-size 0: must be >= 1"),
    (["synth", "{dst}", "--prefix", "a.b"], "--prefix 'a.b'"),
    (["import", "{src}", "{dst}", "--channels", "0"], "--channels 0: must be >= 1"),
    (["import", "{src}", "{dst}", "--fps", "1e999"], "--fps inf: must be a finite number > 0"),
    (["import", "{src}", "{dst}", "--fps", "-4"], "--fps -4.0: must be a finite number > 0"),
    (["import", "{src}", "{dst}", "--shard-size", "-1"], "--shard-size -1"),
])
def test_nonsense_flag_values_are_refused_by_name(good_folder, tmp_path, args, needle):
    dst = tmp_path / "dst"
    argv = [a.format(dst=dst, src=good_folder) for a in args]
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert needle in err.value.code and not dst.exists()


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_inspect_names_a_bad_shard_or_skips_it(tmp_path, capsys, how):
    main(["synth", str(tmp_path), "--clips", "6", "--frames", "3", "--shard-size", "2"])
    bad = tmp_path / "latents-000001.tar"
    data = bad.read_bytes()
    bad.write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                     "garbage": b"\x07" * 3000}[how])
    with pytest.raises(SystemExit) as err:
        main(["inspect", str(tmp_path)])
    assert str(bad) in err.value.code and "--skip-bad" in err.value.code
    capsys.readouterr()
    summary = main(["inspect", str(tmp_path), "--skip-bad", "--json"])
    assert summary.shards == 2 and summary.clips == 4 and summary.skipped == [str(bad)]
    assert json.loads(capsys.readouterr().out)["skipped"] == [str(bad)]


def test_inspect_missing_folder_mentions_synth(tmp_path):
    with pytest.raises(SystemExit, match="lrag data synth"):
        main(["inspect", str(tmp_path / "none")])


def test_synth_output_is_byte_reproducible_and_matches_shipped_sample(tmp_path):
    """data/sample must be exactly what `make sample-data` regenerates."""
    from pathlib import Path

    sample = Path(__file__).resolve().parents[2] / "data" / "sample"
    main(["synth", str(tmp_path), "--clips", "6", "--frames", "24", "--height", "8", "--width",
          "8", "--shard-size", "3", "--seed", "0"])
    fresh = sorted(tmp_path.glob("*.tar"))
    assert [p.name for p in fresh] == sorted(p.name for p in sample.glob("*.tar"))
    for path in fresh:
        assert path.read_bytes() == (sample / path.name).read_bytes(), path.name
