"""The run memory on disk: one LanceDB database with ``runs``, ``frames`` and ``retrievals``.

Schemas live in :mod:`lrag.memory.schema` and carry a schema version, so a store written by
another lrag schema is refused instead of misread. One store holds runs of every descriptor size:
vectors are zero-padded to the store's embedding capacity and search only compares frames of the
same ``embedding_dim`` and ``descriptor``. Blocks are written as they finish; a block's ``frames``
rows are appended *last*, in one commit, so their presence marks the block as complete
(:meth:`MemoryStore.completed_blocks`) even if the process dies half-way through
:meth:`MemoryStore.add_block`.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lrag.memory.schema import (
    RETRIEVALS_SCHEMA,
    RUN_STATUSES,
    RUNS_SCHEMA,
    SCHEMA_VERSION,
    FrameRow,
    RetrievalRow,
    RunInfo,
    RunStatus,
    StoreError,
    decode_run,
    frame_dict,
    frames_schema,
    now,
    pad_vector,
    retrieval_dict,
    unpad_embeddings,
)
from lrag.memory.tables import StorageStats, StoreTables, sql_quote, with_retries

__all__ = ["MemoryStore"]

log = logging.getLogger(__name__)

#: Versions younger than this survive compaction, so a reader that opened one (a SQL query, a
#: concurrent run) can finish; longer than the SQL timeout's default.
DEFAULT_KEEP_VERSIONS = timedelta(minutes=5)
#: Scalar indexes built with the vector index: B-tree for many values, bitmap for few
#: (``lancedb.index`` class names; lancedb is imported only when an index is built).
_SCALAR_INDICES = {
    "frames": {"run_id": "BTree", "descriptor": "Bitmap", "embedding_dim": "Bitmap"},
    "retrievals": {"run_id": "BTree"},
}


class MemoryStore(StoreTables):
    """Reader and writer of one LanceDB run memory.

    Args:
        uri: Database folder (e.g. ``runs/memory.lancedb``); created on first write.
        embedding_capacity: Largest embedding size the ``frames`` table holds; used only when
            this store creates the table (default 1024, the reference AE's latent_dim). An
            existing table keeps the capacity it was made with (``embedding_capacity`` then
            reports it). Smaller embeddings are zero-padded; larger ones are refused.
        index_min_rows: Build the ANN index on ``frames.embedding`` once the table has this
            many rows (IVF-PQ needs several hundred rows to train; below that search is exact).
        index_type: LanceDB vector index type, e.g. ``"IVF_PQ"`` or ``"IVF_FLAT"``.
        nprobes: IVF partitions an indexed search visits (more: higher recall, slower).
        refine_factor: An indexed search re-ranks ``k * refine_factor`` PQ candidates with the
            exact vectors (more: higher recall, slower). Defaults measured by
            ``benchmarks/store_scale.py`` (recall@10 >= 0.95 at 1 M frames).
        read_only: Read without ``lancedb`` (see :class:`StoreTables`); for quick inspection
            (``lrag memory runs|show|sql``). Writes, compaction and search then raise.
    """

    def __init__(
        self,
        uri: str | Path,
        embedding_capacity: int | None = None,
        index_min_rows: int = 4096,
        index_type: str = "IVF_PQ",
        nprobes: int = 20,
        refine_factor: int = 10,
        read_only: bool = False,
    ) -> None:
        super().__init__(uri, embedding_capacity, read_only)
        self.index_min_rows = index_min_rows
        self.index_type = index_type
        self.nprobes = nprobes
        self.refine_factor = refine_factor

    # -- runs -----------------------------------------------------------------------------
    def start_run(self, info: RunInfo) -> None:
        """Record a new run with status ``running``; refuses an id that already exists."""
        self._writable("start a run")
        if not info.run_id:
            raise StoreError("RunInfo.run_id is empty; give the run a non-empty id.")
        if self.get_run(info.run_id) is not None:
            raise StoreError(
                f"memory store {self.uri}: run {info.run_id!r} already exists; resume it "
                "(`lrag predict ... --resume RUN`) or choose another run id."
            )
        row = {
            "run_id": info.run_id, "created": now(), "config_yaml": info.config_yaml,
            "backbone": info.backbone, "checkpoint_hashes": json.dumps(info.checkpoint_hashes),
            "prompts": list(info.prompts), "prompt_schedule": json.dumps(list(info.prompt_schedule)),
            "seed": int(info.seed),
            "frames_planned": int(info.frames_planned), "frames_done": 0,
            "status": "running", "schema_version": SCHEMA_VERSION,
        }
        runs = self._create("runs", RUNS_SCHEMA)
        with_retries(lambda: runs.add(pa.Table.from_pylist([row], schema=RUNS_SCHEMA)))

    def _require_run(self, run_id: str) -> None:
        if self.get_run(run_id) is None:
            raise StoreError(
                f"memory store {self.uri}: unknown run {run_id!r}; list runs with "
                "`lrag memory runs --db ...`."
            )

    def set_status(self, run_id: str, status: RunStatus) -> None:
        """Set a run's status; ``complete`` also builds the vector index when large enough."""
        if status not in RUN_STATUSES:
            raise StoreError(f"status {status!r} is not one of {', '.join(RUN_STATUSES)}")
        self._writable("set a run's status")
        self._require_run(run_id)
        runs = self._open("runs")
        where = f"run_id = {sql_quote(run_id)}"
        # The counter is re-derived from the rows with every status change, so a kill between a
        # block's rows and its counter update is repaired by the next status change.
        done = self._frames_done(where).get(run_id, 0)
        with_retries(lambda: runs.update(where=where, values={"status": status,
                                                              "frames_done": int(done)}))
        if status == "complete":
            self.ensure_index()

    def get_run(self, run_id: str) -> dict | None:
        """The ``runs`` row of ``run_id`` as a dict (hashes decoded), or None if unknown.

        ``frames_done`` is counted from the run's ``frames`` rows (see :meth:`_frames_done`).
        """
        where = f"run_id = {sql_quote(run_id)}"
        rows = self.scan("runs", where).to_pylist()
        if not rows:
            return None
        row = decode_run(rows[0])
        row["frames_done"] = self._frames_done(where).get(run_id, 0)
        return row

    def list_runs(self) -> list[dict]:
        """All runs, oldest first (``frames_done`` counted from the ``frames`` rows)."""
        rows = [decode_run(r) for r in self.scan("runs", None).to_pylist()]
        done = self._frames_done(None)
        for row in rows:
            row["frames_done"] = done.get(row["run_id"], 0)
        return sorted(rows, key=lambda r: (r["created"], r["run_id"]))

    def _frames_done(self, where: str | None) -> dict[str, int]:
        """Frames rows per run: the truth behind ``runs.frames_done``, which a kill between a
        block's rows and the counter update can leave behind (the column is a cache)."""
        ids = self.scan("frames", where, ["run_id"])["run_id"]
        counts = pc.value_counts(ids).to_pylist() if len(ids) else []
        return {c["values"]: int(c["counts"]) for c in counts}

    # -- blocks ---------------------------------------------------------------------------
    def add_block(
        self,
        run_id: str,
        block: int,
        frames: Sequence[FrameRow],
        retrievals: Sequence[RetrievalRow] = (),
    ) -> None:
        """Write one finished block; rewriting a block replaces its rows (resume-safe).

        Order matters for crash consistency: old frames rows go first (the block is no longer
        complete), then old retrievals; new retrievals are appended before the new frames, so
        a block whose frames are present always has its retrievals too.
        """
        self._writable("add a block")
        self._require_run(run_id)
        if not frames:
            raise StoreError(f"add_block(run {run_id!r}, block {block}): no frames given")
        frames_tbl = self._frames_table()
        capacity = frames_tbl.schema.field("embedding").type.list_size
        self._check_frames(run_id, block, frames, capacity)
        frame_table = pa.Table.from_pylist(
            [frame_dict(r, run_id, block, capacity) for r in frames], schema=frames_tbl.schema,
        )
        retrieval_rows = [retrieval_dict(r, run_id, block) for r in retrievals]
        retr_tbl = self._create("retrievals", RETRIEVALS_SCHEMA)
        where = f"run_id = {sql_quote(run_id)} AND block_index = {int(block)}"
        with_retries(lambda: frames_tbl.delete(where))
        with_retries(lambda: retr_tbl.delete(where))
        if retrieval_rows:
            data = pa.Table.from_pylist(retrieval_rows, schema=RETRIEVALS_SCHEMA)
            with_retries(lambda: retr_tbl.add(data))
        with_retries(lambda: frames_tbl.add(frame_table))
        done = frames_tbl.count_rows(f"run_id = {sql_quote(run_id)}")
        runs = self._open("runs")
        with_retries(lambda: runs.update(
            where=f"run_id = {sql_quote(run_id)}", values={"frames_done": int(done)}
        ))

    def _check_frames(
        self, run_id: str, block: int, frames: Sequence[FrameRow], capacity: int
    ) -> None:
        """One run keeps one descriptor kind and size, which must fit the store's capacity."""
        kinds = {(int(np.asarray(r.embedding).size), r.descriptor) for r in frames}
        if len(kinds) != 1:
            raise StoreError(
                f"add_block(run {run_id!r}, block {block}): frames mix embedding sizes/"
                f"descriptors {sorted(kinds)}; one run uses one descriptor."
            )
        dim, descriptor = next(iter(kinds))
        if dim > capacity:
            raise StoreError(
                f"memory store {self.uri}: run {run_id!r} has {dim}-dim embeddings "
                f"(descriptor {descriptor!r}) but the store holds at most {capacity} dims; use "
                f"a new store folder (`store_uri` / --db) made with embedding_capacity >= {dim}, "
                f"or an embedder of at most {capacity} dims."
            )
        where = f"run_id = {sql_quote(run_id)} AND block_index <> {int(block)}"
        earlier = (self._open("frames").search().where(where, prefilter=True)
                   .select(["embedding_dim", "descriptor"]).limit(1).to_arrow().to_pylist())
        if earlier and (earlier[0]["embedding_dim"], earlier[0]["descriptor"]) != (dim, descriptor):
            raise StoreError(
                f"memory store {self.uri}: run {run_id!r} was written with {earlier[0]['descriptor']!r} "
                f"({earlier[0]['embedding_dim']} dims) but block {block} has {descriptor!r} ({dim} "
                "dims); resume it with the embedder it started with, or start a new run."
            )

    def completed_blocks(self, run_id: str) -> int:
        """Number of leading blocks whose frames are all present (where a resume starts).

        Derived from the ``frames`` table, not ``runs.frames_done``: a block's frames are one
        commit, and its frame indices must continue the previous block's without a gap.
        """
        rows = self.scan(
            "frames", f"run_id = {sql_quote(run_id)}", ["block_index", "frame_index"]
        ).to_pydict()
        by_block: dict[int, list[int]] = {}
        for b, f in zip(rows["block_index"], rows["frame_index"], strict=False):
            by_block.setdefault(b, []).append(f)
        count, next_frame = 0, 0
        while count in by_block:
            indices = sorted(by_block[count])
            if indices != list(range(next_frame, next_frame + len(indices))):
                break
            next_frame += len(indices)
            count += 1
        return count

    def frames(self, run_id: str, with_previews: bool = True) -> pa.Table:
        """The run's ``frames`` rows, ordered by frame index, with unpadded embeddings.

        ``embedding`` is a fixed-size float32 vector of the run's true ``embedding_dim`` (the
        store pads it to its capacity on disk; :meth:`scan` and SQL show the padded column).
        """
        columns = None if with_previews else [
            f.name for f in frames_schema(1) if f.name != "preview_png"
        ]
        table = self.scan("frames", f"run_id = {sql_quote(run_id)}", columns)
        return unpad_embeddings(table.sort_by("frame_index"))

    def retrievals(self, run_id: str) -> pa.Table:
        """The run's ``retrievals`` rows, ordered by block then rank."""
        table = self.scan("retrievals", f"run_id = {sql_quote(run_id)}")
        return table.sort_by([("block_index", "ascending"), ("rank", "ascending")])

    # -- maintenance ----------------------------------------------------------------------
    def compact(
        self, keep_versions: timedelta = DEFAULT_KEEP_VERSIONS
    ) -> tuple[StorageStats, StorageStats]:
        """Merge the small fragments written per block, prune old versions, update the index.

        Safe while other processes read or write: compaction commits a new version like any
        write (retried on conflicts), and only versions older than ``keep_versions`` lose
        their files, so a reader that opened a recent version can finish. The vector index is
        extended with rows added since it was built, or built once ``frames`` is large enough.

        Args:
            keep_versions: Keep versions (and their files) younger than this. ``timedelta(0)``
                keeps only the latest; use it only while no other process uses the store.

        Returns:
            Storage statistics before and after.
        """
        if keep_versions < timedelta(0):
            raise StoreError(f"keep_versions must be >= 0, got {keep_versions}")
        self._writable("compact")
        before = self.storage_stats()
        for name in before.rows:
            table = self._open(name)
            with warnings.catch_warnings():  # lancedb warns about 0; the caller chose it
                warnings.simplefilter("ignore", UserWarning)
                with_retries(lambda t=table: t.optimize(cleanup_older_than=keep_versions))
        self.ensure_index()
        return before, self.storage_stats()

    # -- vector search --------------------------------------------------------------------
    def has_index(self) -> bool:
        """Whether ``frames.embedding`` has a vector index."""
        table = self._open("frames")
        if table is None:
            return False
        return any("embedding" in idx.columns for idx in table.list_indices())

    def ensure_index(self, force: bool = False) -> bool:
        """Build the cosine ANN index once ``frames`` has ``index_min_rows`` rows.

        Scalar indexes come with it: ``run_id`` of ``frames`` and ``retrievals`` (block writes,
        resume and SQL filter by run) and ``descriptor``/``embedding_dim`` (search's filter).

        Args:
            force: Rebuild even if an index already exists (e.g. after many appends).

        Returns:
            Whether an index exists afterwards.
        """
        self._writable("build an index")
        table = self._open("frames")
        if table is None:
            return False
        rows = table.count_rows()
        if rows < self.index_min_rows or (self.has_index() and not force):
            return self.has_index()
        from lancedb.index import IvfFlat, IvfPq

        dim = table.schema.field("embedding").type.list_size
        # 4-dim PQ sub-vectors: with dim // 8 the re-ranked candidates missed true neighbours
        # (recall@10 0.93 on 32-dim random vectors); dim // 4 reached 1.0 at the same speed.
        sub_vectors = max(1, dim // 4)
        while dim % sub_vectors:
            sub_vectors -= 1
        partitions = max(1, int(math.sqrt(rows)))
        if self.index_type == "IVF_PQ":
            config = IvfPq(distance_type="cosine", num_partitions=partitions,
                           num_sub_vectors=sub_vectors)
        elif self.index_type == "IVF_FLAT":
            config = IvfFlat(distance_type="cosine", num_partitions=partitions)
        else:
            raise StoreError(f"index_type {self.index_type!r} is not one of IVF_PQ, IVF_FLAT")
        log.info("building %s index on %d frames (dim %d)", self.index_type, rows, dim)
        with_retries(lambda: table.create_index("embedding", config=config, replace=True))
        self._ensure_scalar_indices(force)
        return True

    def _ensure_scalar_indices(self, force: bool) -> None:
        import lancedb.index

        for name, columns in _SCALAR_INDICES.items():
            table = self._open(name)
            if table is None:
                continue
            have = {c for idx in table.list_indices() for c in idx.columns}
            for column, kind in columns.items():
                if force or column not in have:
                    with_retries(lambda t=table, c=column, k=kind: t.create_index(
                        c, config=getattr(lancedb.index, k)(), replace=True))

    def search(
        self,
        vector: np.ndarray,
        k: int = 10,
        run_id: str | None = None,
        descriptor: str | None = None,
        exact: bool = False,
    ) -> list[dict]:
        """Nearest stored frames to ``vector`` [D] by cosine, across all runs or one run.

        Only frames with the query's size ``D`` and ``descriptor`` are compared (other
        descriptors live in other embedding spaces).

        Args:
            vector: Unpadded query embedding ``[D]``.
            k: Number of neighbours.
            run_id: Search only this run's frames.
            descriptor: The query's descriptor (``FrameRow.descriptor``); may be left out when
                the store holds one descriptor of size ``D``.
            exact: Compare against every stored vector even when an index exists (the ground
                truth that the index's recall is measured against).

        Returns:
            Dicts with ``run_id, frame_index, block_index, embedding_dim, descriptor,
            distance`` (cosine distance) and ``score`` (cosine similarity = 1 - distance),
            best first.
        """
        self._writable("search vectors")
        table = self._open("frames")
        if table is None:
            return []
        query_vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        dim = query_vec.shape[0]
        if dim == 0 or dim > self.embedding_capacity:
            raise StoreError(
                f"search vector has {dim} dims; frames in {self.uri} have 1 to "
                f"{self.embedding_capacity} dims"
            )
        descriptor = descriptor if descriptor is not None else self._only_descriptor(dim)
        if descriptor is None:
            return []
        space = f"embedding_dim = {dim} AND descriptor = {sql_quote(descriptor)}"
        where = space if run_id is None else f"{space} AND run_id = {sql_quote(run_id)}"
        indexed = not exact and self.has_index()
        # An indexed search with a prefilter resolves it over every row (~4x its cost at 1 M
        # frames); when every frame shares the query's space, the usual one-embedder store,
        # filtering the results instead is the same and cheap. Counting uses the scalar index.
        prefilter = not indexed or run_id is not None or table.count_rows(f"NOT ({space})") > 0
        query = (
            table.search(pad_vector(query_vec, self.embedding_capacity),
                         vector_column_name="embedding")
            .distance_type("cosine")
            .where(where, prefilter=prefilter)
            .select(["run_id", "frame_index", "block_index", "embedding_dim", "descriptor",
                     "_distance"])
            .limit(k)
        )
        if exact:
            query = query.bypass_vector_index()
        elif indexed:
            query = query.nprobes(self.nprobes).refine_factor(self.refine_factor)
        rows = query.to_arrow().to_pylist()
        for row in rows:
            row["distance"] = float(row.pop("_distance"))
            row["score"] = 1.0 - row["distance"]
        return rows

    def _only_descriptor(self, dim: int) -> str | None:
        found = self.scan("frames", f"embedding_dim = {dim}", ["descriptor"])["descriptor"]
        names = sorted(set(found.to_pylist()))
        if len(names) > 1:
            raise StoreError(
                f"memory store {self.uri}: {dim}-dim frames come from descriptors {names}; pass "
                "search(..., descriptor=NAME) so frames of different embedders are not mixed."
            )
        return names[0] if names else None
