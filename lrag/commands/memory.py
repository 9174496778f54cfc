"""``lrag memory``: inspect and maintain run memories — runs, show, search, SQL, compact, index.

Examples::

    lrag memory runs
    lrag memory show RUN
    lrag memory search --run RUN --frame 12 -k 5
    lrag memory sql "SELECT block_index, avg(score) FROM retrievals GROUP BY 1" --format csv
    lrag memory sql --file query.sql --memory-limit 4GB --threads 2 --timeout 300
    lrag memory compact
    lrag memory index

One store holds runs of every descriptor size: ``frames.embedding`` is zero-padded to the store's
capacity, ``frames.embedding_dim`` and ``frames.descriptor`` say what each row holds.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Literal, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from argparse import RawDescriptionHelpFormatter

from jsonargparse import ArgumentParser, DefaultHelpFormatter, Namespace
from rich.console import Console
from rich.table import Table

from lrag.commands.memory_output import cell, parquet_safe, print_table, rich_table, to_csv, to_json
from lrag.memory.schema import StoreError, unpad_embeddings
from lrag.memory.sql import SQLError, SQLLimits, run_sql
from lrag.memory.store import DEFAULT_KEEP_VERSIONS, MemoryStore
from lrag.memory.tables import sql_quote

DEFAULT_DB = "runs/memory.lancedb"
OutputFormat = Literal["table", "csv", "json", "parquet"]
SQL_EXAMPLES = """\
frames.embedding is zero-padded to the store's capacity (default 1024); each row's true size is
frames.embedding_dim and its embedder frames.descriptor (e.g. avg_pool, ae:<sha12>). Examples:

  # the true vectors (DuckDB slices are 1-based and inclusive)
  lrag memory sql "SELECT run_id, frame_index, embedding[1:embedding_dim] AS vec FROM frames"
  # the same with list_slice (array_slice is an alias)
  lrag memory sql "SELECT list_slice(embedding, 1, embedding_dim) AS vec FROM frames"
  # cosine neighbours of one frame; padding leaves cosine unchanged, but only compare
  # rows of the same embedding_dim and descriptor
  lrag memory sql "WITH q AS (SELECT * FROM frames WHERE run_id = 'RUN' AND frame_index = 12)
    SELECT f.run_id, f.frame_index, array_cosine_similarity(f.embedding, q.embedding) AS sim
    FROM frames f JOIN q ON f.embedding_dim = q.embedding_dim AND f.descriptor = q.descriptor
    ORDER BY sim DESC LIMIT 5"
  # runs per descriptor
  lrag memory sql "SELECT descriptor, embedding_dim, count(DISTINCT run_id) FROM frames GROUP BY ALL"
"""


class _RawEpilogFormatter(RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help (types, defaults) with descriptions and examples kept as written."""


def _db_argument(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--db", type=str, default=DEFAULT_DB,
        help="Folder of the LanceDB memory store (the `store` setting of the predict config).",
    )


