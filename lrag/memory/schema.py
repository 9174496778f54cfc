"""Table schemas and row types of the run memory (declared once, versioned).

Every table's Arrow schema carries ``lrag.schema_version`` in its metadata; a store whose tables
are newer than :data:`SCHEMA_VERSION` is refused by :class:`lrag.memory.store.MemoryStore`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1
VERSION_KEY = b"lrag.schema_version"
RUN_STATUSES = ("running", "complete", "failed")
RunStatus = Literal["running", "complete", "failed"]
TABLES = ("runs", "frames", "retrievals")


def _schema(fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={VERSION_KEY: str(SCHEMA_VERSION).encode()})


RUNS_SCHEMA = _schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("created", pa.timestamp("us", tz="UTC")),
    pa.field("config_yaml", pa.string()),
    pa.field("backbone", pa.string()),
    pa.field("checkpoint_hashes", pa.string()),  # JSON object: name -> hash
    pa.field("prompts", pa.list_(pa.string())),
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
    """Fixed-size float32 vector type of ``dim`` components (the embedder's output size)."""
    if dim <= 0:
        raise ValueError(f"embedding_dim must be a positive int, got {dim!r}")
    return pa.list_(pa.float32(), dim)


def frames_schema(dim: int) -> pa.Schema:
    """Schema of the ``frames`` table for embeddings of size ``dim``."""
    return _schema([
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("frame_index", pa.int32()),
        pa.field("block_index", pa.int32()),
        pa.field("embedding", vector(dim)),
        pa.field("shard", pa.string()),  # latent location: shard file + sample key
        pa.field("key", pa.string()),
        pa.field("preview_png", pa.binary()),
        pa.field("created", pa.timestamp("us", tz="UTC")),
    ])


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


@dataclass
class FrameRow:
    """One generated latent frame: its descriptor and where its latent lives."""

    run_id: str
    frame_index: int
    block_index: int
    embedding: np.ndarray  # float32 [D]
    shard: str
    key: str
    preview_png: bytes = b""


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
    """A ``runs`` row with its JSON checkpoint hashes decoded into a dict."""
    row = dict(row)
    row["checkpoint_hashes"] = json.loads(row["checkpoint_hashes"] or "{}")
    return row


def frame_dict(row: FrameRow, run_id: str, block: int) -> dict:
    """``row`` as a ``frames`` record; refuses a row of another run or block."""
    if row.run_id != run_id or row.block_index != block:
        raise ValueError(
            f"FrameRow(run {row.run_id!r}, block {row.block_index}) passed to "
            f"add_block(run {run_id!r}, block {block}); rows must belong to that block."
        )
    return {
        "run_id": run_id, "frame_index": int(row.frame_index), "block_index": int(block),
        "embedding": np.asarray(row.embedding, dtype=np.float32).reshape(-1),
        "shard": row.shard, "key": row.key, "preview_png": bytes(row.preview_png),
        "created": now(),
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
