"""The memory store at scale: build, SQL (copy vs lazy), vector search, compaction (issue 14).

Builds a synthetic store (``--frames`` rows in ``frames``, ``--retrievals`` rows in
``retrievals``, written in large batches like many finished runs), then ``--block-runs`` runs
written block by block through ``MemoryStore.add_block`` (the fragments and versions a real run
leaves). Then it measures, in one session:

* SQL: each query in a fresh subprocess (so its peak RSS is its own), the *copy* path (the old
  ``lrag memory sql``: whole tables scanned into Arrow, then registered in DuckDB) and the
  *lazy* path (:func:`lrag.memory.sql.run_sql`) interleaved, ``--repeats`` times.
* vector search: index build time; latency and recall@10 of indexed search against exact
  search, over a grid of ``nprobes`` x ``refine_factor``.
* compaction: files, fragments and versions before and after ``MemoryStore.compact``.

Synthetic descriptors: each run is a random walk on the unit sphere (consecutive frames are
similar, as in a video); queries are stored frames plus noise.

    python benchmarks/store_scale.py --frames 1000000 --retrievals 10000000
    python benchmarks/store_scale.py --frames 20000 --retrievals 200000 --queries 20  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
QUERIES = {
    "filtered aggregate": (
        "SELECT block_index, count(*) AS n, avg(score) AS mean_score FROM retrievals "
        "WHERE run_id = '{run}' AND rank < 5 GROUP BY block_index ORDER BY block_index"),
    "join, one run": (
        "SELECT f.block_index, avg(r.score) AS mean_score FROM retrievals r JOIN frames f "
        "ON f.run_id = r.run_id AND f.frame_index = r.retrieved_frame "
        "WHERE r.run_id = '{run}' AND r.rank = 0 GROUP BY 1 ORDER BY 1"),
    "full-scan aggregate": "SELECT rank, avg(score) AS mean_score FROM retrievals GROUP BY rank",
}


# -- build ------------------------------------------------------------------------------------
def _strings(prefix: str, ids: np.ndarray, count: int) -> pa.Array:
    names = pa.array([f"{prefix}{i:06d}" for i in range(count)])
    return pa.DictionaryArray.from_arrays(pa.array(ids, pa.int32()), names).cast(pa.string())


def _walks(rng: np.random.Generator, runs: int, length: int, dim: int) -> np.ndarray:
    """``[runs * length, dim]`` unit vectors: one random walk per run."""
    steps = rng.standard_normal((runs, length, dim), dtype=np.float32)
    steps[:, 1:] *= 0.15
    walk = np.cumsum(steps, axis=1).reshape(runs * length, dim)
    return walk / np.linalg.norm(walk, axis=1, keepdims=True)


def build(uri: str, args: argparse.Namespace) -> dict:
    """Write the synthetic store; return timings and sizes."""
    from lrag.memory.schema import RETRIEVALS_SCHEMA, RUNS_SCHEMA, FrameRow, RetrievalRow, RunInfo
    from lrag.memory.store import MemoryStore

    rng = np.random.default_rng(0)
    store = MemoryStore(uri, embedding_capacity=args.dim)
    per_run = args.frames // args.runs
    start = time.perf_counter()
    created = pa.scalar(0, pa.timestamp("us", tz="UTC"))
    runs = pa.table({
        "run_id": _strings("run", np.arange(args.runs), args.runs),
        "created": pa.array([created.value] * args.runs, pa.timestamp("us", tz="UTC")),
        "config_yaml": [""] * args.runs, "backbone": ["tiny"] * args.runs,
        "checkpoint_hashes": ["{}"] * args.runs, "prompts": [["a prompt"]] * args.runs,
        "prompt_schedule": ["[]"] * args.runs, "seed": list(range(args.runs)),
        "frames_planned": [per_run] * args.runs, "frames_done": [per_run] * args.runs,
        "status": ["complete"] * args.runs, "schema_version": [2] * args.runs,
    }, schema=RUNS_SCHEMA)
    store._create("runs", RUNS_SCHEMA).add(runs)
    frames_tbl = store._frames_table()
    runs_per_batch = max(1, 200_000 // per_run)
    for first in range(0, args.runs, runs_per_batch):
        n_runs = min(runs_per_batch, args.runs - first)
        n = n_runs * per_run
        run = np.repeat(np.arange(first, first + n_runs), per_run)
        frame = np.tile(np.arange(per_run), n_runs)
        emb = _walks(rng, n_runs, per_run, args.dim)
        frames_tbl.add(pa.table({
            "run_id": _strings("run", run, args.runs), "frame_index": pa.array(frame, pa.int32()),
            "block_index": pa.array(frame // 3, pa.int32()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), args.dim),
            "embedding_dim": pa.array(np.full(n, args.dim), pa.int32()),
            "descriptor": pa.array(["avg_pool"] * n), "shard": pa.array(["latents-0.tar"] * n),
            "key": pa.array(frame.astype(str)), "preview_png": pa.array([b"\x89PNG" * 16] * n),
            "created": pa.array(np.full(n, created.value), pa.timestamp("us", tz="UTC")),
        }, schema=frames_tbl.schema))
    retr_tbl = store._create("retrievals", RETRIEVALS_SCHEMA)
    per_run_r = args.retrievals // args.runs
    ranks = max(1, per_run_r // max(1, per_run // 3))  # retrieval rows per block
    runs_per_batch = max(1, 2_000_000 // per_run_r)
    for first in range(0, args.runs, runs_per_batch):
        n_runs = min(runs_per_batch, args.runs - first)
        n = n_runs * per_run_r
        row = np.tile(np.arange(per_run_r), n_runs)
        block = row // ranks
        retr_tbl.add(pa.table({
            "run_id": _strings("run", np.repeat(np.arange(first, first + n_runs), per_run_r),
                               args.runs),
            "block_index": pa.array(block, pa.int32()),
            "query_frame": pa.array(block * 3, pa.int32()),
            "rank": pa.array(row % ranks, pa.int32()),
            "retrieved_frame": pa.array(rng.integers(0, per_run, n), pa.int32()),
            "score": pa.array(rng.random(n, dtype=np.float32)),
        }, schema=RETRIEVALS_SCHEMA))
    bulk_s = time.perf_counter() - start
    start = time.perf_counter()
    for r in range(args.block_runs):  # the per-block write path of `lrag predict`
        run_id = f"blocks{r}"
        store.start_run(RunInfo(run_id, "", "tiny", {}, ["p"], r, args.block_frames))
        emb = _walks(rng, 1, args.block_frames, args.dim)
        for b in range(args.block_frames // 3):
            store.add_block(run_id, b, [FrameRow(run_id, 3 * b + i, b, emb[3 * b + i], "s", "k",
                                                 descriptor="avg_pool") for i in range(3)],
                            [RetrievalRow(run_id, b, 3 * b, k, k, 0.5) for k in range(4)])
        store.set_status(run_id, "complete")
    return {"bulk_s": bulk_s, "block_runs_s": time.perf_counter() - start,
            "stats": store.storage_stats().__dict__}


# -- SQL --------------------------------------------------------------------------------------
def _sql_copy(uri: str, query: str) -> pa.Table:
    """The old `lrag memory sql`: every named table scanned into Arrow, then queried."""
    import re

    import duckdb

    from lrag.memory.schema import TABLES
    from lrag.memory.sql import ENGINE_CONFIG
    from lrag.memory.store import MemoryStore

    store = MemoryStore(uri)
    con = duckdb.connect(":memory:", config=ENGINE_CONFIG)
    for name in TABLES:
        if re.search(rf"\b{name}\b", query, flags=re.IGNORECASE):
            con.register(name, store.scan(name))
    return con.sql(query).to_arrow_table()


def _status_mib(key: str) -> float:
    """A memory line of /proc/self/status (Linux), in MiB: VmRSS now, VmHWM the peak.

    Not ``ru_maxrss``: it survives exec, so a child would report its parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def _sql_worker(path: str, uri: str, query: str, threads: int) -> None:
    from lrag.memory.sql import SQLLimits, run_sql

    base = _status_mib("VmRSS")
    start = time.perf_counter()
    if path == "copy":
        result = _sql_copy(uri, query)
    else:
        result = run_sql(uri, query, SQLLimits(memory_limit="1GB", threads=threads,
                                               timeout_s=600))
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rows": result.num_rows,
                      "rss_mib": _status_mib("VmHWM"),
                      "rss_after_imports_mib": base}))


