"""MemoryStore on a real LanceDB in tmp_path: schemas, block writes, resume, search, index."""

from __future__ import annotations

import json

import subprocess
import sys
import textwrap

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lrag.memory.schema import (
    DEFAULT_EMBEDDING_CAPACITY,
    RUNS_SCHEMA,
    SCHEMA_VERSION,
    UNSPECIFIED_DESCRIPTOR,
    VERSION_KEY,
    frames_schema,
)
from lrag.memory.schema import FrameRow, RetrievalRow, RunInfo, SchemaVersionError, StoreError
from lrag.memory.store import MemoryStore

DIM = 8
CAP = 16  # small store capacity keeps the tests fast; DIM rows are zero-padded to it
FPB = 3  # frames per block


def _info(run_id: str, frames: int = 12) -> RunInfo:
    return RunInfo(run_id, "model: tiny\n", "tiny", {"backbone": "abc123"}, ["a cat", "a dog"],
                   seed=7, frames_planned=frames)


def _block(run_id: str, block: int, rng: np.random.Generator, retrieve: int = 2,
           dim: int = DIM, descriptor: str = UNSPECIFIED_DESCRIPTOR):
    frames = [
        FrameRow(run_id, block * FPB + i, block, rng.standard_normal(dim).astype(np.float32),
                 f"latents-{block:03d}.tar", f"{run_id}/{block}", b"\x89PNG" + bytes([i]),
                 descriptor)
        for i in range(FPB)
    ]
    retrievals = [
        RetrievalRow(run_id, block, block * FPB, rank, rank, 0.9 - 0.1 * rank)
        for rank in range(retrieve if block > 0 else 0)
    ]
    return frames, retrievals


def _store_with_blocks(tmp_path, blocks: int, run_id: str = "run-a") -> MemoryStore:
    store = MemoryStore(tmp_path / "memory.lancedb", embedding_capacity=CAP)
    store.start_run(_info(run_id))
    rng = np.random.default_rng(0)
    for b in range(blocks):
        store.add_block(run_id, b, *_block(run_id, b, rng))
    return store


def test_schema_round_trip(tmp_path):
    store = _store_with_blocks(tmp_path, 2)
    reopened = MemoryStore(tmp_path / "memory.lancedb")
    run = reopened.get_run("run-a")
    assert run["checkpoint_hashes"] == {"backbone": "abc123"}
    assert run["prompts"] == ["a cat", "a dog"]
    assert (run["seed"], run["frames_planned"], run["frames_done"]) == (7, 12, 2 * FPB)
    assert run["status"] == "running" and run["schema_version"] == SCHEMA_VERSION
    assert run["created"].tzinfo is not None
    frames = reopened.frames("run-a")
    assert frames.schema.field("embedding").type == pa.list_(pa.float32(), DIM)
    assert frames["frame_index"].to_pylist() == list(range(2 * FPB))
    assert frames["preview_png"][1].as_py() == b"\x89PNG\x01"
    assert frames["shard"][3].as_py() == "latents-001.tar"
    expected = _block("run-a", 0, np.random.default_rng(0))[0][0].embedding
    np.testing.assert_array_equal(np.asarray(frames["embedding"][0].as_py(), np.float32), expected)
    retr = reopened.retrievals("run-a")
    assert retr["rank"].to_pylist() == [0, 1] and retr["block_index"].to_pylist() == [1, 1]
    assert frames["embedding_dim"].to_pylist() == [DIM] * 2 * FPB
    assert set(frames["descriptor"].to_pylist()) == {UNSPECIFIED_DESCRIPTOR}
    raw = reopened.scan("frames", None, ["embedding"])["embedding"]
    assert raw.type == pa.list_(pa.float32(), CAP)  # on disk: zero-padded to the capacity
    assert not np.asarray(raw[0].as_py())[DIM:].any()
    assert reopened.embedding_capacity == CAP and store.list_runs()[0]["run_id"] == "run-a"


