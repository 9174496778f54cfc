"""`lrag memory ...` end to end through lrag.cli.main on a real LanceDB store."""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from lrag.cli import main
from lrag.commands.memory import SQL_EXAMPLES
from lrag.memory.schema import FrameRow, RetrievalRow, RunInfo
from lrag.memory.store import MemoryStore

DIM = 6
CAP = 16  # raw padded width; SQL slices back to embedding_dim
JOIN = ("SELECT r.block_index, r.rank, f.block_index AS src_block, u.backbone, "
        "f.embedding[1:f.embedding_dim] AS embedding "
        "FROM retrievals r JOIN frames f ON f.run_id = r.run_id "
        "AND f.frame_index = r.retrieved_frame JOIN runs u ON u.run_id = r.run_id "
        "ORDER BY r.block_index, r.rank")


@pytest.fixture()
def db(tmp_path) -> str:
    uri = tmp_path / "runs" / "memory.lancedb"
    store = MemoryStore(uri, embedding_capacity=CAP)
    rng = np.random.default_rng(3)
    for run in ("alpha", "beta"):
        store.start_run(RunInfo(run, "seed: 1\n", "tiny", {"tiny": "f00d"}, ["a red ball"], 1, 8))
        for b in range(4):
            frames = [FrameRow(run, 2 * b + i, b, rng.standard_normal(DIM), "x.tar", "k", b"png")
                      for i in range(2)]
            retr = [RetrievalRow(run, b, 2 * b, rank, rank, 0.9 - rank / 10)
                    for rank in range(2 if b else 0)]
            store.add_block(run, b, frames, retr)
    store.set_status("alpha", "complete")
    return str(uri)


def test_sql_join_as_table(db, capsys):
    main(["memory", "sql", "SELECT run_id, count(*) AS n FROM frames GROUP BY run_id "
          "ORDER BY run_id", "--db", db])
    out = capsys.readouterr().out
    assert "alpha" in out and "beta" in out and "2 rows" in out and "8" in out


