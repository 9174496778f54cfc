"""``kill -9`` of a generating process at several points, and two processes resuming one run.

The run is generated in a subprocess (``gen_script.py``) that SIGKILLs itself at the point under
test; the resume then runs here and must give exactly the uninterrupted run: the same frames and
retrievals rows, block latents, shards and ``video.mp4`` bytes, and a counter equal to the rows.
"""

from __future__ import annotations

import time

import pytest
import torch

from lrag.memory.store import MemoryStore
from lrag.runs.outputs import RunOutputs


def _assert_equals_reference(gen, root, reference) -> None:
    store = MemoryStore(str(root / "runs" / "db"))
    run = store.get_run("w-0")
    assert run["status"] == "complete" and run["frames_done"] == run["frames_planned"] == 12
    assert store.frames("w-0", with_previews=False).num_rows == 12  # no duplicate rows
    got, ref = gen.store_rows(root), gen.store_rows(reference)
    assert (got["frames"], got["retrievals"]) == (ref["frames"], ref["retrievals"])
    files, ref_files = gen.folder_files(root / "runs" / "w-0"), gen.folder_files(reference / "runs" / "w-0")
    same_bytes = [k for k in ref_files if k.endswith((".tar", ".mp4", ".json"))]
    assert sorted(files) == sorted(ref_files)
    assert {k: files[k] for k in same_bytes} == {k: ref_files[k] for k in same_bytes}
    torch.testing.assert_close(RunOutputs(root / "runs" / "w-0", "w-0", {}, 16, False).read_blocks(4),
                               RunOutputs(reference / "runs" / "w-0", "w-0", {}, 16, False).read_blocks(4),
                               rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["mid-block", "rows-counter", "before-complete"])
def test_kill_9_then_resume_gives_the_uninterrupted_run(gen, tmp_path, reference, point):
    killed = gen.run_script(tmp_path, "--kill", point)
    assert killed.returncode == -9, killed.stderr[-2000:]
    store = MemoryStore(str(tmp_path / "runs" / "db"))
    run = store.get_run("w-0")
    assert run["status"] == "running"  # SIGKILL runs no handler; the lease is left behind
    assert run["frames_done"] == store.frames("w-0", with_previews=False).num_rows
    if point == "rows-counter":
        assert run["frames_done"] == 9  # block 2's rows counted although its counter update died
    gen.predict(gen.build(tmp_path), resume="w-0")  # takes over the dead process's lease
    _assert_equals_reference(gen, tmp_path, reference)
    assert not (tmp_path / "runs" / "w-0" / "lease.json").exists()


@pytest.mark.slow
def test_two_resumes_of_one_run_at_once_one_is_refused(gen, tmp_path, reference, monkeypatch):
    killed = gen.run_script(tmp_path, "--kill", "mid-block")
    assert killed.returncode == -9
    sync = tmp_path / "sync"
    sync.mkdir()
    first = __import__("subprocess").Popen(
        [__import__("sys").executable, str(gen.SCRIPT), str(tmp_path), "--resume", "w-0",
         "--pause-after-lease", str(sync)],
        env={**__import__("os").environ, "PYTHONPATH": str(gen.REPO)},
        stdout=__import__("subprocess").PIPE, stderr=__import__("subprocess").PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (sync / "leased").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (sync / "leased").exists(), first.stderr.read()[-2000:] if first.poll() is not None else "timeout"
        before = gen.snapshot(tmp_path)
        with pytest.raises(SystemExit, match=rf"--resume w-0: run w-0 is being written by pid {first.pid}"):
            gen.predict(gen.build(tmp_path), resume="w-0")
        assert gen.snapshot(tmp_path)["rows"] == before["rows"]
        (sync / "go").write_text("")
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    _assert_equals_reference(gen, tmp_path, reference)
