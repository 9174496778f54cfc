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

import sys
from argparse import RawDescriptionHelpFormatter
from typing import Literal, Sequence

from jsonargparse import ArgumentParser, DefaultHelpFormatter

DEFAULT_DB = "runs/memory.lancedb"
KEEP_VERSIONS_S = 300.0  # lrag.memory.store.DEFAULT_KEEP_VERSIONS, kept here so --help needs no pyarrow
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
        "--keep-versions", type=float, default=KEEP_VERSIONS_S,
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
    # The handlers need pyarrow, DuckDB and the store: imported only once a command runs.
    from lrag.commands import memory_actions as act
    from lrag.memory.schema import StoreError
    from lrag.memory.sql import SQLError

    handlers = {"sql": act.cmd_sql, "runs": act.cmd_runs, "show": act.cmd_show, "search": act.cmd_search,
                "compact": act.cmd_compact, "index": act.cmd_index}
    try:
        handlers[cfg.command](sub)
    except (SQLError, StoreError) as err:
        raise SystemExit(f"lrag memory {cfg.command}: {err}") from err