def test_sql_csv_json_parquet_read_back(db, tmp_path, capsys):
    main(["memory", "sql", JOIN, "--db", db, "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 2 * 3 * 2  # runs x blocks with retrievals x ranks
    assert rows[0]["backbone"] == "tiny" and rows[0]["src_block"] == "0"
    assert len(json.loads(rows[0]["embedding"])) == DIM

    out_json = tmp_path / "out.json"
    main(["memory", "sql", JOIN, "--db", db, "--format", "json", "--output", str(out_json)])
    assert f"wrote 12 rows to {out_json}" in capsys.readouterr().out
    records = json.loads(out_json.read_text())
    assert [r["rank"] for r in records[:2]] == [0, 0] and len(records[0]["embedding"]) == DIM

    out_pq = tmp_path / "out.parquet"
    main(["memory", "sql", JOIN, "--db", db, "--format", "parquet", "--output", str(out_pq)])
    table = pq.read_table(out_pq)
    assert table.num_rows == 12 and table["block_index"].to_pylist()[:4] == [1, 1, 1, 1]
    assert len(table["embedding"][0].as_py()) == DIM


def test_parquet_needs_output(db):
    with pytest.raises(SystemExit, match="add --output FILE"):
        main(["memory", "sql", "SELECT 1", "--db", db, "--format", "parquet"])


@pytest.mark.parametrize("query", [
    "DROP TABLE frames", "INSERT INTO runs SELECT * FROM runs", "UPDATE runs SET seed = 0",
    "DELETE FROM frames", "ATTACH 'x.db'", "COPY frames TO 'x.csv'",
    "SELECT * FROM read_csv('/etc/passwd')", "CREATE TABLE t (x INT)",
])
def test_sql_refuses_writes_and_file_access(db, query, capsys):
    count = "SELECT (SELECT count(*) FROM frames) AS f, (SELECT count(*) FROM runs) AS r, " \
            "(SELECT sum(seed) FROM runs) AS s, (SELECT count(*) FROM retrievals) AS q"
    main(["memory", "sql", count, "--db", db, "--format", "json"])
    before = json.loads(capsys.readouterr().out)
    with pytest.raises(SystemExit, match="refused.*read-only SELECT"):
        main(["memory", "sql", query, "--db", db])
    main(["memory", "sql", count, "--db", db, "--format", "json"])
    assert json.loads(capsys.readouterr().out) == before == [{"f": 16, "r": 2, "s": 2, "q": 12}]


def test_runs_lists_every_run(db, capsys):
    main(["memory", "runs", "--db", db])
    out = capsys.readouterr().out
    assert "alpha" in out and "complete" in out and "beta" in out and "running" in out
    assert "8/8" in out


def test_show_summary_counts_and_plot(db, tmp_path, capsys):
    plot = tmp_path / "runs" / "alpha" / "retrievals.png"
    plot.parent.mkdir(parents=True)
    plot.write_bytes(b"\x89PNG")
    main(["memory", "show", "alpha", "--db", db])
    out = capsys.readouterr().out
    assert "retrievals.png" in out and "f00d" in out and "most retrieved frames" in out
    assert "retrieval rows" in out and "complete blocks" in out
    main(["memory", "show", "beta", "--db", db])
    assert "(none)" in capsys.readouterr().out


def test_search_finds_the_frame_itself_first(db, capsys):
    main(["memory", "search", "--run", "beta", "--frame", "5", "-k", "3", "--db", db])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "│" in ln]
    first = [c.strip() for c in lines[0].split("│")]
    assert first[1:5] == ["0", "beta", "5", "2"] and first[5] == "1"
    assert len(lines) == 3


def test_errors_name_the_thing_and_the_fix(db, tmp_path):
    with pytest.raises(SystemExit, match="unknown run 'gamma'.*lrag memory runs"):
        main(["memory", "show", "gamma", "--db", db])
    with pytest.raises(SystemExit, match="no frame 99.*pick --frame"):
        main(["memory", "search", "--run", "alpha", "--frame", "99", "--db", db])
    missing = str(tmp_path / "nowhere.lancedb")
    with pytest.raises(SystemExit, match="no memory store at .*nowhere.lancedb.*--db"):
        main(["memory", "runs", "--db", missing])


def test_search_only_lists_frames_of_the_same_descriptor(db, capsys):
    store = MemoryStore(db)
    store.start_run(RunInfo("wide", "", "tiny", {}, [], 1, 2))
    store.add_block("wide", 0, [FrameRow("wide", i, 0, np.ones(CAP, np.float32) * (i + 1), "x",
                                         "k", descriptor="ae:0000aaaa1111") for i in range(2)])
    main(["memory", "search", "--run", "alpha", "--frame", "0", "-k", "50", "--db", db])
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long titles
    assert f"16 nearest frames to alpha frame 0 (unspecified, {DIM} dims)" in out
    assert "wide" not in out
    main(["memory", "search", "--run", "wide", "--frame", "1", "-k", "50", "--db", db])
    out = " ".join(capsys.readouterr().out.split())
    assert f"2 nearest frames to wide frame 1 (ae:0000aaaa1111, {CAP} dims)" in out
    assert "alpha" not in out and "beta" not in out


def test_sql_help_examples_run(db, capsys):
    examples = re.findall(r'lrag memory sql "(.*?)"', SQL_EXAMPLES, flags=re.DOTALL)
    assert len(examples) >= 4
    for query in examples:
        main(["memory", "sql", query.replace("'RUN'", "'alpha'").replace("= 12", "= 3"),
              "--db", db, "--format", "json"])
        rows = json.loads(capsys.readouterr().out)
        assert rows, query
        if "vec" in rows[0]:
            assert {len(r["vec"]) for r in rows} == {DIM}
