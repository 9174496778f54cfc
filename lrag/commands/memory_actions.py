"""The ``lrag memory`` commands' work: store reads, SQL, search and maintenance, and their output.

Split from :mod:`lrag.commands.memory` (the parser) so that ``lrag memory --help`` imports no
pyarrow, DuckDB or store code.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from jsonargparse import Namespace
from rich.console import Console
from rich.table import Table

from lrag.commands.memory_output import cell, parquet_safe, print_table, rich_table, to_csv, to_json
from lrag.memory.schema import unpad_embeddings
from lrag.memory.sql import SQLLimits, run_sql
from lrag.memory.store import MemoryStore
from lrag.memory.tables import sql_quote

__all__ = ["cmd_compact", "cmd_index", "cmd_runs", "cmd_search", "cmd_show", "cmd_sql"]


def _open_store(db: str, read_only: bool = False) -> MemoryStore:
    """The store at ``db``; ``read_only`` reads without importing lancedb (seconds faster)."""
    if not Path(db).is_dir():
        raise SystemExit(
            f"no memory store at {db}: run `lrag predict` first, or pass --db with the folder "
            "of an existing store."
        )
    return MemoryStore(db, read_only=read_only)


def _require_run(store: MemoryStore, db: str, run_id: str) -> dict:
    run = store.get_run(run_id)
    if run is None:
        known = ", ".join(r["run_id"] for r in store.list_runs()[-5:]) or "none"
        raise SystemExit(
            f"unknown run {run_id!r} in {db} (latest runs: {known}); list them with "
            f"`lrag memory runs --db {db}`."
        )
    return run


# -- sql --------------------------------------------------------------------------------------
def _positive(**values: float) -> None:
    for flag, value in values.items():
        if not value > 0 or not math.isfinite(value):
            name = flag.replace("_", "-")
            raise SystemExit(f"lrag memory: --{name} must be a number > 0, got {value}.")


def _read_query(cfg: Namespace) -> str:
    if (cfg.query is None) == (cfg.file is None):
        raise SystemExit("lrag memory sql: give the query either as an argument or with --file "
                         "FILE (not both, not neither).")
    if cfg.file is None:
        return cfg.query
    path = Path(cfg.file)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SystemExit(f"lrag memory sql: query file {path} does not exist; pass --file with "
                         "an existing .sql file.") from None
    except IsADirectoryError:
        raise SystemExit(f"lrag memory sql: --file {path} is a directory; pass a file.") from None
    except PermissionError:
        raise SystemExit(f"lrag memory sql: permission denied reading query file {path}.") from None
    except UnicodeDecodeError as err:
        raise SystemExit(f"lrag memory sql: query file {path} is not UTF-8 text ({err.reason} "
                         f"at byte {err.start}); save it as UTF-8.") from None
    if not text.strip():
        raise SystemExit(f"lrag memory sql: query file {path} is empty; write one SELECT in it.")
    return text


def cmd_sql(cfg: Namespace) -> None:
    if cfg.format == "parquet" and cfg.output is None:
        raise SystemExit("lrag memory sql: --format parquet writes binary data; add --output FILE.")
    query = _read_query(cfg)
    limits = SQLLimits(memory_limit=cfg.memory_limit, threads=cfg.threads, timeout_s=cfg.timeout)
    # Lance sizes its decode pool from this when it first runs (a user's own setting wins).
    os.environ.setdefault("LANCE_CPU_THREADS", str(cfg.threads))
    _open_store(cfg.db, read_only=True)  # a clear error for a missing store before the query runs
    result = run_sql(cfg.db, query, limits)
    if cfg.format == "table":
        if cfg.output is None:
            print_table(result, title=f"{result.num_rows} rows")
            return
        with open(cfg.output, "w", encoding="utf-8") as handle:
            Console(file=handle, width=200).print(rich_table(result))
    elif cfg.format == "parquet":
        pq.write_table(parquet_safe(result), cfg.output)
    else:
        text = to_csv(result) if cfg.format == "csv" else to_json(result)
        if cfg.output is None:
            sys.stdout.write(text)
            return
        Path(cfg.output).write_text(text, encoding="utf-8")
    print(f"wrote {result.num_rows} rows to {cfg.output}")


# -- runs / show / search ---------------------------------------------------------------------
def cmd_runs(cfg: Namespace) -> None:
    runs = _open_store(cfg.db, read_only=True).list_runs()
    rows = [{
        "run_id": r["run_id"], "created": r["created"], "status": r["status"],
        "frames": f"{r['frames_done']}/{r['frames_planned']}", "backbone": r["backbone"],
    } for r in runs]
    if not rows:
        print(f"no runs in {cfg.db}")
        return
    print_table(pa.Table.from_pylist(rows), title=f"{len(rows)} runs in {cfg.db}")


def _top_retrieved(retrievals: pa.Table, top: int) -> pa.Table:
    counts: Counter[int] = Counter(retrievals["retrieved_frame"].to_pylist())
    scores: dict[int, list[float]] = defaultdict(list)
    for frame, score in zip(retrievals["retrieved_frame"].to_pylist(),
                            retrievals["score"].to_pylist(), strict=False):
        scores[frame].append(score)
    rows = [{"retrieved_frame": f, "times": n, "mean_score": sum(scores[f]) / n}
            for f, n in counts.most_common(top)]
    return pa.Table.from_pylist(rows)


def cmd_show(cfg: Namespace) -> None:
    _positive(top=cfg.top)
    store = _open_store(cfg.db, read_only=True)
    run = _require_run(store, cfg.db, cfg.run)
    frames = store.frames(cfg.run, with_previews=False)
    retrievals = store.retrievals(cfg.run)
    plot = Path(cfg.db).parent / cfg.run / "retrievals.png"
    summary = {
        "run": run["run_id"], "status": run["status"], "created": cell(run["created"]),
        "backbone": run["backbone"], "seed": run["seed"],
        "prompts": " | ".join(run["prompts"] or []),
        "prompt schedule": "; ".join(f"{e['frame']}: {e['prompt']}" for e in run["prompt_schedule"]) or "-",
        "frames done/planned": f"{run['frames_done']}/{run['frames_planned']}",
        "complete blocks": store.completed_blocks(cfg.run),
        "frames rows": frames.num_rows, "retrieval rows": retrievals.num_rows,
        "checkpoints": ", ".join(f"{k}={v}" for k, v in run["checkpoint_hashes"].items()) or "-",
        "retrieval plot": str(plot) if plot.is_file() else "(none)",
    }
    view = Table(title=f"run {cfg.run}", show_header=False)
    view.add_column("field")
    view.add_column("value", overflow="fold")
    for key, value in summary.items():
        view.add_row(key, str(value))
    console = Console()
    console.print(view)
    if retrievals.num_rows:
        console.print(rich_table(_top_retrieved(retrievals, cfg.top), "most retrieved frames"))


def cmd_search(cfg: Namespace) -> None:
    _positive(k=cfg.k, nprobes=cfg.nprobes, refine_factor=cfg.refine_factor)
    store = _open_store(cfg.db)
    store.nprobes, store.refine_factor = cfg.nprobes, cfg.refine_factor
    _require_run(store, cfg.db, cfg.run)
    where = f"run_id = {sql_quote(cfg.run)} AND frame_index = {int(cfg.frame)}"
    frames = unpad_embeddings(
        store.scan("frames", where, ["embedding", "embedding_dim", "descriptor"]))
    if frames.num_rows == 0:
        done = store.get_run(cfg.run)["frames_done"]
        raise SystemExit(
            f"run {cfg.run!r} has no frame {cfg.frame} in {cfg.db}; it stores frames "
            f"0..{done - 1}: pick --frame in that range."
        )
    descriptor = frames["descriptor"][0].as_py()
    hits = store.search(frames["embedding"][0].as_py(), k=cfg.k, descriptor=descriptor,
                        exact=cfg.exact)
    rows = [{"rank": i, **{k: h[k] for k in ("run_id", "frame_index", "block_index", "score")}}
            for i, h in enumerate(hits)]
    dim = frames["embedding_dim"][0].as_py()
    print_table(pa.Table.from_pylist(rows),
                 title=f"{len(rows)} nearest frames to {cfg.run} frame {cfg.frame} "
                       f"({descriptor}, {dim} dims)")
    how = "exact" if cfg.exact or not store.has_index() else \
        f"vector index, nprobes {cfg.nprobes}, refine factor {cfg.refine_factor}"
    print(f"search: {how}")


# -- compact / index --------------------------------------------------------------------------
def cmd_compact(cfg: Namespace) -> None:
    if not cfg.keep_versions >= 0 or not math.isfinite(cfg.keep_versions):
        raise SystemExit(f"lrag memory compact: --keep-versions must be >= 0 seconds, got "
                         f"{cfg.keep_versions}; e.g. --keep-versions 300.")
    store = _open_store(cfg.db)
    before, after = store.compact(dt.timedelta(seconds=cfg.keep_versions))
    view = Table(title=f"compacted {cfg.db}")
    for column in ("table", "rows", "fragments before", "fragments after", "versions before",
                   "versions after"):
        view.add_column(column)
    for name in after.rows:
        view.add_row(name, str(after.rows[name]), str(before.fragments.get(name, 0)),
                     str(after.fragments[name]), str(before.versions.get(name, 0)),
                     str(after.versions[name]))
    Console().print(view)
    if after.files is not None:
        print(f"files: {before.files} -> {after.files}")


def cmd_index(cfg: Namespace) -> None:
    _positive(min_rows=cfg.min_rows)
    store = _open_store(cfg.db)
    store.index_min_rows = cfg.min_rows
    rows = store.storage_stats().rows.get("frames", 0)
    if store.has_index() and not cfg.force:
        print(f"frames ({rows} rows) already has a vector index; --force rebuilds it.")
    elif store.ensure_index(force=cfg.force):
        print(f"built the {store.index_type} vector index on frames.embedding ({rows} rows).")
    else:
        print(f"frames has {rows} rows, fewer than --min-rows {cfg.min_rows}: no index built "
              "(search stays exact, which is fast at this size).")