def test_status_and_unknown_run(tmp_path):
    store = _store_with_blocks(tmp_path, 1)
    store.set_status("run-a", "complete")
    assert store.get_run("run-a")["status"] == "complete"
    assert store.get_run("nope") is None
    with pytest.raises(StoreError, match="unknown run 'nope'"):
        store.add_block("nope", 0, *_block("nope", 0, np.random.default_rng(0)))
    with pytest.raises(StoreError, match="not one of"):
        store.set_status("run-a", "done")
    with pytest.raises(StoreError, match="already exists"):
        store.start_run(_info("run-a"))


def test_prompt_schedule_round_trips_and_defaults_to_empty(tmp_path):
    store = _store_with_blocks(tmp_path, 0)
    schedule = [{"frame": 0, "prompt": "a cat"}, {"frame": 6, "prompt": "a dog"}]
    store.start_run(RunInfo("run-b", "", "tiny", {}, ["a cat", "a dog"], 1, 12, prompt_schedule=schedule))
    assert store.get_run("run-b")["prompt_schedule"] == schedule
    assert store.get_run("run-a")["prompt_schedule"] == []
    raw = store.scan("runs", "run_id = 'run-b'", ["prompt_schedule"]).column(0).to_pylist()[0]
    assert json.loads(raw) == schedule  # plain JSON text, readable from `lrag memory sql`


def test_default_capacity_and_existing_capacity_wins(tmp_path):
    store = MemoryStore(tmp_path / "memory.lancedb")
    store.start_run(_info("run-a"))
    store.add_block("run-a", 0, *_block("run-a", 0, np.random.default_rng(0)))
    assert store.embedding_capacity == DEFAULT_EMBEDDING_CAPACITY
    again = MemoryStore(tmp_path / "memory.lancedb", embedding_capacity=CAP)
    assert again.frames("run-a")["embedding"].type == pa.list_(pa.float32(), DIM)
    assert again.embedding_capacity == DEFAULT_EMBEDDING_CAPACITY


def test_runs_of_different_descriptor_sizes_share_one_store(tmp_path):
    store = MemoryStore(tmp_path / "memory.lancedb", embedding_capacity=64)
    rng = np.random.default_rng(3)
    written = {}
    for run, dim, desc in (("pool", 16, "avg_pool"), ("ae", 64, "ae:0123456789ab")):
        store.start_run(_info(run))
        written[run] = [_block(run, b, rng, dim=dim, descriptor=desc) for b in range(3)]
        for b, (frames, retr) in enumerate(written[run]):
            store.add_block(run, b, frames, retr)
    reopened = MemoryStore(tmp_path / "memory.lancedb")
    for run, dim in (("pool", 16), ("ae", 64)):
        frames = reopened.frames(run)
        expected = np.stack([r.embedding for blk, _ in written[run] for r in blk])
        np.testing.assert_array_equal(np.stack(frames["embedding"].to_pylist()), expected)
        assert frames.schema.field("embedding").type == pa.list_(pa.float32(), dim)
        assert reopened.completed_blocks(run) == 3
        hits = reopened.search(expected[4], k=50)
        assert {(h["run_id"], h["embedding_dim"]) for h in hits} == {(run, dim)}
        assert len(hits) == 3 * FPB and hits[0]["frame_index"] == 4
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_search_never_mixes_descriptors_of_one_size(tmp_path):
    store = MemoryStore(tmp_path / "memory.lancedb", embedding_capacity=CAP)
    rng = np.random.default_rng(4)
    for run, desc in (("pool", "avg_pool"), ("ae", "ae:feedbeef0000")):
        store.start_run(_info(run))
        store.add_block(run, 0, *_block(run, 0, rng, descriptor=desc))
    query = store.frames("pool")["embedding"][1].as_py()
    with pytest.raises(StoreError, match=r"descriptors \['ae:feedbeef0000', 'avg_pool'\]"):
        store.search(query, k=10)
    hits = store.search(query, k=10, descriptor="avg_pool")
    assert {h["descriptor"] for h in hits} == {"avg_pool"} and len(hits) == FPB
    assert hits[0]["frame_index"] == 1
    assert store.search(np.ones(3), k=5) == []  # no 3-dim frames: nothing comparable


