"""Read-only SQL over a real LanceDB store: joins, arrays, and every write/file access refused."""

from __future__ import annotations

import numpy as np
import pytest

from lrag.memory.sql import SQLError, SQLRefusedError, check_read_only, run_sql
from lrag.memory.schema import FrameRow, RetrievalRow, RunInfo
from lrag.memory.store import MemoryStore

DIM = 4
CAP = 8  # store capacity: DIM-dim rows are zero-padded to CAP in the raw column


@pytest.fixture()
def uri(tmp_path):
    uri = tmp_path / "memory.lancedb"
    store = MemoryStore(uri, embedding_capacity=CAP)
    store.start_run(RunInfo("r1", "a: 1\n", "tiny", {}, ["p"], 0, 6))
    for b in range(3):
        frames = [FrameRow("r1", 2 * b + i, b, np.eye(DIM, dtype=np.float32)[(2 * b + i) % DIM],
                           "s.tar", f"k{b}", descriptor="avg_pool") for i in range(2)]
        retr = [RetrievalRow("r1", b, 2 * b, 0, 0, 0.75)] if b else []
        store.add_block("r1", b, frames, retr)
    return uri


def _snapshot(uri) -> dict:
    store = MemoryStore(uri)
    return {
        "runs": store.list_runs(),
        "frames": store.frames("r1").to_pylist(),
        "retrievals": store.retrievals("r1").to_pylist(),
    }


def test_join_across_tables(uri):
    result = run_sql(uri, """
        SELECT r.block_index, r.retrieved_frame, f.block_index AS source_block, u.backbone
        FROM retrievals r
        JOIN frames f ON f.run_id = r.run_id AND f.frame_index = r.retrieved_frame
        JOIN runs u ON u.run_id = r.run_id
        ORDER BY r.block_index
    """)
    assert result.to_pydict() == {
        "block_index": [1, 2], "retrieved_frame": [0, 0], "source_block": [0, 0],
        "backbone": ["tiny", "tiny"],
    }


def test_embeddings_are_queryable(uri):
    result = run_sql(uri, """
        WITH q AS (SELECT embedding FROM frames WHERE frame_index = 1)
        SELECT f.frame_index, array_cosine_similarity(f.embedding, q.embedding) AS sim
        FROM frames f, q ORDER BY sim DESC, f.frame_index LIMIT 2
    """)
    assert result["frame_index"].to_pylist() == [1, 5]  # one-hot rows repeat every DIM frames
    assert result["sim"].to_pylist() == pytest.approx([1.0, 1.0])


def test_padded_embeddings_slice_back_per_descriptor(uri):
    store = MemoryStore(uri)
    store.start_run(RunInfo("r2", "", "tiny", {}, [], 0, 2))
    store.add_block("r2", 0, [FrameRow("r2", i, 0, np.full(CAP, i + 1.0, np.float32), "s", "k",
                                       descriptor="ae:abc") for i in range(2)])
    result = run_sql(uri, """
        SELECT run_id, embedding_dim, descriptor, embedding[1:embedding_dim] AS vec,
               len(embedding) AS stored
        FROM frames WHERE frame_index = 1 ORDER BY run_id
    """).to_pylist()
    assert [(r["run_id"], r["embedding_dim"], r["descriptor"], r["stored"]) for r in result] == [
        ("r1", DIM, "avg_pool", CAP), ("r2", CAP, "ae:abc", CAP)]
    assert result[0]["vec"] == [0.0, 1.0, 0.0, 0.0] and result[1]["vec"] == [2.0] * CAP
    same_space = run_sql(uri, """
        WITH q AS (SELECT embedding, embedding_dim, descriptor FROM frames
                   WHERE run_id = 'r2' AND frame_index = 0)
        SELECT f.run_id, f.frame_index FROM frames f JOIN q
          ON f.embedding_dim = q.embedding_dim AND f.descriptor = q.descriptor
        ORDER BY array_cosine_similarity(f.embedding, q.embedding) DESC, f.frame_index
    """)
    assert set(same_space["run_id"].to_pylist()) == {"r2"} and same_space.num_rows == 2


@pytest.mark.parametrize(("query", "refused"), [
    ("DROP TABLE frames", "DROP"),
    ("INSERT INTO frames SELECT * FROM frames", "INSERT"),
    ("UPDATE runs SET status = 'failed'", "UPDATE"),
    ("DELETE FROM retrievals", "DELETE"),
    ("ATTACH '/tmp/other.db' AS other", "ATTACH"),
    ("COPY frames TO 'out.csv'", "COPY"),
    ("CREATE TABLE x AS SELECT * FROM runs", "CREATE"),
    ("ALTER TABLE runs ADD COLUMN x INT", "ALTER"),
    ("PRAGMA database_list", "PRAGMA"),
    ("SET threads = 1", "SET"),
    ("INSTALL httpfs", "LOAD"),
    ("SELECT 1; DROP TABLE frames", "2 statements"),
    ("WITH x AS (SELECT 1) DELETE FROM runs", "DELETE"),
    ("SELECT * FROM read_csv('/etc/passwd')", "access files"),
    ("SELECT * FROM read_text('/etc/hostname')", "access files"),
])
def test_forbidden_statements_are_refused_and_change_nothing(uri, query, refused):
    before = _snapshot(uri)
    with pytest.raises(SQLRefusedError, match=refused) as info:
        run_sql(uri, query)
    assert "read-only SELECT" in str(info.value)
    assert _snapshot(uri) == before
    assert run_sql(uri, "SELECT count(*) AS n FROM frames")["n"].to_pylist() == [6]


def test_check_read_only_accepts_select_and_with():
    assert check_read_only("SELECT 1") == "SELECT 1"
    assert check_read_only("WITH a AS (SELECT 1) SELECT * FROM a").startswith("WITH")


def test_bad_sql_and_missing_store(uri, tmp_path):
    with pytest.raises(SQLError, match="parse"):
        run_sql(uri, "SELEC 1")
    with pytest.raises(SQLError, match="nope"):
        run_sql(uri, "SELECT nope FROM runs")
    with pytest.raises(FileNotFoundError, match="no memory store at .*missing.*--db"):
        run_sql(tmp_path / "missing", "SELECT 1")


def test_tables_never_written_are_empty_not_missing(tmp_path):
    uri = tmp_path / "memory.lancedb"
    MemoryStore(uri, embedding_capacity=CAP).start_run(RunInfo("r", "", "tiny", {}, [], 0, 1))
    assert run_sql(uri, "SELECT count(*) AS n FROM retrievals")["n"].to_pylist() == [0]
