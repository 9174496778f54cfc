"""``MemoryStore(read_only=True)``: the Lance datasets read without lancedb, same rows, no writes."""

from __future__ import annotations

from datetime import timedelta

import lancedb
import numpy as np
import pytest

from lrag.memory.schema import (VERSION_KEY, FrameRow, RetrievalRow, RunInfo, SchemaVersionError,
                                StoreError, frames_schema)
from lrag.memory.sql import run_sql
from lrag.memory.store import MemoryStore

CAP, FPB = 16, 3


def _store(tmp_path, blocks: int = 3) -> MemoryStore:
    store = MemoryStore(tmp_path / "memory.lancedb", embedding_capacity=CAP)
    store.start_run(RunInfo("r", "model: tiny\n", "tiny", {"b": "1"}, ["a cat"], seed=3,
                            frames_planned=blocks * FPB))
    rng = np.random.default_rng(0)
    for b in range(blocks):
        frames = [FrameRow("r", b * FPB + i, b, rng.standard_normal(8).astype(np.float32), "s.tar",
                           f"r/{b}", b"\x89PNG" + bytes([i])) for i in range(FPB)]
        store.add_block("r", b, frames, [RetrievalRow("r", b, b * FPB, 0, 0, 0.5 + b / 10)])
    store.set_status("r", "complete")
    return store


def test_read_only_reads_the_same_rows(tmp_path) -> None:
    writer = _store(tmp_path)
    reader = MemoryStore(tmp_path / "memory.lancedb", read_only=True)
    assert reader.list_runs() == writer.list_runs()
    assert reader.get_run("r")["status"] == "complete" and reader.get_run("nope") is None
    assert reader.frames("r").equals(writer.frames("r"))
    assert reader.retrievals("r").equals(writer.retrievals("r"))
    assert reader.completed_blocks("r") == 3
    assert reader.embedding_capacity == CAP
    # run_sql reads through the read-only store: the rows written last are there.
    assert run_sql(tmp_path / "memory.lancedb", "SELECT count(*) AS n FROM frames").to_pylist() == [{"n": 9}]


def test_read_only_sees_later_commits_on_open(tmp_path) -> None:
    writer = _store(tmp_path, blocks=1)
    writer.set_status("r", "failed")
    assert MemoryStore(tmp_path / "memory.lancedb", read_only=True).get_run("r")["status"] == "failed"


def test_read_only_refuses_writes_and_search(tmp_path) -> None:
    _store(tmp_path, blocks=1)
    reader = MemoryStore(tmp_path / "memory.lancedb", read_only=True)
    for call in (lambda: reader.set_status("r", "failed"),
                 lambda: reader.start_run(RunInfo("s", "", "tiny")),
                 lambda: reader.compact(timedelta(0)),
                 lambda: reader.ensure_index(),
                 lambda: reader.search(np.ones(8, np.float32))):
        with pytest.raises(StoreError, match="read-only"):
            call()


def test_read_only_empty_and_versioned_stores(tmp_path) -> None:
    empty = MemoryStore(tmp_path / "none.lancedb", read_only=True)
    assert empty.list_runs() == [] and empty.frames("x").num_rows == 0
    db = lancedb.connect(tmp_path / "memory.lancedb")
    db.create_table("frames", schema=frames_schema(8).with_metadata({VERSION_KEY: b"99"}))
    with pytest.raises(SchemaVersionError, match="upgrade lrag"):
        MemoryStore(tmp_path / "memory.lancedb", read_only=True).frames("x")
