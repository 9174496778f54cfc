"""Read-only SQL over the run memory, scanning the Lance tables lazily.

Each table a query names is registered in an in-memory DuckDB as a view over its Lance dataset
(pylance), never copied: DuckDB pushes the columns a query reads and its filters down into the
Lance scan, so ``SELECT avg(score) FROM retrievals WHERE run_id = 'x'`` reads three columns of
the matching rows instead of whole tables. The engine's file access is switched off and its
configuration locked; a query must be one SELECT (or WITH … SELECT) statement, checked with
DuckDB's own parser, and runs within a memory limit, a thread limit and a timeout
(:class:`SQLLimits`).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as pa_ds

from lrag.memory.schema import TABLES
from lrag.memory.store import MemoryStore

#: DuckDB settings of the query engine: no files, no network, no extensions, then locked so a
#: query cannot switch any of it (or the limits) back on.
ENGINE_CONFIG: dict[str, str] = {
    "enable_external_access": "false",
    "autoinstall_known_extensions": "false",
    "autoload_known_extensions": "false",
    "allow_community_extensions": "false",
    "temp_directory": "",  # never spill to disk: the memory limit is a hard limit
    "lock_configuration": "true",
}

_UNITS = {"": 2**20, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class SQLError(ValueError):
    """A query could not be parsed or failed (unknown column, type error, ...)."""


class SQLRefusedError(SQLError):
    """A query was refused: not a single read-only SELECT, or the engine denied an access."""


class SQLLimitError(SQLError):
    """A query exceeded its memory limit or timeout, or a limit itself is invalid."""


def parse_size(text: str | int) -> int:
    """Bytes of a size such as ``"512MB"``, ``"2GiB"`` or ``1024`` (a bare number is MiB).

    Raises:
        SQLLimitError: Not a size, or not positive.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise SQLLimitError(
            f"memory limit {text!r} is not a size; write it like 512MB, 2GB or 1GiB "
            "(a bare number is MiB)."
        )
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise SQLLimitError(f"memory limit {text!r} must be > 0; e.g. --memory-limit 1GB.")
    return size


@dataclass(frozen=True)
class SQLLimits:
    """Resource limits of one query (checked on construction).

    Args:
        memory_limit: DuckDB's memory limit (joins, sorts, aggregates), e.g. ``"1GB"``; the
            Lance scan's read-ahead buffer is sized from it too.
        threads: DuckDB worker threads (the Lance scan reads with bounded read-ahead).
        timeout_s: Seconds after which the query is interrupted.
    """

    memory_limit: str | int = "1GB"
    threads: int = 2
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        parse_size(self.memory_limit)
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads <= 0:
            raise SQLLimitError(f"threads must be an int > 0, got {self.threads!r}; e.g. --threads 2.")
        if not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0 or \
                self.timeout_s == float("inf"):
            raise SQLLimitError(
                f"timeout must be a finite number of seconds > 0, got {self.timeout_s!r}; "
                "e.g. --timeout 60."
            )

    @property
    def memory_bytes(self) -> int:
        """The memory limit in bytes."""
        return parse_size(self.memory_limit)

    def engine_config(self) -> dict[str, str]:
        """DuckDB connection settings: :data:`ENGINE_CONFIG` plus these limits."""
        return {**ENGINE_CONFIG, "memory_limit": f"{self.memory_bytes}B",
                "threads": str(self.threads)}


class LanceScan(pa_ds.Dataset):
    """A Lance dataset as DuckDB sees it: DuckDB asks ``scanner(columns, filter)`` per query.

    Wrapping (instead of registering the ``LanceDataset`` itself) bounds how far Lance reads
    ahead, so a scan of a wide table (vectors, previews) holds a few batches, not gigabytes.
    """

    def __init__(self, dataset: Any, io_buffer_bytes: int, readahead: int) -> None:
        # pa.dataset.Dataset has no usable constructor for subclasses; only the methods DuckDB
        # calls are provided.
        self._dataset = dataset
        self._scan_options = {"io_buffer_size": io_buffer_bytes, "batch_readahead": readahead,
                              "fragment_readahead": 1}

    @property
    def schema(self) -> pa.Schema:
        """The Lance table's Arrow schema."""
        return self._dataset.schema

    def scanner(self, columns: list[str] | None = None, filter: Any = None, **_: Any) -> Any:
        """A Lance scanner over ``columns`` of the rows matching ``filter`` (a pyarrow expression)."""
        return self._dataset.scanner(columns=columns, filter=filter, **self._scan_options)

    def count_rows(self, filter: Any = None, **_: Any) -> int:
        """Rows matching ``filter``."""
        return self._dataset.count_rows(filter=filter)