def test_capacity_overflow_and_mixed_runs_are_refused(tmp_path):
    store = _store_with_blocks(tmp_path, 1)
    store.start_run(_info("big"))
    rows, _ = _block("big", 0, np.random.default_rng(0), dim=CAP + 1)
    with pytest.raises(StoreError, match=f"17-dim embeddings.*at most {CAP} dims.*>= 17"):
        store.add_block("big", 0, rows, [])
    with pytest.raises(StoreError, match=f"search vector has 17 dims.*1 to {CAP}"):
        store.search(np.ones(CAP + 1), k=1)
    later, _ = _block("run-a", 1, np.random.default_rng(0), descriptor="avg_pool")
    with pytest.raises(StoreError, match="written with 'unspecified'.*block 1 has 'avg_pool'"):
        store.add_block("run-a", 1, later, [])
    mixed = _block("run-a", 1, np.random.default_rng(0))[0][:1] + later[1:]
    with pytest.raises(StoreError, match="mix embedding sizes/descriptors"):
        store.add_block("run-a", 1, mixed, [])
    assert store.completed_blocks("run-a") == 1 and store.completed_blocks("big") == 0


def test_v1_store_is_refused_with_a_way_out(tmp_path):
    db = lancedb.connect(tmp_path / "memory.lancedb")
    db.create_table("runs", schema=RUNS_SCHEMA.with_metadata({VERSION_KEY: b"1"}))
    with pytest.raises(SchemaVersionError, match="schema version 1.*older lrag.*--db NEW"):
        MemoryStore(tmp_path / "memory.lancedb").list_runs()


def test_newer_schema_version_is_refused(tmp_path):
    db = lancedb.connect(tmp_path / "memory.lancedb")
    schema = frames_schema(DIM).with_metadata({VERSION_KEY: b"99"})
    db.create_table("frames", schema=schema)
    with pytest.raises(SchemaVersionError, match="schema version b'99'.*upgrade lrag"):
        MemoryStore(tmp_path / "memory.lancedb").frames("x")


