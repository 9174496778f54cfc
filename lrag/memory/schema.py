"""Table schemas and row types of the run memory (declared once, versioned).

Every table's Arrow schema carries ``lrag.schema_version`` in its metadata; a store whose tables
have another version than :data:`SCHEMA_VERSION` is refused by
:class:`lrag.memory.store.MemoryStore`.

One store holds runs of any descriptor size: ``frames.embedding`` is a fixed-size vector of the
store-wide *capacity* (recorded as ``lrag.embedding_capacity`` in the table metadata, so the
vector index stays possible), each row keeps its true ``embedding_dim`` and ``descriptor`` and
its vector is zero-padded. Zero padding leaves the cosine similarity of two vectors of the same
original size unchanged; rows of different sizes or descriptors are never compared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 2
VERSION_KEY = b"lrag.schema_version"
CAPACITY_KEY = b"lrag.embedding_capacity"
#: Default ``frames.embedding`` capacity: the reference AE embedder's latent_dim.
DEFAULT_EMBEDDING_CAPACITY = 1024
#: ``FrameRow.descriptor`` when the writer does not say how the embedding was made.
UNSPECIFIED_DESCRIPTOR = "unspecified"
RUN_STATUSES = ("running", "complete", "failed")
RunStatus = Literal["running", "complete", "failed"]
TABLES = ("runs", "frames", "retrievals")


class StoreError(RuntimeError):
    """A memory store cannot be used as asked (unknown run, bad row, wrong schema)."""


class SchemaVersionError(StoreError):
    """A table was written with a schema version this lrag does not understand."""


def check_version(name: str, uri: str, schema: pa.Schema) -> None:
    """Refuse table ``name`` of the store at ``uri`` unless its schema is this lrag's version."""
    raw = (schema.metadata or {}).get(VERSION_KEY)
    try:
        version = int(raw) if raw is not None else None
    except ValueError:
        version = None
    if version is not None and version < SCHEMA_VERSION:
        raise SchemaVersionError(
            f"memory store {uri}: table {name!r} has schema version {version}, written by an "
            f"older lrag; this lrag needs version {SCHEMA_VERSION} (frames of any embedding "
            "size in one store). Point the store at a new folder (`--db NEW` for `lrag memory`, "
            "`--model.init_args.store_uri NEW` for `lrag predict`), or move the old folder "
            "aside; the old runs stay readable with the lrag that wrote them."
        )
    if version is None or version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"memory store {uri}: table {name!r} has schema version {raw!r}, but this lrag "
            f"understands versions up to {SCHEMA_VERSION}; upgrade lrag or point --db at "
            "another store."
        )


def _schema(fields: list[pa.Field], extra: dict[bytes, bytes] | None = None) -> pa.Schema:
    return pa.schema(fields, metadata={VERSION_KEY: str(SCHEMA_VERSION).encode(), **(extra or {})})


RUNS_SCHEMA = _schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("created", pa.timestamp("us", tz="UTC")),
    pa.field("config_yaml", pa.string()),
    pa.field("backbone", pa.string()),
    pa.field("checkpoint_hashes", pa.string()),  # JSON object: name -> hash
    pa.field("prompts", pa.list_(pa.string())),
    pa.field("prompt_schedule", pa.string()),  # JSON list of {frame, prompt}; "[]" = one prompt
    pa.field("seed", pa.int64()),
    pa.field("frames_planned", pa.int32()),
    pa.field("frames_done", pa.int32()),
    pa.field("status", pa.string()),
    pa.field("schema_version", pa.int32()),
])

RETRIEVALS_SCHEMA = _schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("block_index", pa.int32()),
    pa.field("query_frame", pa.int32()),
    pa.field("rank", pa.int32()),
    pa.field("retrieved_frame", pa.int32()),
    pa.field("score", pa.float32()),
])


def vector(dim: int) -> pa.DataType:
    """Fixed-size float32 vector type of ``dim`` components."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"embedding capacity must be a positive int, got {dim!r}")
    return pa.list_(pa.float32(), dim)


def frames_schema(capacity: int = DEFAULT_EMBEDDING_CAPACITY) -> pa.Schema:
    """Schema of the ``frames`` table whose ``embedding`` vectors hold up to ``capacity`` dims."""
    return _schema([
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("frame_index", pa.int32()),
        pa.field("block_index", pa.int32()),
        pa.field("embedding", vector(capacity)),  # zero-padded from embedding_dim to capacity
        pa.field("embedding_dim", pa.int32()),  # true size of this row's descriptor
        pa.field("descriptor", pa.string()),  # how it was made, e.g. "avg_pool", "ae:<sha12>"
        pa.field("shard", pa.string()),  # latent location: shard file + sample key
        pa.field("key", pa.string()),
        pa.field("preview_png", pa.binary()),
        pa.field("created", pa.timestamp("us", tz="UTC")),
    ], {CAPACITY_KEY: str(capacity).encode()})


@dataclass
class RunInfo:
    """What a run records when it starts (one run = one generated video)."""

    run_id: str
    config_yaml: str
    backbone: str
    checkpoint_hashes: dict[str, str] = field(default_factory=dict)
    prompts: list[str] = field(default_factory=list)
    seed: int = 0
    frames_planned: int = 0
    #: Prompt switches ``[{"frame": int, "prompt": str}, ...]`` (frame = first latent frame the
    #: prompt applies to); empty for a single-prompt run.
    prompt_schedule: list[dict] = field(default_factory=list)


@dataclass
class FrameRow:
    """One generated latent frame: its descriptor and where its latent lives.

    ``descriptor`` names how ``embedding`` was computed (e.g. ``"avg_pool"`` or
    ``"ae:<sha256[:12]>"`` of the embedder checkpoint); search compares only rows with the same
    descriptor and size, so two embedders of equal output size are not mixed.
    """

    run_id: str
    frame_index: int
    block_index: int
    embedding: np.ndarray  # float32 [D], D <= the store's embedding capacity
    shard: str
    key: str
    preview_png: bytes = b""
    descriptor: str = UNSPECIFIED_DESCRIPTOR


@dataclass
class RetrievalRow:
    """One retrieved frame of one block's query (rank 0 = best)."""

    run_id: str
    block_index: int
    query_frame: int
    rank: int
    retrieved_frame: int
    score: float