def check_read_only(query: str) -> str:
    """Return the single statement of ``query`` if it is a SELECT/WITH, else raise.

    Raises:
        SQLRefusedError: Naming the refused statement type (DROP, INSERT, COPY, ATTACH, ...).
    """
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as err:
        raise SQLError(f"could not parse the SQL query: {err}") from err
    if len(statements) != 1:
        raise SQLRefusedError(
            f"refused: the query has {len(statements)} statements; only one read-only SELECT "
            "query is allowed."
        )
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise SQLRefusedError(
            f"refused {kind.name} statement: the memory store is read-only here; only "
            "read-only SELECT queries (optionally WITH ...) are allowed."
        )
    return statements[0].query


def _referenced_tables(query: str) -> list[str]:
    # A table the query does not mention cannot be queried; skipping it avoids opening it.
    return [t for t in TABLES if re.search(rf"\b{t}\b", query, flags=re.IGNORECASE)]


def _source(store: MemoryStore, name: str, limits: SQLLimits) -> Any:
    """What DuckDB scans for table ``name``: its Lance dataset, or an empty table if absent."""
    dataset = store.lance_dataset(name)
    if dataset is None:
        return store.scan(name)  # never written: empty, with the table's schema
    io_buffer = max(16 * 2**20, limits.memory_bytes // 8)
    return LanceScan(dataset, io_buffer, readahead=2 * limits.threads)


def run_sql(uri: str | Path, query: str, limits: SQLLimits | None = None) -> pa.Table:
    """Run one read-only SELECT over the store at ``uri`` and return the result.

    Args:
        uri: LanceDB folder of the memory store (e.g. ``runs/memory.lancedb``).
        query: One SELECT/WITH statement over ``runs``, ``frames`` and ``retrievals``;
            joins, aggregates and DuckDB list/array functions on ``frames.embedding`` work.
        limits: Memory limit, threads and timeout (default :class:`SQLLimits`).

    Raises:
        FileNotFoundError: No store at ``uri``.
        SQLError: The query does not parse or fails.
        SQLRefusedError: The query is not a single read-only SELECT, or tried to reach files.
        SQLLimitError: The query ran out of its memory limit or time.
    """
    limits = limits or SQLLimits()
    statement = check_read_only(query)
    if not Path(uri).is_dir():
        raise FileNotFoundError(
            f"no memory store at {uri}: run `lrag predict` first, or pass --db with the "
            "folder of an existing store."
        )
    store = MemoryStore(uri, read_only=True)  # no lancedb import: a query answers in ~1 s
    con = duckdb.connect(":memory:", config=limits.engine_config())
    timer = threading.Timer(limits.timeout_s, con.interrupt)
    try:
        for name in _referenced_tables(statement):
            con.register(name, _source(store, name, limits))
        timer.start()
        return con.sql(statement).to_arrow_table()
    except duckdb.PermissionException as err:
        raise SQLRefusedError(
            f"refused: the query tried to access files or extensions ({err}); only read-only "
            "SELECT queries over runs, frames and retrievals are allowed."
        ) from err
    except duckdb.InterruptException as err:
        raise SQLLimitError(
            f"query stopped after the timeout of {limits.timeout_s:g} s; raise it with "
            "--timeout SECONDS, or narrow the query (WHERE run_id = ..., fewer columns)."
        ) from err
    except duckdb.OutOfMemoryException as err:
        # DuckDB's first line says what failed; its advice (SET ...) does not apply here.
        detail = str(err).splitlines()[0].removeprefix("Out of Memory Error: ")
        raise SQLLimitError(
            f"query needs more than the memory limit of {limits.memory_limit} ({detail}); raise it "
            "with --memory-limit, or narrow the query (WHERE ..., fewer columns, LIMIT)."
        ) from err
    except duckdb.Error as err:
        raise SQLError(f"query failed: {err}") from err
    finally:
        timer.cancel()
        con.close()


__all__ = ["ENGINE_CONFIG", "LanceScan", "SQLError", "SQLLimitError", "SQLLimits",
           "SQLRefusedError", "check_read_only", "parse_size", "run_sql"]
