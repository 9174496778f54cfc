"""RetrievalMemory: the evicted-frame pool, its search and where its KV lives.

The KV cache hands every evicted frame's un-roped K/V to :meth:`RetrievalMemory.store`;
at the start of a block :meth:`retrieve` picks the top-K older frames by cosine
similarity of descriptors, and :meth:`gather` moves their K/V to the compute device
once for the whole block (all layers, all denoising calls).

The ``host`` and ``int8`` tiers keep K/V in a preallocated host ring
(:mod:`lrag.memory.kv_store`). The sampler calls :meth:`RetrievalMemory.plan` as soon as the
next block's query descriptor exists (before the context pass) and :meth:`~RetrievalMemory.prefetch`
right after enqueueing the context pass, so the copies overlap it and no host sync stalls the GPU.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from lrag.memory.descriptors import FrameDescriptors
from lrag.memory.key_descriptor import GeneratorKeys
from lrag.memory.kv_store import OffloadedKV, PlannedRetrieval, host_copy
from lrag.memory.ranking import RankRule
from lrag.memory.recompute import RecomputedKV, RecomputeFn
from lrag.nets.kv_cache import EvictedKV, MemoryKV

__all__ = ["DESCRIPTORS", "KV_TIERS", "RetrievalMemory", "RetrievalRecord"]

log = logging.getLogger(__name__)

DESCRIPTORS = ("avg_pool", "ae", "gen_keys")
KV_ORDERS = ("rank", "time")
KV_TIERS = ("device", "host", "int8", "recompute")
_OFFLOADED = ("host", "int8")


@dataclass
class RetrievalRecord:
    """One block's retrieval.

    Attributes:
        query_frame: First frame of the block (the query descriptor is the frame before it).
        frames: ``[B, k]`` global frame indices, most similar first.
        scores: ``[B, k]`` cosine similarities.
    """

    query_frame: int
    frames: Tensor
    scores: Tensor


@dataclass
class _Stored:
    """One evicted frame: K/V ``[layers, B, tokens, heads, head_dim]`` (device tier), or its
    host-ring ``row`` (host/int8 tiers), or nothing (recompute tier).

    ``offset`` is its spatial RoPE offset ``[B, 2]`` when the KV cache uses offsets.
    """

    k: Tensor | None
    v: Tensor | None
    offset: Tensor | None = None
    row: int = -1


class RetrievalMemory:
    """Top-K retrieval of evicted frames by descriptor similarity.

    Args:
        memory_size: K, frames retrieved per block; 0 is the native sliding-window
            baseline through the same code (evicted frames are dropped).
        recent_exclude: R, the newest evicted frames that are never candidates.
        descriptor: ``"avg_pool"`` (spatial mean of the latent frame, ``[C]``),
            ``"ae"`` (L2-normalised embedding of a frame embedder) or ``"gen_keys"`` (the
            backbone's own pooled self-attention keys, :mod:`lrag.memory.key_descriptor`;
            captured by the sampler in the context pass).
        embedder_path: Embedder checkpoint for ``descriptor: ae`` (reference ``.pt``,
            our ``.safetensors`` or a Lightning ``.ckpt``).
        kv_tier: Where evicted frames' K/V live: ``"device"`` (the compute device),
            ``"host"`` (a preallocated host ring, pinned when CUDA is available; bit-identical
            to ``device``), ``"int8"`` (the ring in int8 with per-token scales: half the bytes,
            lossy) or ``"recompute"`` (nothing stored; K/V are rebuilt from the clean latent by
            a hook that the sampler installs - an approximation, see :meth:`set_recompute`).
        host_budget_gib: Most host memory the ring may reserve (host/int8 tiers; None: no limit).
            Exceeding it raises an error naming this knob.
        host_chunk_frames: Frames the ring grows by when full. Growth pins memory inside the
            loop (a stall); :meth:`reserve` the whole video up front instead.
        diversity: Maximal-marginal-relevance weight of the top-K (``mmr_topk``): 0 = plain
            cosine top-K (the reference); higher values skip near-duplicates of a pick.
        store_stride: Keep every n-th evicted frame as a candidate (1 = every frame, the
            reference). Neighbouring frames are near-duplicates, so a stride bounds the pool's
            memory growth (stored K/V per generated frame / n) at little loss; the R newest
            evicted frames stay excluded by frame index, not by pool entry.
        key_layers: Backbone layers whose keys make the ``gen_keys`` descriptor (negative:
            from the last); None = ``[-1]``.
        key_query: ``gen_keys`` query: the newest frame's pooled ``"keys"`` or ``"queries"``.
        key_per_head: Normalise each head's pooled key before concatenating heads.
        rerank: Two-stage search: shortlist this many candidates with ``descriptor``, then
            keep the K whose generator keys (``key_layers``, ``key_query``) are most similar;
            None = one stage.
        sequence: Sequence matching: a candidate's score is the mean cosine of the newest
            ``sequence`` frames against the candidate and its predecessors (1 = one frame, the
            reference), so a match must also agree on the recent past.
        key_fusion: One stage scored by ``(1 - w) * cos(descriptor) + w * cos(generator keys)``
            with this ``w`` (0 = off); the keys as for ``gen_keys``. Not with ``gen_keys`` or
            ``rerank``.
    """

    def __init__(
        self,
        memory_size: int = 6,
        recent_exclude: int = 5,
        descriptor: str = "avg_pool",
        embedder_path: str | None = None,
        kv_tier: str = "host",
        host_budget_gib: float | None = None,
        host_chunk_frames: int = 16,
        diversity: float = 0.0,
        key_layers: list[int] | None = None,
        key_query: str = "keys",
        key_per_head: bool = True,
        rerank: int | None = None,
        store_stride: int = 1,
        key_fusion: float = 0.0,
        sequence: int = 1,
    ) -> None:
        if memory_size < 0 or recent_exclude < 0:
            raise ValueError(
                f"RetrievalMemory: memory_size ({memory_size}) and recent_exclude ({recent_exclude}) must be >= 0"
            )
        if descriptor not in DESCRIPTORS:
            raise ValueError(f"RetrievalMemory.descriptor must be one of {DESCRIPTORS}, got {descriptor!r}")
        if kv_tier not in KV_TIERS:
            raise ValueError(f"RetrievalMemory.kv_tier must be one of {KV_TIERS}, got {kv_tier!r}")
        if host_budget_gib is not None and host_budget_gib <= 0:
            raise ValueError(f"RetrievalMemory.host_budget_gib must be > 0 (or null), got {host_budget_gib}")
        if host_chunk_frames < 1:
            raise ValueError(f"RetrievalMemory.host_chunk_frames must be >= 1, got {host_chunk_frames}")
        if store_stride < 1:
            raise ValueError(f"RetrievalMemory.store_stride must be >= 1 (1 = keep every frame), got {store_stride}")
        if descriptor == "ae" and embedder_path is None:
            log.info("descriptor 'ae' without embedder_path: call set_embedder() before sampling")
        self.memory_size = memory_size
        self.recent_exclude = recent_exclude
        self.descriptor = descriptor
        self.embedder_path = embedder_path
        self.kv_tier = kv_tier
        self.store_stride = store_stride
        self.rule = RankRule(descriptor, memory_size, diversity, rerank, key_fusion, sequence)
        uses_keys = self.rule.uses_keys
        self.generator_keys = GeneratorKeys(key_layers or [-1], key_query, key_per_head) if uses_keys else None
        self._described = FrameDescriptors(descriptor, embedder_path, self.generator_keys)
        self.kv_order = "rank"
        self._rebuilt = RecomputedKV()
        self.first_candidate = 0
        budget = None if host_budget_gib is None else int(host_budget_gib * 2**30)
        self._offload = OffloadedKV(kv_tier == "int8", host_chunk_frames, budget) if kv_tier in _OFFLOADED else None
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------
    def reset(self) -> None:
        """Forget all frames (start of a new video)."""
        self._described.reset()
        self._pool_frames: list[int] = []  # global frame index per pool entry, chronological
        self._pool: list[_Stored] = []
        self._last_evicted = -1
        self.records: list[RetrievalRecord] = []
        self._plan: PlannedRetrieval | None = None
        self._taken: PlannedRetrieval | None = None
        self._rebuilt.forget()
        self._rebuilt.reset_counts()
        if getattr(self, "_offload", None) is not None:
            self._offload.clear()

    def set_embedder(self, embedder: nn.Module) -> None:
        """Use an in-memory embedder (must have ``encode([N,C,H,W]) -> [N,D]``)."""
        self._described.set_embedder(embedder)

    def exclude_before(self, frame: int) -> None:
        """Never keep frames with a global index below ``frame`` as candidates.

        A blank prefix (``sink_mode: blank``) shows no place: cosine retrieval of those zero
        frames (or the oracle's oldest-first fallback) would spend memory slots on nothing.
        Kept across :meth:`reset`, since it describes the sampler's setup, not one video.
        """
        if frame < 0:
            raise ValueError(f"RetrievalMemory.exclude_before: frame must be >= 0, got {frame}")
        self.first_candidate = frame

    def set_kv_order(self, order: str) -> None:
        """Order of the retrieved frames' K/V: ``"rank"`` (most similar first) or ``"time"``
        (oldest first, for ``memory_position: ordered``). Records keep the rank order."""
        if order not in KV_ORDERS:
            raise ValueError(f"RetrievalMemory.set_kv_order: choose one of {KV_ORDERS}, got {order!r}")
        self.kv_order = order

    def _kv_frames(self, frames: Tensor) -> Tensor:
        return frames.sort(dim=1).values if self.kv_order == "time" else frames

    def set_recompute(self, fn: RecomputeFn | None) -> None:
        """Install the K/V rebuild hook of the ``recompute`` tier (the sampler does this)."""
        self._rebuilt.fn = fn
        self._rebuilt.forget()

    def forget_recomputed(self) -> None:
        """Drop the recompute tier's GPU cache (its K/V depend on the prompt: call on a switch)."""
        self._rebuilt.forget()

    @property
    def pool_size(self) -> int:
        return len(self._pool)

    # -- descriptors (lrag.memory.descriptors) -------------------------------------------
    @property
    def embedder(self) -> nn.Module | None:
        """The frame embedder of ``descriptor: ae`` (None until loaded or set)."""
        return self._described.embedder

    def describe(self, frames: Tensor) -> Tensor:
        """Compute and remember one descriptor per frame.

        Args:
            frames: Clean latents ``[B, f, C, H, W]`` of consecutive new frames.

        Returns:
            ``[B, f, D]`` descriptors.
        """
        return self._described.describe(frames)

    def descriptors(self) -> Tensor:
        """All descriptors so far, ``[B, frames, D]``."""
        return self._described.stacked()

    # -- the pool ----------------------------------------------------------------------
    def store(self, evicted: EvictedKV) -> None:
        """KV-cache eviction callback: keep the frames (or nothing, for native)."""
        if self.memory_size == 0:
            return
        k = torch.stack(evicted.k, dim=0)  # (layers, B, n, tokens, heads, head_dim)
        v = torch.stack(evicted.v, dim=0)
        for j, frame in enumerate(evicted.frames):
            self._last_evicted = max(self._last_evicted, frame)
            if frame < self.first_candidate or (frame - self.first_candidate) % self.store_stride:
                continue
            self._pool_frames.append(frame)
            stored = self._place(k[:, :, j], v[:, :, j])
            if evicted.offsets is not None:
                stored.offset = evicted.offsets[:, j].clone()
            self._pool.append(stored)

    def _place(self, k: Tensor, v: Tensor) -> _Stored:
        if self.kv_tier == "recompute":
            return _Stored(None, None)
        if self.kv_tier == "device":
            return _Stored(k.clone(), v.clone())
        # The ring holds [B, layers, ...] rows, so one batch element of a frame is contiguous.
        row = self._offload.append(k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous())
        return _Stored(None, None, row=row)

    def retrieve(self, query_frame: int) -> RetrievalRecord | None:
        """Top-K pool frames for the block starting at ``query_frame`` (None if none)."""
        if self.memory_size == 0:
            return None
        eligible = self._num_eligible()
        if eligible == 0 or not len(self._described):
            return None
        scores, idx = self._rank(eligible)
        table = torch.tensor(self._pool_frames[:eligible])
        if idx.is_cuda:  # pinned + non_blocking: a pageable copy would wait for the GPU to drain
            table = table.pin_memory().to(idx.device, non_blocking=True)
        record = RetrievalRecord(query_frame, table[idx], scores)
        self.records.append(record)
        if log.isEnabledFor(logging.DEBUG):  # .tolist() syncs with the GPU: only when asked for
            log.debug("retrieval q=%d frames=%s scores=%s", query_frame, record.frames.tolist(), scores.tolist())
        return record

    def _num_eligible(self) -> int:
        """Pool entries that may be retrieved: all but those among the R newest evicted frames.

        Counted in frames, not pool entries, so a strided pool excludes the same frames; with
        every frame kept this is the reference's ``num_eligible(len(pool), R)``.
        """
        return bisect.bisect_right(self._pool_frames, self._last_evicted - self.recent_exclude)

    def _rank(self, eligible: int) -> tuple[Tensor, Tensor]:
        """Scores and indices ``[B, k]`` into the eligible pool (:class:`RankRule`)."""
        frames = self._pool_frames[:eligible]
        d = self._described
        return self.rule.rank(frames, min(self.memory_size, eligible), d.frames, d.keys, d.key_queries)

    diversity = property(lambda self: self.rule.diversity, doc="MMR weight of the top-K.")
    rerank = property(lambda self: self.rule.rerank, doc="Shortlist size of the two-stage search, or None.")
    key_fusion = property(lambda self: self.rule.key_fusion, doc="Weight of the generator keys in a fused score.")
    sequence = property(lambda self: self.rule.sequence, doc="Frames matched per candidate.")

    # -- early retrieval and prefetch (host/int8 tiers) ----------------------------------------
    def _key(self, query_frame: int) -> tuple[int, int, int]:
        return (query_frame, len(self._pool), len(self._described))

    def plan(self, query_frame: int) -> None:
        """Retrieve for the block starting at ``query_frame`` now, ahead of it.

        Call once the block's query descriptor exists and before enqueueing the previous block's
        context pass (it evicts nothing, so the pool is final). The frame indices start their way to the host;
        :meth:`prefetch` then starts the K/V copies. Only the host/int8 tiers plan; the result
        is used by :meth:`take` if nothing it depends on has changed by then.
        """
        self._plan = None
        if self._offload is None or self.memory_size == 0:
            return
        n = len(self.records)
        record = self.retrieve(query_frame)
        del self.records[n:]  # recorded when taken: the video may end before that block
        frames_host, copied = host_copy(self._kv_frames(record.frames)) if record is not None else (None, None)
        mark = torch.cuda.current_stream(record.frames.device).record_event() \
            if record is not None and record.frames.is_cuda else None
        self._plan = PlannedRetrieval(self._key(query_frame), record, frames_host, copied, mark)

    def prefetch(self, device: torch.device | str) -> None:
        """Start copying the planned block's K/V to ``device`` on the side stream.

        Waits (on the host) only for the planned indices, which the GPU produced before the
        work enqueued since :meth:`plan`; the copies then overlap that work.
        """
        plan = self._plan
        if plan is None or plan.record is None or plan.kv is not None:
            return
        if plan.index_copied is not None:
            plan.index_copied.synchronize()
        plan.kv = self._fill(plan.frames_host, torch.device(device), plan.compute_mark)

    def take(self, query_frame: int) -> RetrievalRecord | None:
        """The retrieval of the block starting at ``query_frame``: the planned one if still valid."""
        plan, self._plan = self._plan, None
        if plan is not None and plan.key == self._key(query_frame):
            self._taken = plan
            if plan.record is not None:
                self.records.append(plan.record)
            return plan.record
        return self.retrieve(query_frame)

    def _fill(self, frames_host: Tensor, device: torch.device,
              after: "torch.cuda.Event | None") -> tuple[Tensor, Tensor, "torch.cuda.Event | None"]:
        slots = self._pool_slots(frames_host.cpu()).tolist()  # host tensor: no sync
        rows = [[self._pool[s].row for s in row] for row in slots]
        dtype = self._offload.ring.dtype
        return self._offload.fill(rows, self.memory_size, device, dtype, after)

    def reserve(self, frames: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> None:
        """Reserve the host ring for ``frames`` evicted frames of K (or V) ``shape``
        ``(B, layers, tokens, heads, head_dim)`` now, so it never grows (and pins) mid-video.

        A no-op for tiers without a ring. Raises :class:`~lrag.memory.kv_store.KVStoreError`
        naming ``host_budget_gib`` when the reservation exceeds it.
        """
        if self._offload is not None and self.memory_size > 0:
            self._offload.reserve(-(-frames // self.store_stride), shape, dtype, device)

    def release_storage(self) -> None:
        """Free the host ring and GPU buffers (they are otherwise kept for the next video)."""
        self.reset()
        if self._offload is not None:
            self._offload.release()

    def host_reserved_bytes(self) -> int:
        """Bytes the host ring has reserved (pinned when CUDA is used)."""
        ring = self._offload.ring if self._offload is not None else None
        return 0 if ring is None else ring.reserved_bytes

    def copy_stats(self) -> dict[str, int]:
        """Frames copied from the host ring (recompute tier: rebuilt) vs reused on the GPU since :meth:`reset`."""
        if self._offload is None:  # recompute tier: frames rebuilt vs kept from the previous block
            return {"copied_frames": self._rebuilt.rebuilt_frames, "reused_frames": self._rebuilt.reused_frames}
        return {"copied_frames": self._offload.copied_frames, "reused_frames": self._offload.reused_frames}

    def gather(self, record: RetrievalRecord | None, device: torch.device | str) -> MemoryKV | None:
        """The retrieved frames' K/V on ``device``: one copy per block, shared by every call.

        Only the selected frames are copied (K per batch element), never the whole pool.
        """
        if record is None:
            return None
        if self._offload is not None:
            return self._gather_offloaded(record, torch.device(device))
        if self.kv_tier == "recompute":
            return self._gather_recomputed(record, device)
        b, k_sel = record.frames.shape
        slots = self._pool_slots(self._kv_frames(record.frames))
        # Only the K retrieved frames move (never the whole pool): one copy per block, per
        # frame, straight from where the frame is stored to the compute device.
        ks, vs = [], []
        for bi, row in enumerate(slots.tolist()):
            for slot in row:
                stored = self._pool[slot]
                ks.append(stored.k[:, bi].to(device, non_blocking=True))  # (layers, tokens, h, d)
                vs.append(stored.v[:, bi].to(device, non_blocking=True))
        k = rearrange(torch.stack(ks, dim=1), "l (b k) t h d -> l b (k t) h d", b=b)
        v = rearrange(torch.stack(vs, dim=1), "l (b k) t h d -> l b (k t) h d", b=b)
        return MemoryKV(list(k.unbind(0)), list(v.unbind(0)), k_sel, self._gather_offsets(slots, device))

    def _gather_offloaded(self, record: RetrievalRecord, device: torch.device) -> MemoryKV:
        taken, self._taken = getattr(self, "_taken", None), None
        if taken is not None and taken.record is record and taken.kv is not None:
            k, v, done = taken.kv
        else:  # not planned (first retrieval, resumed block): fetch now
            frames_host, copied = host_copy(self._kv_frames(record.frames))
            if copied is not None:
                copied.synchronize()
            k, v, done = self._fill(frames_host, device, None)
        if done is not None:
            torch.cuda.current_stream(device).wait_event(done)  # the GPU waits, not the host
        k_sel = record.frames.shape[1]
        ks, vs = self._offload.memory_views(k, v, k_sel)
        slots = self._pool_slots(self._kv_frames(record.frames).cpu()) if self._pool and self._pool[0].offset is not None else None
        return MemoryKV(ks, vs, k_sel, None if slots is None else self._gather_offsets(slots, device))

    def _pool_slots(self, frames: Tensor) -> Tensor:
        """Pool index of each retrieved global frame index (``frames [B, k]``)."""
        pool_frames = torch.tensor(self._pool_frames, dtype=torch.long, device=frames.device)
        lookup = torch.full((int(max(self._pool_frames)) + 1,), -1, dtype=torch.long, device=frames.device)
        lookup[pool_frames] = torch.arange(len(self._pool_frames), device=frames.device)
        return lookup[frames.long()]

    def _gather_offsets(self, slots: Tensor, device: torch.device | str) -> Tensor | None:
        if not self._pool or self._pool[0].offset is None:
            return None
        offsets = torch.stack([p.offset for p in self._pool], dim=1)  # (B, pool, 2)
        rows = torch.arange(slots.shape[0], device=offsets.device)[:, None]
        return offsets[rows, slots.to(offsets.device)].to(device)

    def _gather_recomputed(self, record: RetrievalRecord, device: torch.device | str) -> MemoryKV:
        frames = self._kv_frames(record.frames)
        # The hook needs the frames on the host: one sync per block.
        k, v = self._rebuilt.gather(frames.tolist(), device)
        offsets = self._gather_offsets(self._pool_slots(frames), device)
        return MemoryKV(list(k.unbind(0)), list(v.unbind(0)), record.frames.shape[1], offsets)

    def stored_bytes(self) -> int:
        """Bytes of K/V held by the pool (0 for the recompute tier; int8 scales included)."""
        if self._offload is not None:
            ring = self._offload.ring
            return 0 if ring is None else ring.size * ring.frame_bytes
        return sum(s.k.numel() * s.k.element_size() * 2 for s in self._pool if s.k is not None)
