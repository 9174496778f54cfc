"""Read-only SQL over the run memory.

The Lance tables are scanned into Arrow and registered as views ``runs``, ``frames`` and
``retrievals`` of an in-memory DuckDB whose file access is switched off and whose configuration is
locked. A query must be one SELECT (or WITH … SELECT) statement, checked with DuckDB's own parser;
nothing it does can reach the Lance files, which are only read.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import duckdb
import pyarrow as pa

from lrag.memory.schema import TABLES
from lrag.memory.store import MemoryStore

log = logging.getLogger(__name__)

#: DuckDB settings of the query engine: no files, no network, no extensions, then locked so a
#: query cannot switch any of it back on.
ENGINE_CONFIG: dict[str, str] = {
    "enable_external_access": "false",
    "autoinstall_known_extensions": "false",
    "autoload_known_extensions": "false",
    "allow_community_extensions": "false",
    "lock_configuration": "true",
}


class SQLError(ValueError):
    """A query could not be parsed or failed (unknown column, type error, ...)."""


class SQLRefusedError(SQLError):
    """A query was refused: not a single read-only SELECT, or the engine denied an access."""


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
    # Scanning only the tables a query names keeps `SELECT count(*) FROM runs` from reading
    # every embedding and preview; a name that is not mentioned cannot be queried anyway.
    return [t for t in TABLES if re.search(rf"\b{t}\b", query, flags=re.IGNORECASE)]


def run_sql(uri: str | Path, query: str) -> pa.Table:
    """Run one read-only SELECT over the store at ``uri`` and return the result.

    Args:
        uri: LanceDB folder of the memory store (e.g. ``runs/memory.lancedb``).
        query: One SELECT/WITH statement over ``runs``, ``frames`` and ``retrievals``;
            joins, aggregates and DuckDB list/array functions on ``frames.embedding`` work.

    Raises:
        FileNotFoundError: No store at ``uri``.
        SQLError: The query does not parse or fails.
        SQLRefusedError: The query is not a single read-only SELECT, or tried to reach files.
    """
    statement = check_read_only(query)
    if not Path(uri).is_dir():
        raise FileNotFoundError(
            f"no memory store at {uri}: run `lrag predict` first, or pass --db with the "
            "folder of an existing store."
        )
    store = MemoryStore(uri)
    con = duckdb.connect(":memory:", config=ENGINE_CONFIG)
    try:
        for name in _referenced_tables(statement):
            con.register(name, store.scan(name))
        return con.sql(statement).to_arrow_table()
    except duckdb.PermissionException as err:
        raise SQLRefusedError(
            f"refused: the query tried to access files or extensions ({err}); only read-only "
            "SELECT queries over runs, frames and retrievals are allowed."
        ) from err
    except duckdb.Error as err:
        raise SQLError(f"query failed: {err}") from err
    finally:
        con.close()