def build_parser() -> ArgumentParser:
    """The ``lrag memory`` parser with its ``sql``, ``runs``, ``show`` and ``search`` commands."""
    # jsonargparse formats subcommand help with the root's formatter: keep example layout.
    parser = ArgumentParser(prog="lrag memory", description=__doc__.split("\n\n")[0],
                            formatter_class=_RawEpilogFormatter)
    commands = parser.add_subcommands(dest="command")

    sql = ArgumentParser(description="Run one read-only SELECT over runs, frames, retrievals.",
                         epilog=SQL_EXAMPLES)
    sql.add_argument("query", type=str | None, nargs="?", default=None,
                     help="A single SELECT (or WITH ... SELECT) statement (or use --file).")
    sql.add_argument("--file", type=str | None, default=None,
                     help="Read the query from this file instead (long queries).")
    sql.add_argument("--memory-limit", type=str, default="2GB",
                     help="Memory the query engine may use, e.g. 512MB, 4GB (bare number: MiB).")
    sql.add_argument("--threads", type=int, default=4, help="Query engine threads (> 0).")
    sql.add_argument("--timeout", type=float, default=120.0,
                     help="Seconds after which the query is stopped (> 0).")
    sql.add_argument("--format", type=OutputFormat, default="table",
                     help="table (terminal), csv, json (array of rows) or parquet.")
    sql.add_argument("--output", type=str | None, default=None,
                     help="File to write the result to (required for parquet); else stdout.")
    _db_argument(sql)
    commands.add_subcommand("sql", sql, help="Read-only SQL over the memory tables.")

    runs = ArgumentParser(description="List runs: id, created, status, frames, backbone.")
    _db_argument(runs)
    commands.add_subcommand("runs", runs, help="List the runs in the store.")

    show = ArgumentParser(description="Summary of one run, its counts and most retrieved frames.")
    show.add_argument("run", type=str, help="Run id (see `lrag memory runs`).")
    show.add_argument("--top", type=int, default=10, help="How many most-retrieved frames to list.")
    _db_argument(show)
    commands.add_subcommand("show", show, help="Summarise one run.")

    search = ArgumentParser(description="Nearest stored frames (cosine) to one frame's embedding, "
                                        "among frames of the same descriptor and size.")
    search.add_argument("--run", type=str, required=True, help="Run id of the query frame.")
    search.add_argument("--frame", type=int, required=True, help="Frame index of the query frame.")
    search.add_argument("-k", type=int, default=10, help="Number of neighbours to list.")
    search.add_argument("--nprobes", type=int, default=20,
                        help="Index partitions to visit (with a vector index; more = higher recall).")
    search.add_argument("--refine-factor", type=int, default=10,
                        help="Re-rank k x this many index candidates with exact vectors.")
    search.add_argument("--exact", type=bool, default=False,
                        help="Compare with every stored frame, ignoring the vector index.")
    _db_argument(search)
    commands.add_subcommand("search", search, help="Find similar frames across all runs.")

    compact = ArgumentParser(description="Merge the small fragments written per block, prune old "
                                         "versions and update the vector index.")
    compact.add_argument(
        "--keep-versions", type=float, default=DEFAULT_KEEP_VERSIONS.total_seconds(),
        help="Keep table versions younger than this many seconds, so readers that opened one "
             "can finish; 0 keeps only the latest (only when no other process uses the store).")
    _db_argument(compact)
    commands.add_subcommand("compact", compact, help="Compact the store's tables.")

    index = ArgumentParser(description="Build the IVF-PQ vector index on frames.embedding "
                                       "(search then visits a few partitions, not every frame).")
    index.add_argument("--min-rows", type=int, default=4096,
                       help="Build only once frames has at least this many rows.")
    index.add_argument("--force", type=bool, default=False, help="Rebuild an existing index.")
    _db_argument(index)
    commands.add_subcommand("index", index, help="Build the vector index for search.")
    return parser


def main(args: Sequence[str] | None = None) -> None:
    """Parse ``args`` (default ``sys.argv[1:]``) and run one ``lrag memory`` command."""
    cfg = build_parser().parse_args(list(sys.argv[1:] if args is None else args))
    sub = cfg[cfg.command]
    handlers = {"sql": _cmd_sql, "runs": _cmd_runs, "show": _cmd_show, "search": _cmd_search,
                "compact": _cmd_compact, "index": _cmd_index}
    try:
        handlers[cfg.command](sub)
    except (SQLError, StoreError) as err:
        raise SystemExit(f"lrag memory {cfg.command}: {err}") from err


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


def _cmd_sql(cfg: Namespace) -> None:
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
def _cmd_runs(cfg: Namespace) -> None:
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


def _cmd_show(cfg: Namespace) -> None:
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


def _cmd_search(cfg: Namespace) -> None:
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
def _cmd_compact(cfg: Namespace) -> None:
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


def _cmd_index(cfg: Namespace) -> None:
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