def test_interrupted_run_keeps_finished_blocks(tmp_path):
    uri = tmp_path / "memory.lancedb"
    # A real process that dies (no cleanup, no status change) after three blocks.
    script = textwrap.dedent(f"""
        import os, numpy as np
        from lrag.memory.store import MemoryStore, FrameRow, RunInfo
        s = MemoryStore({str(uri)!r}, embedding_capacity={CAP})
        s.start_run(RunInfo("run-a", "", "tiny", {{}}, [], 0, 12))
        for b in range(3):
            s.add_block("run-a", b, [FrameRow("run-a", b * {FPB} + i, b,
                        np.ones({DIM}, np.float32), "s", "k") for i in range({FPB})], [])
        os._exit(9)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()
    store = MemoryStore(uri)
    assert store.get_run("run-a")["status"] == "running"
    assert store.completed_blocks("run-a") == 3
    assert store.frames("run-a").num_rows == 3 * FPB


def test_crash_between_appends_and_idempotent_rewrite(tmp_path):
    store = _store_with_blocks(tmp_path, 3)
    rng = np.random.default_rng(1)
    frames3, retr3 = _block("run-a", 3, rng)
    # Died after appending block 3's retrievals but before its frames: block 3 is not done.
    db = lancedb.connect(tmp_path / "memory.lancedb")
    db.open_table("retrievals").add(pa.Table.from_pylist(
        [dict(r.__dict__) for r in retr3], schema=db.open_table("retrievals").schema))
    assert store.completed_blocks("run-a") == 3
    store.add_block("run-a", 3, frames3, retr3)  # resume rewrites the block
    store.add_block("run-a", 3, frames3, retr3)  # and rewriting again changes nothing
    assert store.completed_blocks("run-a") == 4
    retr = store.retrievals("run-a")
    assert retr.filter(pc.equal(retr["block_index"], 3)).num_rows == len(retr3)
    assert store.frames("run-a").num_rows == 4 * FPB
    assert store.get_run("run-a")["frames_done"] == 4 * FPB


def test_completed_blocks_stops_at_a_gap(tmp_path):
    store = _store_with_blocks(tmp_path, 2)
    store.add_block("run-a", 3, *_block("run-a", 3, np.random.default_rng(2)))
    assert store.completed_blocks("run-a") == 2
    assert store.completed_blocks("other") == 0


def test_rows_of_another_block_are_refused(tmp_path):
    store = _store_with_blocks(tmp_path, 1)
    frames, _ = _block("run-a", 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="block 1.*add_block\\(run 'run-a', block 2\\)"):
        store.add_block("run-a", 2, frames, [])


def test_search_returns_the_frame_itself_first(tmp_path):
    store = _store_with_blocks(tmp_path, 4)
    store.start_run(_info("run-b"))
    rng = np.random.default_rng(5)
    for b in range(2):
        store.add_block("run-b", b, *_block("run-b", b, rng))
    frames = store.frames("run-b")
    query = np.asarray(frames["embedding"][4].as_py(), np.float32)
    hits = store.search(query, k=5)
    assert (hits[0]["run_id"], hits[0]["frame_index"]) == ("run-b", 4)
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert {h["run_id"] for h in store.search(query, k=20, run_id="run-a")} == {"run-a"}


def test_vector_index_built_above_threshold(tmp_path):
    store = MemoryStore(tmp_path / "memory.lancedb", embedding_capacity=CAP, index_min_rows=300)
    store.start_run(_info("big", frames=320))
    rng = np.random.default_rng(0)
    for b in range(5):
        rows = [FrameRow("big", b * 64 + i, b, rng.standard_normal(DIM), "s", "k")
                for i in range(64)]
        store.add_block("big", b, rows, [])
        if b == 3:
            assert not store.ensure_index() and not store.has_index()  # 256 rows < 300
    store.set_status("big", "complete")
    assert store.has_index()
    store.start_run(_info("small"))
    store.add_block("small", 0, *_block("small", 0, rng, dim=4, descriptor="avg_pool"))
    emb = np.stack(store.frames("big")["embedding"].to_pylist())
    for i in (0, 77, 319):
        hits = store.search(emb[i], k=400)
        assert hits[0]["frame_index"] == i and {h["run_id"] for h in hits} == {"big"}
    small = store.frames("small")["embedding"][2].as_py()
    hits = store.search(small, k=400)
    assert [(h["run_id"], h["frame_index"]) for h in hits][:1] == [("small", 2)]
    assert len(hits) == FPB and {h["embedding_dim"] for h in hits} == {4}


def test_two_processes_appending_lose_no_rows(tmp_path):
    uri = tmp_path / "memory.lancedb"
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from lrag.memory.store import MemoryStore, FrameRow, RetrievalRow, RunInfo
        run = sys.argv[1]
        s = MemoryStore({str(uri)!r}, embedding_capacity={CAP})
        s.start_run(RunInfo(run, "", "tiny", {{}}, [], 0, 60))
        for b in range(20):
            s.add_block(run, b, [FrameRow(run, b * 3 + i, b, np.full({DIM}, b + i, np.float32),
                                          "s", "k") for i in range(3)],
                        [RetrievalRow(run, b, b * 3, 0, 0, 0.5)])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, run], stderr=subprocess.PIPE)
             for run in ("p1", "p2")]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    store = MemoryStore(uri)
    for run in ("p1", "p2"):
        assert store.frames(run)["frame_index"].to_pylist() == list(range(60))
        assert store.retrievals(run).num_rows == 20
        assert store.completed_blocks(run) == 20
        assert store.get_run(run)["frames_done"] == 60


def test_a_table_still_being_created_by_another_process_counts_as_missing(tmp_path) -> None:
    # LanceDB lists a table as soon as its folder exists; until its first version is committed,
    # opening it fails. A concurrent compaction or reader must skip it, not crash.
    from lrag.memory.schema import RunInfo
    from lrag.memory.store import MemoryStore

    uri = tmp_path / "memory.lancedb"
    MemoryStore(uri, embedding_capacity=16).start_run(RunInfo("seed", "", "tiny", {}, [], 0, 0))
    (uri / "frames.lance").mkdir()
    store = MemoryStore(uri)
    assert "frames" in store._db.list_tables().tables
    stats = store.storage_stats()
    assert "frames" not in stats.rows and stats.rows["runs"] == 1
