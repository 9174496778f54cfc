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


# -- sql limits and --file, compact, index ----------------------------------------------------
def test_sql_reads_the_query_from_a_file(db, tmp_path, capsys):
    query = tmp_path / "query.sql"
    query.write_text("-- blocks of alpha\nSELECT block_index, count(*) AS n\nFROM frames\n"
                     "WHERE run_id = 'alpha'\nGROUP BY 1 ORDER BY 1\n", encoding="utf-8")
    main(["memory", "sql", "--file", str(query), "--db", db, "--format", "json"])
    assert json.loads(capsys.readouterr().out) == [{"block_index": b, "n": 2} for b in range(4)]


@pytest.mark.parametrize(("args", "message"), [
    (["--file", "{tmp}/missing.sql"], "query file .*missing.sql does not exist"),
    (["--file", "{tmp}"], "is a directory"),
    (["--file", "{tmp}/empty.sql"], "is empty"),
    (["--file", "{tmp}/latin1.sql"], "not UTF-8"),
    (["SELECT 1", "--file", "{tmp}/empty.sql"], "either as an argument or with --file"),
    ([], "either as an argument or with --file"),
    (["SELECT 1", "--memory-limit", "0"], "memory limit '0' must be > 0"),
    (["SELECT 1", "--memory-limit=-5MB"], "not a size"),
    (["SELECT 1", "--threads", "0"], "threads must be an int > 0"),
    (["SELECT 1", "--timeout", "0"], "timeout must be"),
    (["SELECT 1", "--timeout", "-3"], "timeout must be"),
])
def test_sql_bad_file_or_limits_get_one_line(db, tmp_path, args, message):
    (tmp_path / "empty.sql").write_text("  \n")
    (tmp_path / "latin1.sql").write_bytes("SELECT 'café'".encode("latin-1"))
    argv = ["memory", "sql", *[a.format(tmp=tmp_path) for a in args], "--db", db]
    with pytest.raises(SystemExit, match=message) as info:
        main(argv)
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)


def test_sql_limits_are_enforced(db):
    with pytest.raises(SystemExit, match="memory limit of 4MB.*--memory-limit"):
        main(["memory", "sql", "SELECT count(DISTINCT range) FROM range(20000000)",
              "--memory-limit", "4MB", "--db", db])
    with pytest.raises(SystemExit, match="timeout of 0.2 s"):
        main(["memory", "sql", "SELECT count(*) FROM frames a, range(100000000) b, "
              "range(1000) c WHERE a.frame_index + b.range + c.range < 0",
              "--timeout", "0.2", "--threads", "1", "--db", db])


def test_compact_merges_fragments_and_keeps_rows(db, capsys):
    count = "SELECT (SELECT count(*) FROM frames) AS f, (SELECT count(*) FROM retrievals) AS q"
    main(["memory", "sql", count, "--db", db, "--format", "json"])
    before = json.loads(capsys.readouterr().out)
    main(["memory", "compact", "--keep-versions", "0", "--db", db])
    out = capsys.readouterr().out
    rows = {ln.split("│")[1].strip(): [c.strip() for c in ln.split("│")[2:-1]]
            for ln in out.splitlines() if ln.count("│") == 7}
    assert rows["frames"][:3] == ["16", "8", "1"]  # 16 rows, 8 fragments -> 1
    assert int(rows["frames"][4]) == 1 < int(rows["frames"][3])
    files = re.search(r"files: (\d+) -> (\d+)", out)
    assert files and int(files.group(2)) < int(files.group(1))
    main(["memory", "sql", count, "--db", db, "--format", "json"])
    assert json.loads(capsys.readouterr().out) == before
    with pytest.raises(SystemExit, match="--keep-versions must be >= 0"):
        main(["memory", "compact", "--keep-versions", "-1", "--db", db])


def test_index_and_search_flags(db, capsys):
    main(["memory", "index", "--db", db])
    assert "fewer than --min-rows 4096: no index built" in capsys.readouterr().out
    main(["memory", "index", "--min-rows", "8", "--db", db])
    assert "built the IVF_PQ vector index on frames.embedding (16 rows)" in capsys.readouterr().out
    main(["memory", "index", "--min-rows", "8", "--db", db])
    assert "already has a vector index" in capsys.readouterr().out
    main(["memory", "search", "--run", "beta", "--frame", "5", "-k", "3", "--db", db])
    out = capsys.readouterr().out
    assert "search: vector index, nprobes 20" in out and "beta" in out
    main(["memory", "search", "--run", "beta", "--frame", "5", "-k", "3", "--exact", "true",
          "--db", db])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "│" in ln]
    assert [c.strip() for c in lines[0].split("│")][1:4] == ["0", "beta", "5"]
    for flag in ("-k", "--nprobes", "--refine-factor"):
        with pytest.raises(SystemExit, match=f"--{flag.lstrip('-')} must be a number > 0"):
            main(["memory", "search", "--run", "beta", "--frame", "5", flag, "0", "--db", db])
    with pytest.raises(SystemExit, match="--min-rows must be a number > 0"):
        main(["memory", "index", "--min-rows", "0", "--db", db])


def test_the_help_default_of_keep_versions_is_the_store_default() -> None:
    from lrag.commands.memory import KEEP_VERSIONS_S
    from lrag.memory.store import DEFAULT_KEEP_VERSIONS

    assert KEEP_VERSIONS_S == DEFAULT_KEEP_VERSIONS.total_seconds()
