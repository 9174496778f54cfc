"""How ``lrag memory`` prints and writes query results: terminal tables, CSV, JSON, Parquet."""

from __future__ import annotations

import base64
import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
from rich.console import Console
from rich.table import Table

MAX_LIST_ITEMS = 4  # vectors are long; the terminal table shows their head only


def is_nested(type_: pa.DataType) -> bool:
    """Whether a column of ``type_`` holds lists, structs or maps (no CSV cell for those)."""
    return pa.types.is_list(type_) or pa.types.is_fixed_size_list(type_) or \
        pa.types.is_large_list(type_) or pa.types.is_struct(type_) or pa.types.is_map(type_)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: bytes base64, times ISO text, decimals numbers."""
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Decimal):  # DuckDB sums of integers are HUGEINT -> decimal
        return int(value) if value == value.to_integral_value() else float(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def to_json(table: pa.Table) -> str:
    """``table`` as a JSON array of row objects, one row per line."""
    rows = [json.dumps(jsonable(row), default=str) for row in table.to_pylist()]
    return "[\n" + ",\n".join(rows) + "\n]\n"


def to_csv(table: pa.Table) -> str:
    """``table`` as CSV text; nested cells become JSON, bytes base64."""
    columns = {}
    for name, column in zip(table.column_names, table.columns, strict=False):
        if is_nested(column.type):
            columns[name] = pa.array([None if v is None else json.dumps(jsonable(v))
                                      for v in column.to_pylist()], pa.string())
        elif pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            columns[name] = pa.array([None if v is None else jsonable(v)
                                      for v in column.to_pylist()], pa.string())
        else:
            columns[name] = column
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(pa.table(columns) if columns else table, sink)
    return sink.getvalue().to_pybytes().decode()


def parquet_safe(table: pa.Table) -> pa.Table:
    """``table`` with list columns cast to types every Parquet writer accepts."""
    # DuckDB names list children "" which Parquet writers reject; cast to standard item names.
    fields = []
    for f in table.schema:
        if pa.types.is_fixed_size_list(f.type):
            f = f.with_type(pa.list_(f.type.value_type, f.type.list_size))
        elif pa.types.is_list(f.type):
            f = f.with_type(pa.list_(f.type.value_type))
        fields.append(f)
    return table.cast(pa.schema(fields))


def cell(value: Any) -> str:
    """Short terminal text of one value (bytes as their size, vectors as their head)."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        head = ", ".join(cell(v) for v in value[:MAX_LIST_ITEMS])
        more = f", … ({len(value)})" if len(value) > MAX_LIST_ITEMS else ""
        return f"[{head}{more}]"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def rich_table(table: pa.Table, title: str | None = None) -> Table:
    """``table`` as a rich terminal table."""
    view = Table(title=title, show_lines=False)
    for name in table.column_names:
        view.add_column(name, overflow="fold")
    for row in table.to_pylist():
        view.add_row(*(cell(v) for v in row.values()))
    return view


def print_table(table: pa.Table, title: str | None = None) -> None:
    """Print ``table`` to the terminal."""
    Console().print(rich_table(table, title))
