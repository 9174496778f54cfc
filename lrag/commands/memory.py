"""``lrag memory``: inspect run memories — runs, show, search and read-only SQL.

Examples::

    lrag memory runs
    lrag memory show RUN
    lrag memory search --run RUN --frame 12 -k 5
    lrag memory sql "SELECT block_index, avg(score) FROM retrievals GROUP BY 1" --format csv

One store holds runs of every descriptor size: ``frames.embedding`` is zero-padded to the store's
capacity, ``frames.embedding_dim`` and ``frames.descriptor`` say what each row holds.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Sequence

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from argparse import RawDescriptionHelpFormatter

from jsonargparse import ArgumentParser, DefaultHelpFormatter, Namespace
from rich.console import Console
from rich.table import Table

from lrag.memory.sql import SQLError, run_sql
from lrag.memory.schema import unpad_embeddings
from lrag.memory.schema import StoreError
from lrag.memory.store import MemoryStore
from lrag.memory.tables import sql_quote

DEFAULT_DB = "runs/memory.lancedb"
OutputFormat = Literal["table", "csv", "json", "parquet"]
_MAX_LIST_ITEMS = 4  # vectors are long; the terminal table shows their head only
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
    sql.add_argument("query", type=str, help="A single SELECT (or WITH ... SELECT) statement.")
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
    _db_argument(search)
    commands.add_subcommand("search", search, help="Find similar frames across all runs.")
    return parser


def main(args: Sequence[str] | None = None) -> None:
    """Parse ``args`` (default ``sys.argv[1:]``) and run one ``lrag memory`` command."""
    cfg = build_parser().parse_args(list(sys.argv[1:] if args is None else args))
    sub = cfg[cfg.command]
    handlers = {"sql": _cmd_sql, "runs": _cmd_runs, "show": _cmd_show, "search": _cmd_search}
    try:
        handlers[cfg.command](sub)
    except (SQLError, StoreError) as err:
        raise SystemExit(f"lrag memory {cfg.command}: {err}") from err


def _open_store(db: str) -> MemoryStore:
    if not Path(db).is_dir():
        raise SystemExit(
            f"no memory store at {db}: run `lrag predict` first, or pass --db with the folder "
            "of an existing store."
        )
    return MemoryStore(db)


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
def _cmd_sql(cfg: Namespace) -> None:
    if cfg.format == "parquet" and cfg.output is None:
        raise SystemExit("lrag memory sql: --format parquet writes binary data; add --output FILE.")
    _open_store(cfg.db)  # a clear error for a missing store before the query runs
    result = run_sql(cfg.db, cfg.query)
    if cfg.format == "table":
        if cfg.output is None:
            _print_table(result, title=f"{result.num_rows} rows")
            return
        with open(cfg.output, "w", encoding="utf-8") as handle:
            Console(file=handle, width=200).print(_rich_table(result))
    elif cfg.format == "parquet":
        pq.write_table(_parquet_safe(result), cfg.output)
    else:
        text = _to_csv(result) if cfg.format == "csv" else _to_json(result)
        if cfg.output is None:
            sys.stdout.write(text)
            return
        Path(cfg.output).write_text(text, encoding="utf-8")
    print(f"wrote {result.num_rows} rows to {cfg.output}")


def _is_nested(type_: pa.DataType) -> bool:
    return pa.types.is_list(type_) or pa.types.is_fixed_size_list(type_) or \
        pa.types.is_large_list(type_) or pa.types.is_struct(type_) or pa.types.is_map(type_)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal):  # DuckDB sums of integers are HUGEINT -> decimal
        return int(value) if value == value.to_integral_value() else float(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _to_json(table: pa.Table) -> str:
    # One row per line: readable, and still a single valid JSON array.
    rows = [json.dumps(_jsonable(row), default=str) for row in table.to_pylist()]
    return "[\n" + ",\n".join(rows) + "\n]\n"


def _to_csv(table: pa.Table) -> str:
    # CSV has no nested or binary cells: vectors and lists become JSON, bytes base64.
    columns = {}
    for name, column in zip(table.column_names, table.columns, strict=False):
        if _is_nested(column.type):
            columns[name] = pa.array([None if v is None else json.dumps(_jsonable(v))
                                      for v in column.to_pylist()], pa.string())
        elif pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            columns[name] = pa.array([None if v is None else _jsonable(v)
                                      for v in column.to_pylist()], pa.string())
        else:
            columns[name] = column
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(pa.table(columns) if columns else table, sink)
    return sink.getvalue().to_pybytes().decode()


def _parquet_safe(table: pa.Table) -> pa.Table:
    # DuckDB names list children "" which Parquet writers reject; cast to standard item names.
    fields = []
    for f in table.schema:
        if pa.types.is_fixed_size_list(f.type):
            f = f.with_type(pa.list_(f.type.value_type, f.type.list_size))
        elif pa.types.is_list(f.type):
            f = f.with_type(pa.list_(f.type.value_type))
        fields.append(f)
    return table.cast(pa.schema(fields))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        head = ", ".join(_cell(v) for v in value[:_MAX_LIST_ITEMS])
        more = f", … ({len(value)})" if len(value) > _MAX_LIST_ITEMS else ""
        return f"[{head}{more}]"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _rich_table(table: pa.Table, title: str | None = None) -> Table:
    view = Table(title=title, show_lines=False)
    for name in table.column_names:
        view.add_column(name, overflow="fold")
    for row in table.to_pylist():
        view.add_row(*(_cell(v) for v in row.values()))
    return view


def _print_table(table: pa.Table, title: str | None = None) -> None:
    Console().print(_rich_table(table, title))


# -- runs / show / search ---------------------------------------------------------------------
def _cmd_runs(cfg: Namespace) -> None:
    runs = _open_store(cfg.db).list_runs()
    rows = [{
        "run_id": r["run_id"], "created": r["created"], "status": r["status"],
        "frames": f"{r['frames_done']}/{r['frames_planned']}", "backbone": r["backbone"],
    } for r in runs]
    if not rows:
        print(f"no runs in {cfg.db}")
        return
    _print_table(pa.Table.from_pylist(rows), title=f"{len(rows)} runs in {cfg.db}")


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
    store = _open_store(cfg.db)
    run = _require_run(store, cfg.db, cfg.run)
    frames = store.frames(cfg.run, with_previews=False)
    retrievals = store.retrievals(cfg.run)
    plot = Path(cfg.db).parent / cfg.run / "retrievals.png"
    summary = {
        "run": run["run_id"], "status": run["status"], "created": _cell(run["created"]),
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
        console.print(_rich_table(_top_retrieved(retrievals, cfg.top), "most retrieved frames"))


def _cmd_search(cfg: Namespace) -> None:
    store = _open_store(cfg.db)
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
    hits = store.search(frames["embedding"][0].as_py(), k=cfg.k, descriptor=descriptor)
    rows = [{"rank": i, **{k: h[k] for k in ("run_id", "frame_index", "block_index", "score")}}
            for i, h in enumerate(hits)]
    dim = frames["embedding_dim"][0].as_py()
    _print_table(pa.Table.from_pylist(rows),
                 title=f"{len(rows)} nearest frames to {cfg.run} frame {cfg.frame} "
                       f"({descriptor}, {dim} dims)")
