"""Read-only SQL over a real LanceDB store: joins, arrays, and every write/file access refused."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from lrag.memory.schema import FrameRow, RetrievalRow, RunInfo
from lrag.memory.sql import (
    LanceScan,
    SQLError,
    SQLLimitError,
    SQLLimits,
    SQLRefusedError,
    check_read_only,
    parse_size,
    run_sql,
)
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


# -- lazy scans, limits -----------------------------------------------------------------------
def _copy_sql(uri, query: str):
    """The former engine: whole tables copied into Arrow, then queried (the reference)."""
    store = MemoryStore(uri)
    con = duckdb.connect(":memory:")
    for name in ("runs", "frames", "retrievals"):
        con.register(name, store.scan(name))
    return con.sql(query).to_arrow_table()


@pytest.fixture(scope="module")
def bigger(tmp_path_factory):
    """Three runs written block by block, so tables have many fragments (read-only tests)."""
    uri = tmp_path_factory.mktemp("bigger") / "memory.lancedb"
    store = MemoryStore(uri, embedding_capacity=CAP)
    rng = np.random.default_rng(0)
    for run in ("a", "b", "c"):
        store.start_run(RunInfo(run, "", "tiny", {}, ["p"], 0, 24))
        for b in range(8):
            frames = [FrameRow(run, 3 * b + i, b, rng.standard_normal(DIM), "s.tar", f"k{b}",
                               descriptor="avg_pool") for i in range(3)]
            retr = [RetrievalRow(run, b, 3 * b, k, int(rng.integers(0, 3 * b + 1)),
                                 float(rng.random())) for k in range(4)]
            store.add_block(run, b, frames, retr)
    store.set_status("b", "complete")
    return uri


@pytest.mark.parametrize("query", [
    "SELECT run_id, block_index, count(*) AS n, avg(score) AS s FROM retrievals "
    "WHERE run_id = 'b' AND rank < 2 GROUP BY ALL ORDER BY ALL",
    "SELECT u.status, f.block_index, avg(r.score) AS s, count(*) AS n FROM retrievals r "
    "JOIN frames f ON f.run_id = r.run_id AND f.frame_index = r.retrieved_frame "
    "JOIN runs u ON u.run_id = r.run_id WHERE r.rank = 0 GROUP BY ALL ORDER BY ALL",
    "SELECT run_id, max(frame_index) AS last, sum(embedding[1]) AS e FROM frames "
    "WHERE created > TIMESTAMP '2000-01-01' AND descriptor = 'avg_pool' GROUP BY 1 ORDER BY 1",
    "SELECT f.run_id, f.frame_index FROM frames f WHERE f.block_index IN (1, 5) "
    "AND f.run_id <> 'a' AND f.key LIKE 'k%' ORDER BY 1, 2",
])
def test_lazy_scans_give_the_copy_results(bigger, query):
    lazy = run_sql(bigger, query)
    assert lazy.num_rows > 0
    assert lazy.to_pylist() == _copy_sql(bigger, query).to_pylist()


def test_scans_read_only_the_columns_and_rows_asked_for(bigger):
    calls = []

    class Recording(LanceScan):
        def scanner(self, columns=None, filter=None, **kwargs):
            calls.append((columns, str(filter)))
            return super().scanner(columns, filter, **kwargs)

    store = MemoryStore(bigger)
    con = duckdb.connect(":memory:", config=SQLLimits().engine_config())
    con.register("retrievals", Recording(store.lance_dataset("retrievals"), 2**24, 2))
    rows = con.sql("SELECT avg(score) FROM retrievals WHERE run_id = 'b' AND rank = 0").fetchall()
    assert rows[0][0] == pytest.approx(
        _copy_sql(bigger, "SELECT avg(score) AS s FROM retrievals WHERE run_id = 'b' AND rank = 0")
        ["s"][0].as_py())
    (columns, pushed), = calls
    assert set(columns) <= {"score", "run_id", "rank"} and "block_index" not in columns
    assert "run_id" in pushed and "rank" in pushed  # the filter reached Lance


def test_memory_limit_and_timeout_stop_the_query(bigger):
    with pytest.raises(SQLLimitError, match="memory limit of 4MB.*--memory-limit"):
        run_sql(bigger, "SELECT count(DISTINCT range) AS n FROM range(20000000)",
                SQLLimits(memory_limit="4MB"))
    slow = ("SELECT count(*) AS n FROM retrievals a, retrievals b, range(100000000) c "
            "WHERE a.score + b.score + c.range < 0")
    with pytest.raises(SQLLimitError, match="timeout of 0.3 s.*--timeout"):
        run_sql(bigger, slow, SQLLimits(timeout_s=0.3))
    ok = run_sql(bigger, "SELECT count(*) AS n FROM frames", SQLLimits("64MB", 1, 30))
    assert ok["n"].to_pylist() == [72]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"memory_limit": "0MB"}, "must be > 0"),
    ({"memory_limit": "-1GB"}, "not a size"),
    ({"memory_limit": "lots"}, "not a size"),
    ({"memory_limit": "5 parsecs"}, "not a size"),
    ({"threads": 0}, "threads must be an int > 0"),
    ({"threads": -2}, "threads must be an int > 0"),
    ({"timeout_s": 0}, "timeout must be"),
    ({"timeout_s": -1.0}, "timeout must be"),
    ({"timeout_s": float("nan")}, "timeout must be"),
])
def test_limits_that_make_no_sense_are_refused(kwargs, message):
    with pytest.raises(SQLLimitError, match=message):
        SQLLimits(**kwargs)


def test_sizes_parse_with_units():
    assert parse_size("512MB") == 512 * 10**6 and parse_size("2GiB") == 2 * 2**30
    assert parse_size(100) == 100 * 2**20 and parse_size(" 1.5 gb ") == 1_500_000_000