def measure_sql(uri: str, args: argparse.Namespace) -> dict:
    """Median seconds and peak RSS of each query on both paths, interleaved."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LANCE_CPU_THREADS": str(args.threads)}
    # import lance/duckdb before measuring the baseline: RSS of the query, not of the imports
    prelude = "import lance, duckdb, lancedb, lrag.memory.sql, lrag.memory.store; "
    out: dict = {}
    for label, template in QUERIES.items():
        query = template.format(run=f"run{args.runs // 2:06d}")
        samples: dict[str, list[dict]] = {"copy": [], "lazy": []}
        for _ in range(args.repeats):
            for path in ("copy", "lazy"):
                code = (prelude + "import sys; from benchmarks.store_scale import _sql_worker; "
                        "_sql_worker(*sys.argv[1:4], int(sys.argv[4]))")
                proc = subprocess.run(
                    [sys.executable, "-c", code, path, uri, query, str(args.threads)],
                    capture_output=True, text=True, env=env, cwd=ROOT, check=True)
                samples[path].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        out[label] = {"query": query, **{path: {
            "seconds": statistics.median(s["seconds"] for s in runs),
            "peak_rss_mib": max(s["rss_mib"] for s in runs),
            "rss_after_imports_mib": statistics.median(s["rss_after_imports_mib"] for s in runs),
            "rows": runs[0]["rows"], "all_seconds": [s["seconds"] for s in runs],
        } for path, runs in samples.items()}}
        print(label, json.dumps({p: {k: v for k, v in d.items() if k != "all_seconds"}
                                 for p, d in out[label].items() if p != "query"}), flush=True)
    return out


# -- vector search ----------------------------------------------------------------------------
def measure_search(uri: str, args: argparse.Namespace) -> dict:
    """Index build time, then latency and recall@10 of indexed vs exact search."""
    from lrag.memory.store import MemoryStore

    store = MemoryStore(uri)
    start = time.perf_counter()
    store.ensure_index(force=True)
    index_s = time.perf_counter() - start
    rng = np.random.default_rng(1)
    sample = store.scan("frames", f"run_id = 'run{args.runs // 3:06d}'", ["embedding"])
    picks = rng.choice(sample.num_rows, size=min(args.queries, sample.num_rows), replace=False)
    stored = np.stack(sample["embedding"].to_numpy(zero_copy_only=False)[picks])
    queries = stored + 0.05 * rng.standard_normal(stored.shape).astype(np.float32)

    def timed(**kwargs) -> tuple[list[set], list[float]]:
        found, seconds = [], []
        for q in queries:
            t = time.perf_counter()
            hits = store.search(q, k=10, descriptor="avg_pool", **kwargs)
            seconds.append(time.perf_counter() - t)
            found.append({(h["run_id"], h["frame_index"]) for h in hits})
        return found, seconds

    truth, exact_s = timed(exact=True)
    grid = []
    for nprobes in args.nprobes:
        for refine in args.refine:
            store.nprobes, store.refine_factor = nprobes, refine
            timed()  # warm the index cache
            found, seconds = timed()
            recall = statistics.mean(len(f & t) / len(t) for f, t in zip(found, truth, strict=True))
            grid.append({"nprobes": nprobes, "refine_factor": refine, "recall_at_10": recall,
                         "median_ms": 1e3 * statistics.median(seconds),
                         "p95_ms": 1e3 * float(np.percentile(seconds, 95))})
            print("search", json.dumps(grid[-1]), flush=True)
    return {"index_build_s": index_s, "queries": len(queries),
            "exact_median_ms": 1e3 * statistics.median(exact_s), "grid": grid}


def measure_compaction(uri: str) -> dict:
    """Files/fragments/versions before and after compaction (nobody else uses this store)."""
    from lrag.memory.store import MemoryStore

    store = MemoryStore(uri)
    start = time.perf_counter()
    before, after = store.compact(keep_versions=timedelta(0))
    return {"seconds": time.perf_counter() - start, "before": before.__dict__,
            "after": after.__dict__}


def main() -> None:
    """Parse flags, build the store, measure, print and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--retrievals", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=1000, help="runs the bulk rows belong to")
    parser.add_argument("--dim", type=int, default=64, help="descriptor size (demo embedder: 64)")
    parser.add_argument("--block-runs", type=int, default=5, help="runs written block by block")
    parser.add_argument("--block-frames", type=int, default=300)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--nprobes", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--refine", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--repeats", type=int, default=3, help="SQL repeats per path")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--db", type=str, default=None,
                        help="store folder (default: a temporary one, deleted at the end)")
    parser.add_argument("--reuse", action="store_true",
                        help="measure the existing store at --db instead of building one")
    parser.add_argument("--json", type=str, default="benchmarks/results/store_scale.json")
    parser.add_argument("--skip", nargs="*", default=[], choices=["sql", "search", "compact"])
    args = parser.parse_args()
    for name in ("frames", "retrievals", "runs", "dim", "queries", "repeats", "threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0")
    if args.reuse != bool(args.db and Path(args.db).exists()):
        parser.error("--reuse needs an existing --db; without --reuse, --db must not exist yet")
    with tempfile.TemporaryDirectory(prefix="store_scale_") as tmp:
        uri = args.db or str(Path(tmp) / "memory.lancedb")
        result: dict = {"args": vars(args), "machine": f"{platform.processor() or 'cpu'}, "
                        f"{os.cpu_count()} cores", "python": platform.python_version()}
        if args.reuse:
            from lrag.memory.store import MemoryStore

            result["build"] = {"reused": uri, "stats": MemoryStore(uri).storage_stats().__dict__}
        else:
            result["build"] = build(uri, args)
        print("build", json.dumps(result["build"]), flush=True)
        if "search" not in args.skip:
            result["search"] = measure_search(uri, args)
        if "compact" not in args.skip:
            result["compaction"] = measure_compaction(uri)
            print("compaction", json.dumps(result["compaction"]), flush=True)
        if "sql" not in args.skip:
            result["sql"] = measure_sql(uri, args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
