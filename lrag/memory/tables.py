"""The LanceDB tables under a run memory: connection, opening, creation, scans, write retries.

Opening a table checks its schema version (:func:`lrag.memory.schema.check_version`) and, for
``frames``, adopts the embedding capacity it was created with. Several processes may write one
store: creation tolerates losing the race and writes retry Lance's commit conflicts.

``read_only=True`` opens the tables' Lance datasets directly (pylance) instead of through a
LanceDB connection: importing ``lancedb`` costs ~4 s of CPU (its namespace client's models), the
whole budget of a quick ``lrag memory runs|show|sql``. Such a store reads the latest version of
every table when it first opens it and refuses writes.
:class:`lrag.memory.store.MemoryStore` builds the run-memory API on top of :class:`StoreTables`.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, TypeVar

import pyarrow as pa

from lrag.memory.schema import (
    DEFAULT_EMBEDDING_CAPACITY,
    RETRIEVALS_SCHEMA,
    RUNS_SCHEMA,
    TABLES,
    StoreError,
    check_version,
    frames_schema,
)

__all__ = ["StorageStats", "StoreTables", "sql_quote", "with_retries"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")


def sql_quote(value: str) -> str:
    """Quote ``value`` as a SQL string literal for Lance filters."""
    return "'" + str(value).replace("'", "''") + "'"


def _is_conflict(err: Exception) -> bool:
    text = str(err).lower()
    return any(word in text for word in ("conflict", "retryable"))


def with_retries(fn: Callable[[], _T], attempts: int = 8) -> _T:
    """Run a Lance write, retrying commit conflicts from concurrent writers with backoff."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as err:  # Lance raises plain RuntimeError/OSError on conflicts
            if attempt == attempts - 1 or not _is_conflict(err):
                raise
            log.debug("store write conflict (attempt %d): %s", attempt + 1, err)
            time.sleep(0.05 * (2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


@dataclass
class StorageStats:
    """How a store lies on disk: per table rows, fragments and versions, and the file count."""

    rows: dict[str, int] = field(default_factory=dict)
    fragments: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    #: Files under the store folder; None for a store that is not a local folder (object store).
    files: int | None = None

    def summary(self) -> str:
        """One line per table, then the file count."""
        lines = [f"{name}: {self.rows[name]} rows, {self.fragments[name]} fragments, "
                 f"{self.versions[name]} versions" for name in self.rows]
        if self.files is not None:
            lines.append(f"files: {self.files}")
        return "\n".join(lines)


class StoreTables:
    """Lazily opened tables of one LanceDB database.

    Args:
        uri: Database folder; created on first write.
        embedding_capacity: Embedding size of a ``frames`` table this object creates; replaced
            by the capacity of an existing table when that is opened.
        read_only: Read the Lance datasets directly, without ``lancedb`` (fast to import);
            writes raise :class:`StoreError`.
    """

    def __init__(self, uri: str | Path, embedding_capacity: int | None = None,
                 read_only: bool = False) -> None:
        self.uri = str(uri)
        self.embedding_capacity = embedding_capacity
        self.read_only = read_only
        self._db = None
        if not read_only:
            import lancedb

            # Interval 0: every read sees other processes' commits (two writers share one store).
            self._db = lancedb.connect(self.uri, read_consistency_interval=timedelta(0))
        self._tables: dict[str, Any] = {}

    def _dataset(self, name: str) -> Any | None:
        """Table ``name`` as a Lance dataset at its latest version, read without ``lancedb``."""
        import lance

        path = Path(self.uri) / f"{name}.lance"  # LanceDB's layout of a local database
        return lance.dataset(str(path)) if (path / "_versions").is_dir() else None

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise StoreError(f"memory store {self.uri} was opened read-only; cannot {what}.")

    def _open(self, name: str) -> Any | None:
        if name in self._tables:
            return self._tables[name]
        if self.read_only:
            table = self._dataset(name)
        elif name in self._db.list_tables().tables:
            try:
                table = self._db.open_table(name)
            except ValueError as err:  # listed while another process is still creating it
                if "not found" not in str(err):
                    raise
                table = None
        else:
            table = None
        if table is None:
            return None
        check_version(name, self.uri, table.schema)
        if name == "frames":
            capacity = table.schema.field("embedding").type.list_size
            if self.embedding_capacity not in (None, capacity):
                log.warning("memory store %s: frames were created with embedding capacity %d; "
                            "ignoring embedding_capacity=%d", self.uri, capacity,
                            self.embedding_capacity)
            self.embedding_capacity = capacity
        self._tables[name] = table
        return table

    def _create(self, name: str, schema: pa.Schema) -> Any:
        table = self._open(name)
        if table is not None:
            return table
        self._writable(f"create table {name!r}")
        try:
            self._db.create_table(name, schema=schema, exist_ok=True)
        except (ValueError, OSError, RuntimeError) as err:  # another process won the race
            log.debug("create_table(%s) raced: %s", name, err)
        table = self._open(name)
        if table is None:
            raise StoreError(f"memory store {self.uri}: could not create table {name!r}")
        return table

    def _frames_table(self) -> Any:
        if self._open("frames") is None:
            capacity = self.embedding_capacity or DEFAULT_EMBEDDING_CAPACITY
            try:
                schema = frames_schema(capacity)
            except ValueError as err:
                raise StoreError(f"memory store {self.uri}: {err}") from err
            return self._create("frames", schema)
        return self._open("frames")

    def scan(
        self, name: str, where: str | None = None, columns: list[str] | None = None
    ) -> pa.Table:
        """All rows of table ``name`` matching the Lance filter ``where`` (empty if absent)."""
        if name not in TABLES:
            raise StoreError(f"unknown table {name!r}; the store has {', '.join(TABLES)}")
        table = self._open(name)
        if table is None:
            schema = {"runs": RUNS_SCHEMA, "retrievals": RETRIEVALS_SCHEMA}.get(name)
            schema = schema or frames_schema(self.embedding_capacity or DEFAULT_EMBEDDING_CAPACITY)
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        if self.read_only:
            return table.to_table(columns=columns, filter=where)
        query = table.search()
        if where is not None:
            query = query.where(where, prefilter=True)
        if columns is not None:
            query = query.select(columns)
        return query.limit(None).to_arrow()

    def lance_dataset(self, name: str) -> Any | None:
        """Table ``name`` as a pylance ``LanceDataset`` at its latest version (None if absent).

        For lazy scans that push columns and filters down (:mod:`lrag.memory.sql`); the
        dataset is a snapshot: rows committed after this call are not seen through it.
        """
        if name not in TABLES:
            raise StoreError(f"unknown table {name!r}; the store has {', '.join(TABLES)}")
        table = self._open(name)
        if table is None or self.read_only:
            return table
        return table.to_lance()

    def storage_stats(self) -> StorageStats:
        """Rows, fragments and versions of every table, and the files of a local store."""
        stats = StorageStats()
        for name in TABLES:
            table = self._open(name)
            if table is None:
                continue
            info = table.stats()
            stats.rows[name] = int(info["num_rows"])
            stats.fragments[name] = int(info["fragment_stats"]["num_fragments"])
            stats.versions[name] = len(table.list_versions())
        if os.path.isdir(self.uri):
            stats.files = sum(len(files) for _, _, files in os.walk(self.uri))
        return stats
