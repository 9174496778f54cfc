"""The run counter never disagrees with the rows: a crash between a block's rows and its counter."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from lrag.memory.schema import FrameRow, RunInfo
from lrag.memory.store import MemoryStore


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, no ``except Exception`` catches it."""


def _rows(block: int) -> list[FrameRow]:
    return [FrameRow("r-0", block * 3 + i, block, np.full(4, block + i, np.float32), "s", "k")
            for i in range(3)]


def test_frames_done_follows_the_rows_when_the_counter_update_dies(tmp_path, monkeypatch):
    store = MemoryStore(tmp_path / "db")
    store.start_run(RunInfo("r-0", "{}", "tiny", frames_planned=9))
    store.add_block("r-0", 0, _rows(0))
    store.add_block("r-0", 1, _rows(1))
    original = MemoryStore._open

    def _open(self, name):  # the counter update is add_block's only use of the runs table
        if name == "runs" and inspect.stack()[1].function == "add_block":
            raise Killed
        return original(self, name)

    monkeypatch.setattr(MemoryStore, "_open", _open)
    with pytest.raises(Killed):
        store.add_block("r-0", 2, _rows(2))
    monkeypatch.undo()
    reopened = MemoryStore(tmp_path / "db")
    assert reopened.completed_blocks("r-0") == 3
    assert reopened.get_run("r-0")["frames_done"] == 9
    assert [r["frames_done"] for r in reopened.list_runs()] == [9]
    reopened.set_status("r-0", "complete")  # the stored column is repaired with the status
    assert reopened.scan("runs")["frames_done"].to_pylist() == [9]
