"""MemoryStore at scale on a real LanceDB: compaction, concurrent readers, vector-index recall."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from datetime import timedelta

import numpy as np
import pytest

from lrag.memory.schema import FrameRow, RetrievalRow, RunInfo, StoreError
from lrag.memory.sql import run_sql
from lrag.memory.store import MemoryStore

DIM = 8
FPB = 3


def _write_run(store: MemoryStore, run: str, blocks: int, rng: np.random.Generator) -> None:
    store.start_run(RunInfo(run, "", "tiny", {}, ["p"], 0, blocks * FPB))
    for b in range(blocks):
        frames = [FrameRow(run, FPB * b + i, b, rng.standard_normal(DIM), "s.tar", f"k{b}",
                           b"png", "avg_pool") for i in range(FPB)]
        store.add_block(run, b, frames, [RetrievalRow(run, b, FPB * b, k, k, 0.5)
                                         for k in range(2)])


def _contents(store: MemoryStore) -> dict:
    """Every row of every table, in a stable order (created timestamps included)."""
    keys = {"runs": ["run_id"], "frames": ["run_id", "frame_index"],
            "retrievals": ["run_id", "block_index", "rank"]}
    return {name: store.scan(name).sort_by([(k, "ascending") for k in cols]).to_pylist()
            for name, cols in keys.items()}


@pytest.fixture()
def written(tmp_path) -> MemoryStore:
    store = MemoryStore(tmp_path / "memory.lancedb", embedding_capacity=16)
    rng = np.random.default_rng(0)
    for run in ("a", "b"):
        _write_run(store, run, 10, rng)
    store.set_status("a", "complete")
    return store


def test_compact_keeps_every_row_and_removes_files_and_versions(written):
    before_rows = _contents(written)
    before, after = written.compact(keep_versions=timedelta(0))
    assert before.fragments["frames"] == 20 and after.fragments["frames"] == 1
    assert after.fragments["retrievals"] == 1
    assert before.versions["frames"] > 40 and after.versions["frames"] == 1
    assert before.files > 5 * after.files
    assert after.rows == before.rows == {"runs": 2, "frames": 60, "retrievals": 40}
    reopened = MemoryStore(written.uri)
    assert _contents(reopened) == before_rows
    # the store keeps working as a store: resume point, new blocks, SQL
    assert reopened.completed_blocks("b") == 10
    reopened.add_block("b", 10, [FrameRow("b", 30, 10, np.ones(DIM), "s", "k", b"",
                                          "avg_pool")])
    assert reopened.get_run("b")["frames_done"] == 31
    assert run_sql(written.uri, "SELECT count(*) AS n FROM frames")["n"].to_pylist() == [61]


def test_compact_keeps_recent_versions_for_readers_that_opened_them(written):
    snapshot = written.lance_dataset("frames")  # a reader in the middle of its work
    expected = snapshot.to_table(columns=["run_id", "frame_index"]).num_rows
    before, after = written.compact()  # default: versions younger than 5 minutes stay
    assert after.fragments["frames"] == 1 and after.versions["frames"] > before.versions["frames"]
    # the old version's files are still there: the open snapshot reads all of it
    assert snapshot.to_table(columns=["run_id", "frame_index", "embedding"]).num_rows == expected
    with pytest.raises(StoreError, match="keep_versions must be >= 0"):
        written.compact(keep_versions=timedelta(seconds=-1))


@pytest.mark.slow
def test_sql_readers_during_compaction_see_every_row(written):
    errors, counts = [], []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                counts.append(run_sql(written.uri, "SELECT count(*) AS n, sum(frame_index) AS s "
                                                   "FROM frames").to_pylist()[0])
            except Exception as err:  # noqa: BLE001 - any failure of a reader is the finding
                errors.append(err)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(3):
            written.compact()
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors and counts
    assert {(c["n"], c["s"]) for c in counts} == {(60, 2 * sum(range(30)))}


@pytest.mark.slow
def test_indexed_search_recall_at_10_against_exact(tmp_path):
    rng = np.random.default_rng(7)
    store = MemoryStore(tmp_path / "memory.lancedb", embedding_capacity=32, index_min_rows=2000)
    store.start_run(RunInfo("big", "", "tiny", {}, [], 0, 4000))
    vectors = rng.standard_normal((4000, 32)).astype(np.float32)
    for b in range(4):  # four large blocks keep the test fast
        store.add_block("big", b, [FrameRow("big", 1000 * b + i, b, vectors[1000 * b + i], "s",
                                            "k", b"", "ae:x") for i in range(1000)])
    assert not store.has_index()
    store.compact(keep_versions=timedelta(0))  # builds the index: the table is large enough
    assert store.has_index()
    indexed = {c for idx in store._open("frames").list_indices() for c in idx.columns}
    assert indexed == {"embedding", "run_id", "descriptor", "embedding_dim"}
    queries = vectors[rng.choice(4000, 40, replace=False)] + \
        0.3 * rng.standard_normal((40, 32)).astype(np.float32)
    recalls = []
    for q in queries:
        exact = {h["frame_index"] for h in store.search(q, k=10, exact=True)}
        approx = store.search(q, k=10)
        assert [h["score"] for h in approx] == sorted((h["score"] for h in approx), reverse=True)
        recalls.append(len(exact & {h["frame_index"] for h in approx}) / 10)
    assert np.mean(recalls) >= 0.95
    # exact search is the brute-force truth: cosine computed here agrees
    q = queries[0] / np.linalg.norm(queries[0])
    sims = vectors @ q / np.linalg.norm(vectors, axis=1)
    exact = store.search(queries[0], k=10, exact=True)
    assert [h["frame_index"] for h in exact] == np.argsort(-sims)[:10].tolist()


@pytest.mark.slow
def test_compaction_while_another_process_writes_loses_no_rows(tmp_path):
    uri = tmp_path / "memory.lancedb"
    MemoryStore(uri, embedding_capacity=16).start_run(RunInfo("seed", "", "tiny", {}, [], 0, 0))
    script = textwrap.dedent(f"""
        import numpy as np
        from lrag.memory.schema import FrameRow, RetrievalRow, RunInfo
        from lrag.memory.store import MemoryStore
        s = MemoryStore({str(uri)!r})
        s.start_run(RunInfo("w", "", "tiny", {{}}, [], 0, 36))
        for b in range(12):
            s.add_block("w", b, [FrameRow("w", 3 * b + i, b, np.full({DIM}, b + i + 1.0),
                                          "s", "k") for i in range(3)],
                        [RetrievalRow("w", b, 3 * b, 0, 0, 0.5)])
    """)
    writer = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    store = MemoryStore(uri)
    compactions = 0
    while writer.poll() is None:
        store.compact()
        compactions += 1
    assert writer.returncode == 0, writer.stderr.read().decode()
    store.compact(keep_versions=timedelta(0))
    assert compactions >= 1
    assert store.frames("w")["frame_index"].to_pylist() == list(range(36))
    assert store.retrievals("w").num_rows == 12 and store.completed_blocks("w") == 12
    assert store.get_run("w")["frames_done"] == 36