def now() -> datetime:
    """Timezone-aware UTC now (the ``created`` columns)."""
    return datetime.now(timezone.utc)


def decode_run(row: dict) -> dict:
    """A ``runs`` row with its JSON checkpoint hashes (dict) and prompt schedule (list) decoded."""
    row = dict(row)
    row["checkpoint_hashes"] = json.loads(row["checkpoint_hashes"] or "{}")
    row["prompt_schedule"] = json.loads(row.get("prompt_schedule") or "[]")
    return row


def pad_vector(vector: np.ndarray, capacity: int) -> np.ndarray:
    """``vector`` as float32 ``[capacity]``, zero-padded at the end.

    Raises:
        ValueError: The vector is empty or longer than ``capacity``.
    """
    flat = np.asarray(vector, dtype=np.float32).reshape(-1)
    if flat.shape[0] == 0 or flat.shape[0] > capacity:
        raise ValueError(
            f"embedding has {flat.shape[0]} dims but the store's embedding capacity is "
            f"{capacity}; use an embedder of at most {capacity} dims, or a new store made "
            f"with MemoryStore(uri, embedding_capacity={max(flat.shape[0], 1)}) (a new --db / "
            "store_uri folder)."
        )
    if flat.shape[0] == capacity:
        return flat
    return np.concatenate([flat, np.zeros(capacity - flat.shape[0], np.float32)])


def frame_dict(row: FrameRow, run_id: str, block: int, capacity: int) -> dict:
    """``row`` as a ``frames`` record padded to ``capacity``; refuses another run's/block's row."""
    if row.run_id != run_id or row.block_index != block:
        raise ValueError(
            f"FrameRow(run {row.run_id!r}, block {row.block_index}) passed to "
            f"add_block(run {run_id!r}, block {block}); rows must belong to that block."
        )
    if not row.descriptor:
        raise ValueError(
            f"FrameRow(run {run_id!r}, frame {row.frame_index}).descriptor is empty; name how "
            "the embedding was made (e.g. 'avg_pool') or leave the default."
        )
    dim = int(np.asarray(row.embedding).size)
    return {
        "run_id": run_id, "frame_index": int(row.frame_index), "block_index": int(block),
        "embedding": pad_vector(row.embedding, capacity), "embedding_dim": dim,
        "descriptor": str(row.descriptor), "shard": row.shard, "key": row.key,
        "preview_png": bytes(row.preview_png), "created": now(),
    }


def retrieval_dict(row: RetrievalRow, run_id: str, block: int) -> dict:
    """``row`` as a ``retrievals`` record; refuses a row of another run or block."""
    if row.run_id != run_id or row.block_index != block:
        raise ValueError(
            f"RetrievalRow(run {row.run_id!r}, block {row.block_index}) passed to "
            f"add_block(run {run_id!r}, block {block}); rows must belong to that block."
        )
    return {
        "run_id": run_id, "block_index": int(block), "query_frame": int(row.query_frame),
        "rank": int(row.rank), "retrieved_frame": int(row.retrieved_frame),
        "score": float(row.score),
    }


def unpad_embeddings(table: pa.Table) -> pa.Table:
    """``table`` with ``embedding`` cut back to each row's ``embedding_dim``.

    A fixed-size vector of the true size when all rows share one size (always so for one run's
    frames), else a variable-size list. Tables without those columns are returned unchanged.
    """
    names = table.column_names
    if "embedding" not in names or "embedding_dim" not in names or table.num_rows == 0:
        return table
    column = table["embedding"].combine_chunks()
    dims = table["embedding_dim"].to_numpy()
    padded = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
    if len(set(dims.tolist())) == 1:
        dim = int(dims[0])
        unpadded = pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(padded[:, :dim]).reshape(-1), pa.float32()), dim)
    else:
        unpadded = pa.array([row[: int(d)] for row, d in zip(padded, dims, strict=True)],
                            pa.list_(pa.float32()))
    return table.set_column(names.index("embedding"), "embedding", unpadded)
